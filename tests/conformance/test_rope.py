"""RoPE on every backend: frequencies, tables, rotation, classes, caches, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from olm_xp import (
    ROPE_TYPES,
    apply_rope,
    rope,
    rope_cos_sin,
    rope_inverse_frequencies,
)
from olm_xp._compat import is_concrete, to_numpy
from olm_xp.nn.embeddings.positional import (
    Llama3RotaryPositionalEmbedding,
    PartialRotaryPositionalEmbedding,
    PartialScaledRotaryPositionalEmbedding,
    RotaryPositionalEmbedding,
    ScaledRotaryPositionalEmbedding,
)
from olm_xp.reference import rope_frequencies_reference, rope_reference

TABLE_TOL_EPS = 0.5 + 2.0**-6  # correctly rounded (+ the float64 reference's own error)
ROTATION_TOL_EPS = 4.0  # x*cos - y*sin in the compute dtype: a few roundings
LOWP_TOL_EPS = 0.5 + 2.0**-6  # bf16/fp16: computed in float32, rounded once

VARIANT_PARAMETERS = {
    "default": {},
    "linear": {"factor": 4.0},
    "ntk": {"factor": 4.0},
    "dynamic": {"factor": 2.0, "original_max_position_embeddings": 64, "seq_len": 300},
    "yarn": {
        "factor": 8.0,
        "original_max_position_embeddings": 2048,
        "mscale": 0.9,
        "mscale_all_dim": 0.7,
    },
    "longrope": {
        "short_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0],
        "long_factor": [2.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 16.0],
        "original_max_position_embeddings": 64,
        "factor": 4.0,
        "seq_len": 65,
    },
    "llama3": {"factor": 8.0, "original_max_position_embeddings": 512},
}


def _rotation_tol(case, max_angle: float) -> float:
    return LOWP_TOL_EPS if case.is_low_precision else ROTATION_TOL_EPS


@pytest.mark.parametrize("rope_type", ROPE_TYPES)
def test_inverse_frequencies_match_reference(placement, rope_type):
    inv_freq, factor = rope_inverse_frequencies(
        16, rope_type=rope_type, base=5000.0, xp=placement.xp, device=placement.device,
        **VARIANT_PARAMETERS[rope_type],
    )  # fmt: skip
    expected, expected_factor = rope_frequencies_reference(
        16, rope_type, 5000.0, **VARIANT_PARAMETERS[rope_type]
    )
    dtype = placement.xp.float64 if placement.has_float64 else placement.xp.float32
    placement.check_placement(inv_freq, (8,), dtype=dtype)
    assert factor == pytest.approx(expected_factor, rel=1e-15)
    if not placement.shape_only:
        np.testing.assert_allclose(
            to_numpy(inv_freq), expected, rtol=1e-7 if not placement.has_float64 else 1e-14
        )


def test_cos_sin_are_float32_exact_up_to_2_pow_21(placement):
    """Every entry within 1 float32 ulp up to 2**21; a float32 angle (olm, HF) is not."""
    positions = np.array([0, 1, 1000, 32768, 2**20 + 3, 2**21 - 1, 2**21])
    inv_freq, _ = rope_inverse_frequencies(128)
    cos, sin = rope_cos_sin(placement.positions(positions), inv_freq, dtype=placement.xp.float32)
    angles = positions[:, None].astype(np.float64) * np.asarray(inv_freq)
    placement.assert_close(cos, np.cos(angles), tol_eps=TABLE_TOL_EPS)
    placement.assert_close(sin, np.sin(angles), tol_eps=TABLE_TOL_EPS)


def test_float32_angles_are_off_at_long_context():
    """The peers' float32 tables (HF's ``1 / base**(i/d)`` then ``p * w`` in float32, as olm):
    about 2e-3 off at positions up to 32768 and 0.12 up to 2**21 (measured, README)."""
    exponent = np.arange(0, 128, 2, dtype=np.float32) / np.float32(128)
    inv_freq32 = np.float32(1.0) / np.float32(10000.0) ** exponent
    inv_freq64 = 10000.0 ** -(np.arange(0, 128, 2) / 128)
    for last, low, high in ((32768, 1e-3, 4e-3), (2**21, 6e-2, 0.25)):
        positions = np.arange(last - 2048, last + 1)
        angle32 = positions.astype(np.float32)[:, None] * inv_freq32
        exact = np.sin(positions[:, None] * inv_freq64)
        error = np.max(np.abs(np.sin(angle32.astype(np.float64)) - exact))
        assert low < error < high, (last, error)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("rotary_dim", [8, 4])
def test_rope_function_matches_reference(case, interleaved, rotary_dim, rng):
    x_host = rng.standard_normal((2, 6, 3, 8))
    positions = rng.integers(0, 5000, size=(2, 6))
    inv_freq, _ = rope_inverse_frequencies(rotary_dim, base=500.0)
    out = case.call(
        lambda x, p: rope(x, p, inv_freq=inv_freq, interleaved=interleaved),
        case.asarray(x_host),
        case.positions(positions),
    )
    expected = rope_reference(case.rounded(x_host), positions, inv_freq, interleaved=interleaved)
    case.assert_close(out, expected, tol_eps=_rotation_tol(case, 5000), max_angle=5000)
    if rotary_dim < 8 and not case.shape_only:  # the tail passes through bit-exact
        np.testing.assert_array_equal(
            to_numpy(out)[..., rotary_dim:], to_numpy(case.asarray(x_host))[..., rotary_dim:]
        )


@pytest.mark.parametrize(
    ("shape", "seq_axis", "feature_axis"),
    [((2, 3, 6, 8), 2, -1), ((6, 8), 0, 1), ((2, 8, 6, 3), 2, 1)],
)
def test_apply_rope_on_other_axes(float_case, shape, seq_axis, feature_axis, rng):
    """``(B, H, S, D)``, ``(S, D)`` and features on axis 1: same as moving the axes."""
    case = float_case
    x_host = rng.standard_normal(shape)
    inv_freq, _ = rope_inverse_frequencies(8)
    cos, sin = rope_cos_sin(6, inv_freq, xp=case.xp, device=case.device, dtype=case.dtype)
    out = case.call(
        lambda x, c, s: apply_rope(x, c, s, seq_axis=seq_axis, feature_axis=feature_axis),
        case.asarray(x_host),
        cos,
        sin,
    )
    x64 = case.rounded(x_host)
    if x64.ndim == 2:  # (S, D) -> (1, S, 1, D) and back
        expected = rope_reference(x64[None, :, None, :], np.arange(6), inv_freq)[0, :, 0, :]
    else:  # sequence to axis 1, features last, and back
        source = (seq_axis, feature_axis % 4)
        canonical = np.moveaxis(x64, source, (1, 3))
        expected = np.moveaxis(rope_reference(canonical, np.arange(6), inv_freq), (1, 3), source)
    case.assert_close(out, expected, tol_eps=ROTATION_TOL_EPS, max_angle=6)


def _modules():
    """Every class and variant, with the reference frequencies it must use."""
    return {
        "rope": (RotaryPositionalEmbedding(8, 64, 500), "default", {}, 8),
        "rope-half": (RotaryPositionalEmbedding(8, 64, 500, interleaved=False), "default", {}, 8),
        "partial": (PartialRotaryPositionalEmbedding(8, 0.5, 500), "default", {}, 4),
        "linear": (
            ScaledRotaryPositionalEmbedding(8, 64, 500, "linear", 4.0),
            "linear",
            {"factor": 4.0},
            8,
        ),
        "ntk": (ScaledRotaryPositionalEmbedding(8, 64, 500, "ntk", 4.0), "ntk", {"factor": 4.0}, 8),
        "yarn": (
            ScaledRotaryPositionalEmbedding(8, 64, 500, "yarn", 4.0, original_max_seq_len=32),
            "yarn",
            {"factor": 4.0, "original_max_position_embeddings": 32},
            8,
        ),
        "partial-linear": (
            PartialScaledRotaryPositionalEmbedding(8, 0.5, 64, 500, "linear", 2.0),
            "linear",
            {"factor": 2.0},
            4,
        ),
        "llama3": (
            Llama3RotaryPositionalEmbedding(8, 64, 500, 8.0, 256, 1.0, 4.0),
            "llama3",
            {"factor": 8.0, "original_max_position_embeddings": 256},
            8,
        ),
    }


@pytest.mark.parametrize("name", sorted(_modules()))
@pytest.mark.parametrize("positions_kind", ["none", "offset", "seq", "batch"])
def test_classes_match_reference(case, name, positions_kind, rng):
    module, rope_type, params, rotary_dim = _modules()[name]
    x_host = rng.standard_normal((2, 5, 3, 8))
    host_positions = {
        "none": np.arange(5),
        "offset": np.arange(5) + 37,
        "seq": rng.integers(0, 3000, size=5),
        "batch": rng.integers(0, 3000, size=(2, 5)),
    }[positions_kind]
    x = case.asarray(x_host)
    if positions_kind == "none":
        out = case.call(module, x)
    elif positions_kind == "offset":
        out = module(x, 37) if case.mode == "eager" else case.call(module, x, case.positions(37))
    else:
        out = case.call(module, x, case.positions(host_positions))
    inv_freq, factor = rope_frequencies_reference(rotary_dim, rope_type, 500.0, **params)
    expected = rope_reference(
        case.rounded(x_host), host_positions, inv_freq,
        interleaved=module.interleaved, attention_factor=factor,
    )  # fmt: skip
    max_angle = float(np.max(host_positions))
    case.assert_close(out, expected, tol_eps=_rotation_tol(case, max_angle), max_angle=max_angle)


@pytest.mark.parametrize("role", ["query", "key"])
def test_xpos_scales_queries_and_keys_inversely(float_case, role, rng):
    case = float_case
    module = ScaledRotaryPositionalEmbedding(8, 64, 500, "xpos", xpos_scale_base=16)
    x_host = rng.standard_normal((1, 6, 2, 8))
    positions = np.arange(6) + 20
    out = case.call(
        lambda x, p: module(x, p, role=role), case.asarray(x_host), case.positions(positions)
    )
    inv_freq, _ = rope_frequencies_reference(8, "default", 500.0)
    sign = 1 if role == "query" else -1
    expected = rope_reference(case.rounded(x_host), positions, inv_freq, xpos=(16.0, 32, sign))
    case.assert_close(out, expected, tol_eps=ROTATION_TOL_EPS, max_angle=26)


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
@pytest.mark.parametrize("role", ["query", "key"])
def test_array_offsets_within_and_beyond_the_table(float_case, interleaved, role, rng):
    """0-D array offsets (traced under ``jax.jit``: the rows come from the cached table inside
    a ``lax.cond``, or are computed past ``max_seq_len``): every step right, on both sides."""
    case = float_case
    module = ScaledRotaryPositionalEmbedding(
        8, 16, 500, "xpos", xpos_scale_base=16, interleaved=interleaved
    )
    inv_freq, _ = rope_frequencies_reference(8, "default", 500.0)
    sign = 1 if role == "query" else -1
    for offset in (0, 13, 14, 15, 40):  # rows offset, offset+1: the table holds 0..15
        x_host = rng.standard_normal((1, 2, 3, 8))
        offset_array = case.asarray(np.asarray(offset), dtype=case.index_dtype)
        out = case.call(lambda x, o: module(x, o, role=role), case.asarray(x_host), offset_array)
        positions = np.arange(2) + offset
        expected = rope_reference(
            case.rounded(x_host), positions, inv_freq, interleaved=interleaved, xpos=(16.0, 8, sign)
        )
        tol = _rotation_tol(case, offset + 2)
        case.assert_close(out, expected, tol_eps=tol, max_angle=offset + 2)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
@pytest.mark.parametrize("max_position", [40, 200])
def test_data_dependent_variants_follow_the_current_length(case, rope_type, max_position, rng):
    """dynamic NTK and LongRoPE pick frequencies from max(position)+1, traced or not."""
    params = dict(VARIANT_PARAMETERS[rope_type])
    params.pop("seq_len")
    module = RotaryPositionalEmbedding(16, 64, 500, rope_type=rope_type, rope_parameters=params)
    x_host = rng.standard_normal((2, 4, 1, 16))
    positions = np.array([[0, 5, 9, max_position], [1, 2, 3, 4]])
    out = case.call(module, case.asarray(x_host), case.positions(positions))
    inv_freq, factor = rope_frequencies_reference(
        16, rope_type, 500.0, **params, seq_len=max_position + 1
    )
    expected = rope_reference(case.rounded(x_host), positions, inv_freq, attention_factor=factor)
    traced_dynamic = case.mode == "jit" and rope_type == "dynamic" and not case.has_float64
    tol = 64.0 if traced_dynamic else _rotation_tol(case, max_position)  # float32 frequencies
    case.assert_close(out, expected, tol_eps=tol, max_angle=max_position)


def test_low_precision_is_rotated_in_float32(lowp_case, rng):
    module = RotaryPositionalEmbedding(32, 128)
    x_host = rng.standard_normal((2, 64, 2, 32))
    out = lowp_case.call(module, lowp_case.asarray(x_host))
    inv_freq, _ = rope_frequencies_reference(32)
    exact = rope_reference(lowp_case.rounded(x_host), np.arange(64), inv_freq)
    lowp_case.assert_close(out, exact, tol_eps=LOWP_TOL_EPS)


def test_no_table_at_construction_and_lazy_growth(placement):
    module = Llama3RotaryPositionalEmbedding(128)  # olm allocates 262144 rows here
    assert len(module._cache) == 0
    x = placement.asarray(np.zeros((1, 3, 1, 128)))
    module(x)
    if placement.shape_only:
        return
    (table,) = module._cache._tables.values()
    assert table.shape[1] <= 64
    module(x, placement.positions(np.array([1, 2, 5000])))
    (table,) = module._cache._tables.values()
    assert 5000 < table.shape[1] <= 2 * 5001


def test_cache_is_bounded_and_never_holds_a_tracer(case, rng):
    module = RotaryPositionalEmbedding(8, 16)
    x_host = rng.standard_normal((1, 5, 1, 8))
    for offset in range(3):
        case.call(module, case.asarray(x_host), case.positions(np.arange(5) + offset))
    module(case.asarray(x_host), role="key")
    assert len(module._cache) <= module._cache.max_entries
    assert all(is_concrete(t) for t in module._cache._tables.values())


def test_decode_steps_in_new_traces_and_eagerly_share_one_module(case, rng):
    """Decode-sized steps (int offsets: the lean path) traced one ``jax.jit`` at a time,
    with eager calls between them: no step may reuse rows from an earlier trace (a leaked
    tracer), and every step matches the reference."""
    module = RotaryPositionalEmbedding(8, 16, 500)
    x_host = rng.standard_normal((1, 2, 3, 8))
    x = case.asarray(x_host)
    inv_freq, _ = rope_frequencies_reference(8, "default", 500.0)
    for offset in (0, 3, 0, 7):
        expected = rope_reference(case.rounded(x_host), np.arange(2) + offset, inv_freq)
        tol = _rotation_tol(case, offset + 1)
        traced = case.call(lambda x, o=offset: module(x, o), x)
        case.assert_close(traced, expected, tol_eps=tol, max_angle=offset + 1)
        case.assert_close(module(x, offset), expected, tol_eps=tol, max_angle=offset + 1)


def test_threads_share_one_module(placement, rng):
    module = RotaryPositionalEmbedding(16, 32)
    x_host = rng.standard_normal((1, 20, 2, 16))
    inv_freq, _ = rope_frequencies_reference(16)
    x = placement.asarray(x_host)
    expected = rope_reference(placement.rounded(x_host), np.arange(20), inv_freq)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for step in range(4):
                placement.assert_close(module(x), expected, tol_eps=ROTATION_TOL_EPS, max_angle=20)
                module(x, offset * 1000 + step)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_from_hf_builds_the_half_split_variant():
    module = RotaryPositionalEmbedding.from_hf(
        {
            "rope_type": "yarn",
            "rope_theta": 1e6,
            "factor": 4.0,
            "original_max_position_embeddings": 4096,
        },
        head_dim=64,
        max_position_embeddings=16384,
    )
    assert not module.interleaved
    assert (module.rope_type, module.base, module.rotary_dim) == ("yarn", 1e6, 64)
    assert module.attention_factor == pytest.approx(0.1 * np.log(4.0) + 1)
    legacy = RotaryPositionalEmbedding.from_hf(
        {"type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
        head_dim=64,
        max_position_embeddings=2048,
    )
    assert (legacy.rope_type, legacy.rotary_dim, legacy.base) == ("linear", 32, 10000.0)


def test_repr():
    text = repr(ScaledRotaryPositionalEmbedding(8, scaling_type="xpos"))
    assert text == (
        "ScaledRotaryPositionalEmbedding(head_dim=8, max_seq_len=2048, base=10000, "
        "xpos_scale_base=512, interleaved=True)"
    )
