"""Bad input: a clear TypeError/ValueError naming the argument, and no state change."""

from __future__ import annotations

import numpy as np
import pytest

from olm_xp import add_position_embeddings, sinusoidal_table
from olm_xp._compat import to_numpy
from olm_xp.nn.embeddings.positional import (
    AbsolutePositionalEmbedding,
    SinusoidalPositionalEmbedding,
)

CLASSES = {
    "absolute": lambda **kw: AbsolutePositionalEmbedding(8, 4, **kw),
    "sinusoidal": lambda **_: SinusoidalPositionalEmbedding(4, max_seq_len=8),
}


def _module(name, placement):
    module = CLASSES[name]()
    return module.to(xp=placement.xp, device=placement.device, dtype=placement.xp.float32)


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize(
    ("shape", "error", "match"),
    [
        ((2, 4), ValueError, r"x must be 3-D \(batch, seq, embed_dim\); got shape \(2, 4\)"),
        ((1, 2, 3, 4), ValueError, r"x must be 3-D .* got shape \(1, 2, 3, 4\)"),
        ((1, 3, 5), ValueError, r"x last dimension must equal .*embed_dim=4; got 5"),
    ],
)
def test_bad_x_shape(placement, name, shape, error, match):
    module = _module(name, placement)
    with pytest.raises(error, match=match):
        module(placement.asarray(np.zeros(shape)))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_non_floating_x(placement, name):
    module = _module(name, placement)
    with pytest.raises(TypeError, match="x must have a real floating dtype; got int"):
        module(placement.asarray(np.zeros((1, 2, 4)), dtype=placement.index_dtype))


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize(
    ("positions", "dtype", "error", "match"),
    [
        (
            np.zeros(3),
            "float32",
            TypeError,
            "seq_positions must have an integer dtype; got float32",
        ),
        (np.zeros(3), "bool", TypeError, "seq_positions must have an integer dtype; got bool"),
        (
            np.zeros(4),
            "int",
            ValueError,
            r"seq_positions must have shape \(3,\) or \(2, 3\) .* got \(4,\)",
        ),
        (np.zeros((3, 3)), "int", ValueError, r"seq_positions must have shape .* got \(3, 3\)"),
        (
            np.zeros((2, 3, 1)),
            "int",
            ValueError,
            r"seq_positions must have shape .* got \(2, 3, 1\)",
        ),
        (np.array([0, -1, 2]), "int", ValueError, "seq_positions must be >= 0; got minimum -1"),
    ],
)
def test_bad_positions(placement, name, positions, dtype, error, match):
    if placement.shape_only and "minimum" in match:
        pytest.skip("values of meta tensors cannot be checked")
    module = _module(name, placement)
    xp = placement.xp
    dtype = {"float32": xp.float32, "bool": xp.bool, "int": placement.index_dtype}[dtype]
    with pytest.raises(error, match=match):
        module(placement.asarray(np.zeros((2, 3, 4))), placement.asarray(positions, dtype=dtype))


def test_positions_beyond_learned_table(placement):
    module = _module("absolute", placement)
    if placement.shape_only:
        pytest.skip("values of meta tensors cannot be checked")
    before = to_numpy(module.pos_embedding.weight).copy()
    with pytest.raises(ValueError, match="seq_positions must be < max_seq_len=8; got maximum 8"):
        module(placement.asarray(np.zeros((1, 3, 4))), placement.positions(np.array([0, 8, 1])))
    with pytest.raises(ValueError, match="seq_len=9 but the table holds only 8 positions"):
        module(placement.asarray(np.zeros((1, 9, 4))))
    np.testing.assert_array_equal(to_numpy(module.pos_embedding.weight), before)


def test_x_and_table_in_different_namespaces(placement):
    if placement.profile.module == "numpy":
        pytest.skip("needs a non-NumPy backend")
    module = AbsolutePositionalEmbedding(8, 4)  # NumPy table
    with pytest.raises(
        TypeError,
        match=r"x is a \w+ array but pos_embedding.weight is a numpy array; move the module "
        r"with .to\(xp=",
    ):
        module(placement.asarray(np.zeros((1, 3, 4))))


