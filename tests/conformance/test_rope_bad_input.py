"""RoPE bad input: clear TypeError/ValueError naming the argument, expected and actual."""

from __future__ import annotations

import numpy as np
import pytest

from olm_xp import apply_rope, rope_cos_sin, rope_inverse_frequencies
from olm_xp.nn.embeddings.positional import (
    Llama3RotaryPositionalEmbedding,
    PartialRotaryPositionalEmbedding,
    PartialScaledRotaryPositionalEmbedding,
    RotaryPositionalEmbedding,
    ScaledRotaryPositionalEmbedding,
)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: RotaryPositionalEmbedding(7, 16), ValueError, "head_dim must be even .* got 7"),
        (lambda: RotaryPositionalEmbedding(0, 16), ValueError, r"head_dim must be a positive int"),
        (lambda: RotaryPositionalEmbedding(8, 0), ValueError, "max_seq_len must be a positive"),
        (
            lambda: RotaryPositionalEmbedding(8, 16, 0),
            ValueError,
            "base must be a finite number > 0",
        ),
        (
            lambda: RotaryPositionalEmbedding(8, 16, rotary_dim=5),
            ValueError,
            "rotary_dim must be even .* got 5",
        ),
        (
            lambda: RotaryPositionalEmbedding(8, 16, rotary_dim=10),
            ValueError,
            "rotary_dim must be <= head_dim=8; got 10",
        ),
        (
            lambda: RotaryPositionalEmbedding(8, 16, rope_type="ntk-aware"),
            ValueError,
            r"rope_type must be one of \['default', 'linear', 'ntk', 'dynamic', 'yarn', "
            r"'longrope', 'llama3'\]; got 'ntk-aware'",
        ),
        (
            lambda: RotaryPositionalEmbedding(8, 16, interleaved=1),
            TypeError,
            "interleaved must be a bool",
        ),
        (
            lambda: PartialRotaryPositionalEmbedding(8, 0.0),
            ValueError,
            r"rotary_percentage must be in \(0, 1\]; got 0.0",
        ),
        (
            lambda: PartialRotaryPositionalEmbedding(8, 1.5),
            ValueError,
            r"rotary_percentage must be in \(0, 1\]; got 1.5",
        ),
        (
            lambda: PartialRotaryPositionalEmbedding(8, 0.1),
            ValueError,
            "rotary_percentage=0.1 gives rotary dim 0 for head_dim=8",
        ),
        (
            lambda: ScaledRotaryPositionalEmbedding(8, scaling_type="rope"),
            ValueError,
            r"scaling_type must be one of \['linear', 'ntk', 'dynamic_ntk', 'yarn', 'xpos'\]; "
            r"got 'rope'",
        ),
        (
            lambda: ScaledRotaryPositionalEmbedding(8, scaling_factor=0),
            ValueError,
            "scaling_factor must be a finite number > 0; got 0",
        ),
        (
            lambda: ScaledRotaryPositionalEmbedding(8, scaling_type="yarn", scaling_factor=0.5),
            ValueError,
            "scaling_factor must be >= 1 for yarn; got 0.5",
        ),
        (
            lambda: ScaledRotaryPositionalEmbedding(
                8, scaling_type="dynamic_ntk", scaling_factor=0.5
            ),
            ValueError,
            "scaling_factor must be >= 1 for dynamic_ntk",
        ),
        (
            lambda: ScaledRotaryPositionalEmbedding(8, original_max_seq_len=0),
            ValueError,
            "original_max_seq_len must be a positive int",
        ),
        (
            lambda: ScaledRotaryPositionalEmbedding(8, scaling_type="xpos", xpos_scale_base=-1),
            ValueError,
            "xpos_scale_base must be a finite number > 0",
        ),
        (
            lambda: PartialScaledRotaryPositionalEmbedding(8, 2.0),
            ValueError,
            r"rotary_percentage must be in \(0, 1\]",
        ),
        (lambda: Llama3RotaryPositionalEmbedding(8, factor=0.5), ValueError, "factor must be >= 1"),
        (
            lambda: Llama3RotaryPositionalEmbedding(8, low_freq_factor=4, high_freq_factor=1),
            ValueError,
            "low_freq_factor must be < high_freq_factor",
        ),
        (
            lambda: Llama3RotaryPositionalEmbedding(8, original_max_seq_len=0),
            ValueError,
            "original_max_position_embeddings must be a positive int",
        ),
    ],
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {
                "rope_type": "longrope",
                "short_factor": [1.0],
                "long_factor": [1.0] * 4,
                "original_max_position_embeddings": 64,
                "factor": 2.0,
            },
            ValueError,
            "short_factor must have length rotary_dim/2=4; got 1",
        ),
        (
            {
                "rope_type": "longrope",
                "short_factor": "1,2",
                "long_factor": [1.0] * 4,
                "original_max_position_embeddings": 64,
                "factor": 2.0,
            },
            TypeError,
            "short_factor must be a list of 4 numbers; got str",
        ),
        (
            {"rope_type": "yarn", "factor": 2.0},
            TypeError,
            "rope_type='yarn': .*original_max_position_embeddings",
        ),
        (
            {"rope_type": "linear", "factor": 2.0, "beta_fast": 3},
            TypeError,
            "rope_type='linear': .*beta_fast",
        ),
        (
            {
                "rope_type": "yarn",
                "factor": 2.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 1,
                "beta_slow": 2,
            },
            ValueError,
            "beta_fast must be > beta_slow",
        ),
        (
            {"rope_type": "linear", "factor": -1.0},
            ValueError,
            "factor must be a finite number > 0; got -1.0",
        ),
        (
            {"rope_type": "dynamic", "factor": 0.5, "original_max_position_embeddings": 64},
            ValueError,
            "factor must be >= 1 for this scaling variant; got 0.5",
        ),
        ({"rope_type": "ntk", "factor": 2.0, "rotary_dim": 2}, ValueError, r"rotary_dim > 2"),
        ({"rope_type": "default", "rotary_dim": 3}, ValueError, "rotary_dim must be even"),
    ],
)
def test_bad_frequency_parameters(kwargs, error, match):
    kwargs = {"rotary_dim": 8} | kwargs
    with pytest.raises(error, match=match):
        rope_inverse_frequencies(kwargs.pop("rotary_dim"), **kwargs)


