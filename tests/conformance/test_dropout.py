"""Dropout: identity in eval mode, inverted dropout in training, deterministic given a seed."""

from __future__ import annotations

import numpy as np
import pytest

from olm_xp import dropout
from olm_xp._compat import to_numpy
from olm_xp.nn.embeddings.positional import (
    AbsolutePositionalEmbedding,
    SinusoidalPositionalEmbedding,
)


def _kept_fraction_and_check_values(case, out, x_host, rate):
    got = to_numpy(out).astype(np.float64)
    x = case.rounded(x_host)
    kept = got != 0
    scaled = case.rounded(x / (1 - rate))
    np.testing.assert_allclose(got[kept], scaled[kept], rtol=2 * case.eps)
    return kept.mean()


def test_dropout_zeroes_and_scales(float_case, rng):
    if float_case.shape_only:
        pytest.skip("meta tensors hold no values")
    x_host = rng.uniform(1.0, 2.0, size=(4, 64, 32))
    if float_case.mode == "jit":
        import jax

        out = float_case.call(
            lambda x, key: dropout(x, 0.25, key=key), float_case.asarray(x_host), jax.random.key(0)
        )
    else:
        out = dropout(float_case.asarray(x_host), 0.25, key=0)
    float_case.check_placement(out, x_host.shape)
    fraction = _kept_fraction_and_check_values(float_case, out, x_host, 0.25)
    assert 0.70 < fraction < 0.80


def test_dropout_is_deterministic_given_a_seed(placement, rng):
    if placement.shape_only:
        pytest.skip("meta tensors hold no values")
    x = placement.asarray(rng.standard_normal((2, 50, 8)))
    a = to_numpy(dropout(x, 0.5, key=11))
    b = to_numpy(dropout(x, 0.5, key=11))
    c = to_numpy(dropout(x, 0.5, key=12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SinusoidalPositionalEmbedding(8, dropout=0.5, seed=5),
        lambda: AbsolutePositionalEmbedding(16, 8, dropout=0.5, seed=5),
    ],
)
def test_module_dropout_train_vs_eval(placement, make, rng):
    x_host = rng.uniform(1.0, 2.0, size=(2, 6, 8))
    module = make().to(xp=placement.xp, device=placement.device, dtype=placement.xp.float32)
    x = placement.asarray(x_host)
    module.eval()
    eval_out = module(x)
    module.train()
    first, second = module(x), module(x)
    placement.check_placement(first, x_host.shape)
    if placement.shape_only:
        return
    eval_np, first_np = to_numpy(eval_out), to_numpy(first)
    kept = first_np != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_allclose(first_np[kept], 2 * eval_np[kept], rtol=1e-6)
    assert not np.array_equal(first_np, to_numpy(second))  # a fresh mask per call
    replay = make().to(xp=placement.xp, device=placement.device, dtype=placement.xp.float32)
    np.testing.assert_array_equal(to_numpy(replay(x)), first_np)  # same seed, same masks


def test_dropout_under_jit_needs_a_jax_key(placement):
    if placement.profile.jit != "jax":
        pytest.skip("JAX only")
    import jax

    x = placement.asarray(np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"jax\.random\.key"):
        jax.jit(lambda a: dropout(a, 0.5, key=3))(x)
    module = SinusoidalPositionalEmbedding(3, dropout=0.5)
    with pytest.raises(TypeError, match="key"):
        jax.jit(module)(placement.asarray(np.ones((1, 2, 3))))
    out = jax.jit(lambda a, k: module(a, key=k))(
        placement.asarray(np.ones((1, 2, 3))), jax.random.key(1)
    )
    assert out.shape == (1, 2, 3)


def test_dropout_rejects_bad_rate_and_missing_key():
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\); got 1.0"):
        dropout(x, 1.0, key=0)
    with pytest.raises(TypeError, match="key"):
        dropout(x, 0.5, key=None)
    assert dropout(x, 0.5, key=None, training=False) is x