def test_x_and_table_on_different_devices(placement):
    devices = placement.profile.devices
    if len(devices) < 2:
        pytest.skip("needs a second device")
    other = next(d for d in devices if d != placement.device_name)
    module = AbsolutePositionalEmbedding(8, 4)
    module.to(xp=placement.xp, device=placement.device_named(other))
    with pytest.raises(
        ValueError,
        match=r"x is on device .* but pos_embedding.weight is on device .*; move the module "
        r"with .to\(device=",
    ):
        module(placement.asarray(np.zeros((1, 3, 4))))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_positions_on_another_device(placement, name):
    devices = placement.profile.devices
    if len(devices) < 2:
        pytest.skip("needs a second device")
    other = placement.device_named(next(d for d in devices if d != placement.device_name))
    module = _module(name, placement)
    positions = placement.xp.asarray(np.arange(3), dtype=placement.index_dtype, device=other)
    with pytest.raises(ValueError, match=r"seq_positions must be on x's device .*; got device"):
        module(placement.asarray(np.zeros((1, 3, 4))), positions)


def test_pure_function_mixed_namespaces(placement):
    if placement.profile.module == "numpy":
        pytest.skip("needs a non-NumPy backend")
    with pytest.raises(TypeError, match="expected arrays from one array library"):
        add_position_embeddings(placement.asarray(np.zeros((1, 2, 4))), np.zeros((4, 4)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_seq_len": 0}, ValueError, "max_seq_len must be a positive int .> 0.; got 0"),
        ({"max_seq_len": 2.5}, TypeError, "max_seq_len must be a positive int; got float 2.5"),
        ({"embed_dim": -3}, ValueError, "embed_dim must be a positive int .> 0.; got -3"),
        ({"embed_dim": True}, TypeError, "embed_dim must be a positive int; got bool True"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\); got 1.0"),
        ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\); got -0.1"),
        ({"dropout": "0.1"}, TypeError, r"dropout must be a float in \[0, 1\); got str"),
    ],
)
@pytest.mark.parametrize("cls", [AbsolutePositionalEmbedding, SinusoidalPositionalEmbedding])
def test_bad_constructor_arguments(cls, kwargs, error, match):
    args = {"max_seq_len": 8, "embed_dim": 4, "dropout": 0.0} | kwargs
    with pytest.raises(error, match=match):
        cls(**args)


@pytest.mark.parametrize(
    ("base", "error"),
    [(0, ValueError), (-2.0, ValueError), (float("inf"), ValueError), ("1e4", TypeError)],
)
def test_bad_base(base, error):
    with pytest.raises(error, match="base must be"):
        SinusoidalPositionalEmbedding(4, base=base)
    with pytest.raises(error, match="base must be"):
        sinusoidal_table(3, 4, base=base)


def test_load_state_dict_errors_leave_module_unchanged():
    module = AbsolutePositionalEmbedding(4, 2, seed=0)
    before = module.pos_embedding.weight.copy()
    cases = [
        ({}, ValueError, r"missing \['pos_embedding.weight'\]"),
        (
            {"pos_embedding.weight": np.zeros((4, 2)), "extra": np.zeros(1)},
            ValueError,
            r"unexpected \['extra'\]",
        ),
        (
            {"pos_embedding.weight": np.zeros((5, 2))},
            ValueError,
            r"pos_embedding.weight must have shape \(4, 2\); got \(5, 2\)",
        ),
        (
            {"pos_embedding.weight": np.zeros((4, 2), dtype=np.int64)},
            TypeError,
            "must be a real floating array",
        ),
        (
            {"pos_embedding.weight": [[0.0, 0.0]] * 4},
            ValueError,
            r"must have shape \(4, 2\); got \(\)",
        ),
        ([("pos_embedding.weight", np.zeros((4, 2)))], TypeError, "state_dict must be a mapping"),
    ]
    for state, error, match in cases:
        with pytest.raises(error, match=match):
            module.load_state_dict(state)
        np.testing.assert_array_equal(module.pos_embedding.weight, before)


def test_bad_namespace_argument():
    with pytest.raises(TypeError, match="xp must be an array namespace module"):
        AbsolutePositionalEmbedding(4, 2, xp="numpy")
    with pytest.raises(TypeError, match="dtype must be a real floating dtype"):
        AbsolutePositionalEmbedding(4, 2, dtype=np.int32)