def test_bad_from_hf():
    with pytest.raises(ValueError, match=r"HF rope_type must be one of .*; got 'su'"):
        RotaryPositionalEmbedding.from_hf(
            {"rope_type": "su"}, head_dim=8, max_position_embeddings=64
        )
    with pytest.raises(TypeError, match="rope_parameters must be a mapping"):
        RotaryPositionalEmbedding.from_hf(
            [("rope_type", "default")], head_dim=8, max_position_embeddings=64
        )
    with pytest.raises(
        ValueError, match=r"rope_parameters for llama3 must set \['low_freq_factor'\]"
    ):
        RotaryPositionalEmbedding.from_hf(
            {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0},
            head_dim=8,
            max_position_embeddings=64,
        )
    with pytest.raises(ValueError, match="max_position_embeddings must be a positive int"):
        RotaryPositionalEmbedding.from_hf({}, head_dim=8, max_position_embeddings=0)


def test_bad_forward_input(placement):
    module = RotaryPositionalEmbedding(8, 16)
    x = placement.asarray(np.zeros((2, 3, 1, 8)))
    with pytest.raises(ValueError, match=r"x's head dim \(axis -1\) must equal head_dim=8; got 6"):
        module(placement.asarray(np.zeros((2, 3, 1, 6))))
    with pytest.raises(TypeError, match="x must have a real floating dtype; got int"):
        module(placement.asarray(np.zeros((2, 3, 1, 8)), dtype=placement.index_dtype))
    with pytest.raises(TypeError, match="seq_positions must have an integer dtype; got float32"):
        module(x, placement.asarray(np.zeros(3), dtype=placement.xp.float32))
    with pytest.raises(
        ValueError, match=r"seq_positions must have shape \(3,\) or \(2, 3\) to fit x; got \(4,\)"
    ):
        module(x, placement.positions(np.arange(4)))
    with pytest.raises(ValueError, match="role must be 'query' or 'key'; got 'value'"):
        module(x, role="value")
    with pytest.raises(ValueError, match="seq_positions offset must be >= 0; got -2"):
        module(x, -2)
    if not placement.shape_only:
        with pytest.raises(ValueError, match="seq_positions must be >= 0; got minimum -1"):
            module(x, placement.positions(np.array([0, -1, 2])))


def test_bad_apply_rope_input(placement):
    xp = placement.xp
    cos, sin = rope_cos_sin(
        3, rope_inverse_frequencies(8)[0], xp=xp, device=placement.device, dtype=xp.float32
    )
    x = placement.asarray(np.zeros((2, 3, 1, 8)))
    with pytest.raises(ValueError, match="tables rotate 8 features but x has only 6"):
        apply_rope(placement.asarray(np.zeros((2, 3, 1, 6))), cos, sin)
    with pytest.raises(ValueError, match="seq_axis and feature_axis must differ"):
        apply_rope(x, cos, sin, seq_axis=3)
    with pytest.raises(ValueError, match=r"seq_axis must be in \[-4, 4\) for a 4-D x; got 7"):
        apply_rope(x, cos, sin, seq_axis=7)
    with pytest.raises(
        ValueError, match=r"cos of shape \(3, 4\) does not fit x of shape \(2, 5, 1, 8\)"
    ):
        apply_rope(placement.asarray(np.zeros((2, 5, 1, 8))), cos, sin)
    with pytest.raises(ValueError, match="cos and sin must have one shape"):
        apply_rope(x, cos, sin[:2, :])
