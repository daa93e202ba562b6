"""The reference scaled dot-product attention on every backend, and its bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from olm_xp import alibi_bias, scaled_dot_product_attention
from olm_xp._compat import to_numpy
from olm_xp.reference import alibi_reference, alibi_slopes_reference, attention_reference

BATCH, HEADS, Q, K, DIM, VALUE_DIM = 2, 3, 4, 9, 8, 5
ATTENTION_TOL_EPS = 16.0  # dot products, exp, a sum and a division in the compute dtype
LOWP_TOL_EPS = 1.0  # bf16/fp16: computed in float32, rounded once


def _inputs(case, rng, q_len=Q, k_len=K):
    host = (
        rng.standard_normal((BATCH, HEADS, q_len, DIM)),
        rng.standard_normal((BATCH, HEADS, k_len, DIM)),
        rng.standard_normal((BATCH, HEADS, k_len, VALUE_DIM)),
    )
    return [case.asarray(a) for a in host], [case.rounded(a) for a in host]


def _tol(case):
    return LOWP_TOL_EPS if case.is_low_precision else ATTENTION_TOL_EPS


def test_causal_alibi_attention_matches_reference(case, rng):
    (q, k, v), (q64, k64, v64) = _inputs(case, rng)
    bias = alibi_bias(Q, K, HEADS, xp=case.xp, device=case.device, dtype=case.dtype)

    def f(q, k, v, bias):
        return scaled_dot_product_attention(q, k, v, bias=bias, causal=True)

    out = case.call(f, q, k, v, bias)
    bias64 = case.rounded(alibi_reference(alibi_slopes_reference(HEADS), Q, K))
    expected = attention_reference(q64, k64, v64, bias=bias64, causal=True)
    case.assert_close(out, expected, tol_eps=_tol(case))


def test_plain_attention_with_scale(placement, rng):
    (q, k, v), (q64, k64, v64) = _inputs(placement, rng, q_len=K)
    out = scaled_dot_product_attention(q, k, v, scale=1.0)
    expected = attention_reference(q64, k64, v64, scale=1.0)
    placement.assert_close(out, expected, tol_eps=ATTENTION_TOL_EPS)


def test_causal_mask_is_bottom_right_aligned(placement, rng):
    """Query ``i`` of ``Q`` sits at position ``K - Q + i``: the mask equals a 0/-inf bias."""
    (q, k, v), _ = _inputs(placement, rng)
    masked = scaled_dot_product_attention(q, k, v, causal=True)
    visible = np.arange(K)[None, :] <= np.arange(K - Q, K)[:, None]
    bias = placement.asarray(np.where(visible, 0.0, -np.inf)[None, None])
    explicit = scaled_dot_product_attention(q, k, v, bias=bias)
    placement.check_placement(masked, (BATCH, HEADS, Q, VALUE_DIM))
    if not placement.shape_only:
        np.testing.assert_allclose(to_numpy(masked), to_numpy(explicit), rtol=1e-6, atol=1e-6)


def test_a_decode_step_sees_every_cached_key(rng):
    q, k, v = (rng.standard_normal((BATCH, HEADS, n, DIM)) for n in (1, K, K))
    step = scaled_dot_product_attention(q, k, v, causal=True)
    np.testing.assert_array_equal(step, scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("bias_shape", [(1, HEADS, 1, K), (BATCH, 1, Q, K), (K,)])
def test_bias_broadcasts(placement, rng, bias_shape):
    (q, k, v), (q64, k64, v64) = _inputs(placement, rng)
    bias_host = rng.standard_normal(bias_shape)
    out = scaled_dot_product_attention(q, k, v, bias=placement.asarray(bias_host))
    expected = attention_reference(q64, k64, v64, bias=placement.rounded(bias_host))
    placement.assert_close(out, expected, tol_eps=ATTENTION_TOL_EPS)


def test_low_precision_inputs_keep_their_dtype(lowp_case, rng):
    (q, k, v), _ = _inputs(lowp_case, rng)
    out = lowp_case.call(lambda q, k, v: scaled_dot_product_attention(q, k, v), q, k, v)
    lowp_case.check_placement(out, (BATCH, HEADS, Q, VALUE_DIM))


# -- bad input --------------------------------------------------------------------------------


def _arrays(shape_q=(1, 2, 3, 4), shape_k=(1, 2, 5, 4), shape_v=(1, 2, 5, 6)):
    return np.zeros(shape_q), np.zeros(shape_k), np.zeros(shape_v)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 6)), r"q must be 4-D \(batch, heads, seq, head_dim\)"),
        (
            ((1, 2, 3, 4), (1, 2, 5, 3), (1, 2, 5, 6)),
            r"k must have shape \(batch=1, heads=2, seq_k, head_dim=4\) .* got \(1, 2, 5, 3\)",
        ),
        (
            ((1, 2, 3, 4), (1, 3, 5, 4), (1, 3, 5, 6)),
            r"k must have shape \(batch=1, heads=2, .* got \(1, 3, 5, 4\)",
        ),
        (
            ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 4, 6)),
            r"v must have shape \(batch=1, heads=2, seq_k=5, value_dim\) .* got \(1, 2, 4, 6\)",
        ),
    ],
)
def test_bad_shapes(shapes, match):
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(*_arrays(*shapes))


def test_bias_head_count_mismatch():
    q, k, v = _arrays()
    with pytest.raises(
        ValueError,
        match=r"bias has 3 heads \(shape \(1, 3, 3, 5\)\) but the scores have 2 heads .*"
        r"expected 1 or 2",
    ):
        scaled_dot_product_attention(q, k, v, bias=alibi_bias(3, 5, 3))
    with pytest.raises(
        ValueError, match=r"bias of shape \(1, 2, 4, 5\) does not broadcast to .* \(1, 2, 3, 5\)"
    ):
        scaled_dot_product_attention(q, k, v, bias=alibi_bias(4, 5, 2))
    with pytest.raises(TypeError, match=r"bias must be an additive real floating .* got bool"):
        scaled_dot_product_attention(q, k, v, bias=np.ones((3, 5), dtype=bool))


def test_bad_causal_and_scale():
    q, k, v = _arrays(shape_q=(1, 2, 6, 4))
    with pytest.raises(
        ValueError,
        match=r"causal attention needs seq_len_q <= seq_len_k .* got q with seq_len_q=6 and k "
        r"with seq_len_k=5",
    ):
        scaled_dot_product_attention(q, k, v, causal=True)
    with pytest.raises(TypeError, match="causal must be a bool; got str"):
        scaled_dot_product_attention(*_arrays(), causal="yes")
    for scale in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            scaled_dot_product_attention(*_arrays(), scale=scale)
    with pytest.raises(TypeError, match="q must have a real floating dtype; got int64"):
        scaled_dot_product_attention(np.zeros((1, 2, 3, 4), dtype=np.int64), *_arrays()[1:])
