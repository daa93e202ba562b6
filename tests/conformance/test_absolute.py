"""Learned absolute embedding: lookup-and-add, initialisation, state dicts, placement."""

from __future__ import annotations

import numpy as np
import pytest

from olm_xp import add_position_embeddings, normal_table
from olm_xp._compat import to_numpy
from olm_xp.nn.embeddings.positional import AbsolutePositionalEmbedding
from olm_xp.reference import absolute_reference

SUM_TOL_EPS = 1.0  # x + table[p]: one rounding of the exact sum, plus rounding of the row


def test_normal_table_is_seeded_and_identical_everywhere(float_case):
    out = normal_table(
        6, 4, seed=7, xp=float_case.xp, device=float_case.device, dtype=float_case.dtype
    )
    expected = np.random.default_rng(7).standard_normal((6, 4))
    float_case.assert_close(out, expected, tol_eps=0.5)


@pytest.mark.parametrize("positions_shape", [None, (5,), (3, 5), (1, 5)])
def test_add_position_embeddings_matches_reference(case, positions_shape, rng):
    x_host = rng.standard_normal((3, 5, 4))
    table_host = rng.standard_normal((20, 4))
    x, table = case.asarray(x_host), case.asarray(table_host)
    if positions_shape is None:
        out = case.call(add_position_embeddings, x, table)
        positions = None
    else:
        positions = rng.integers(0, 20, size=positions_shape)
        out = case.call(add_position_embeddings, x, table, case.positions(positions))
    expected = absolute_reference(case.rounded(x_host), case.rounded(table_host), positions)
    case.assert_close(out, expected, tol_eps=SUM_TOL_EPS)


def test_module_forward_matches_reference(case, rng):
    module = AbsolutePositionalEmbedding(
        16, 8, xp=case.xp, device=case.device, dtype=case.dtype, seed=3
    )
    x_host = rng.standard_normal((2, 10, 8))
    positions = rng.integers(0, 16, size=(2, 10))
    out = case.call(module, case.asarray(x_host), case.positions(positions))
    table = np.random.default_rng(3).standard_normal((16, 8))
    expected = absolute_reference(case.rounded(x_host), case.rounded(table), positions)
    case.assert_close(out, expected, tol_eps=SUM_TOL_EPS)
    out = case.call(module, case.asarray(x_host))
    expected = absolute_reference(case.rounded(x_host), case.rounded(table))
    case.assert_close(out, expected, tol_eps=SUM_TOL_EPS)


def test_low_precision_table_with_float32_input(placement, rng):
    """A bf16/fp16 or float64 table added to a float32 x: result in x's dtype."""
    xp = placement.xp
    module = AbsolutePositionalEmbedding(8, 4, xp=xp, device=placement.device, dtype=xp.float32)
    out = module(placement.asarray(rng.standard_normal((1, 8, 4)), dtype=xp.float32))
    placement.check_placement(out, (1, 8, 4), dtype=xp.float32)


def test_same_seed_same_weights_on_every_backend(float_case):
    module = AbsolutePositionalEmbedding(
        12, 3, xp=float_case.xp, device=float_case.device, dtype=float_case.dtype, seed=42
    )
    weight = module.state_dict()["pos_embedding.weight"]
    float_case.assert_close(weight, np.random.default_rng(42).standard_normal((12, 3)), tol_eps=0.5)


def test_state_dict_round_trip_across_backends(placement, rng):
    """A NumPy state dict loads into any backend, and any backend's back into NumPy."""
    xp = placement.xp
    source = AbsolutePositionalEmbedding(6, 4, seed=1)  # NumPy, float64
    target = AbsolutePositionalEmbedding(6, 4, xp=xp, device=placement.device, dtype=xp.float32)
    target.load_state_dict(source.state_dict())
    weight = target.pos_embedding.weight
    placement.check_placement(weight, (6, 4), dtype=xp.float32)
    if placement.shape_only:
        return
    expected = source.state_dict()["pos_embedding.weight"].astype(np.float32)
    np.testing.assert_array_equal(to_numpy(weight), expected)
    back = AbsolutePositionalEmbedding(6, 4, dtype=np.float32)
    back.load_state_dict(target.state_dict())
    np.testing.assert_array_equal(back.pos_embedding.weight, expected)


def test_to_moves_the_table(placement):
    module = AbsolutePositionalEmbedding(5, 2, seed=0)
    moved = module.to(xp=placement.xp, device=placement.device, dtype=placement.xp.float32)
    assert moved is module
    placement.check_placement(module.pos_embedding.weight, (5, 2), dtype=placement.xp.float32)
    assert str(module.device) == str(placement.device)


def test_train_eval_and_repr():
    module = AbsolutePositionalEmbedding(5, 2, dropout=0.25)
    assert module.training
    assert module.eval() is module
    assert not module.training
    assert module.train() is module
    assert module.training
    text = repr(module)
    assert text.startswith("AbsolutePositionalEmbedding(")
    assert "(pos_embedding): Embedding(5, 2)" in text
    assert "(dropout): Dropout(p=0.25)" in text
    assert "max_seq_len=5, embed_dim=2" in module.extra_repr()


def test_modules_copy_and_pickle(placement):
    import copy
    import pickle

    from olm_xp.nn.embeddings.positional import RotaryPositionalEmbedding

    if placement.shape_only or placement.profile.module in ("dask.array",):
        pytest.skip("meta tensors and lazy graphs are not copied by value here")
    learned = AbsolutePositionalEmbedding(
        4, 2, xp=placement.xp, device=placement.device, dtype=placement.xp.float32, seed=0
    )
    rotary = RotaryPositionalEmbedding(8, 16)
    rotary(placement.asarray(np.zeros((1, 3, 1, 8))))  # fills its cache
    # JAX device objects themselves do not pickle; deep copies work everywhere.
    pickles = placement.profile.module != "jax.numpy"
    for module in (learned, rotary):
        clones = [copy.deepcopy(module)]
        clones += [pickle.loads(pickle.dumps(module))] if pickles else []
        for clone in clones:
            assert repr(clone) == repr(module)
    clone = copy.deepcopy(learned)
    np.testing.assert_array_equal(
        to_numpy(clone.pos_embedding.weight), to_numpy(learned.pos_embedding.weight)
    )


def test_positions_closed_over_inside_jit(placement):
    """Concrete positions captured by a jitted function are read on the host, not traced."""
    if placement.profile.jit != "jax":
        pytest.skip("JAX only")
    import jax

    module = AbsolutePositionalEmbedding(8, 4, xp=placement.xp, device=placement.device, seed=0)
    positions = placement.positions(np.array([1, 2, 3]))
    out = jax.jit(lambda x: module(x, positions))(placement.asarray(np.zeros((1, 3, 4))))
    assert out.shape == (1, 3, 4)
