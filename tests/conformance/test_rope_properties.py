"""RoPE's defining properties, checked with hypothesis on every backend."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olm_xp._compat import to_numpy
from olm_xp.nn.embeddings.positional import RotaryPositionalEmbedding

SETTINGS = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
positions = st.integers(min_value=0, max_value=100_000)
layouts = st.booleans()


def _dtype_and_tol(case):
    """float64 where the backend has it (tight checks), else float32."""
    if case.has_float64:
        return case.xp.float64, 1e-9
    return case.xp.float32, 2e-4


def _rotate(case, module, x_host, positions, dtype):
    out = module(case.asarray(x_host, dtype=dtype), case.positions(np.asarray(positions)))
    return to_numpy(out).astype(np.float64)


@SETTINGS
@given(position=positions, interleaved=layouts, seed=st.integers(0, 2**16))
def test_rotation_preserves_norms(placement, position, interleaved, seed):
    if placement.shape_only:
        return
    dtype, tol = _dtype_and_tol(placement)
    module = RotaryPositionalEmbedding(16, 64, interleaved=interleaved)
    x = np.random.default_rng(seed).standard_normal((1, 1, 2, 16))
    out = _rotate(placement, module, x, [position], dtype)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=tol)


@SETTINGS
@given(m=positions, n=positions, shift=positions, interleaved=layouts, seed=st.integers(0, 2**16))
def test_scores_depend_only_on_the_offset(placement, m, n, shift, interleaved, seed):
    """<R(m) q, R(n) k> == <R(m + s) q, R(n + s) k> for every shift s."""
    if placement.shape_only:
        return
    dtype, tol = _dtype_and_tol(placement)
    module = RotaryPositionalEmbedding(16, 64, interleaved=interleaved)
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, 1, 1, 1, 16))

    def score(a, b):
        rq = _rotate(placement, module, q, [a], dtype)
        rk = _rotate(placement, module, k, [b], dtype)
        return float(np.sum(rq * rk))

    # float32 tables are exact per entry; the angle of p * w itself is exact to ~1e-16 p
    scale = np.linalg.norm(q) * np.linalg.norm(k)
    assert abs(score(m, n) - score(m + shift, n + shift)) <= 20 * tol * scale


@SETTINGS
@given(length=st.integers(1, 12), start=positions, interleaved=layouts)
def test_decoding_token_by_token_equals_the_full_pass(placement, length, start, interleaved):
    if placement.shape_only:
        return
    dtype, _ = _dtype_and_tol(placement)
    module = RotaryPositionalEmbedding(8, 64, interleaved=interleaved)
    x = np.random.default_rng(length).standard_normal((2, length, 3, 8))
    full = to_numpy(module(placement.asarray(x, dtype=dtype), start))
    steps = [
        to_numpy(module(placement.asarray(x[:, t : t + 1], dtype=dtype), start + t))
        for t in range(length)
    ]
    np.testing.assert_array_equal(np.concatenate(steps, axis=1), full)


@SETTINGS
@given(position=positions, seed=st.integers(0, 2**16))
def test_layouts_agree_under_the_pair_permutation(placement, position, seed):
    """Interleaved RoPE == half-split RoPE on features permuted [0,2,4,...,1,3,5,...]."""
    if placement.shape_only:
        return
    dtype, _ = _dtype_and_tol(placement)
    x = np.random.default_rng(seed).standard_normal((1, 1, 2, 16))
    perm = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])
    interleaved = _rotate(placement, RotaryPositionalEmbedding(16, 8), x, [position], dtype)
    half = _rotate(
        placement,
        RotaryPositionalEmbedding(16, 8, interleaved=False),
        x[..., perm],
        [position],
        dtype,
    )
    np.testing.assert_array_equal(interleaved[..., perm], half)


@SETTINGS
@given(rotary_dim=st.sampled_from([2, 4, 8, 14]), position=positions, interleaved=layouts)
def test_partial_rotary_passes_the_tail_through(placement, rotary_dim, position, interleaved):
    if placement.shape_only:
        return
    dtype, _ = _dtype_and_tol(placement)
    module = RotaryPositionalEmbedding(16, 8, rotary_dim=rotary_dim, interleaved=interleaved)
    x = np.random.default_rng(rotary_dim).standard_normal((1, 1, 2, 16))
    x_in = to_numpy(placement.asarray(x, dtype=dtype))
    out = _rotate(placement, module, x, [position], dtype)
    np.testing.assert_array_equal(out[..., rotary_dim:], x_in[..., rotary_dim:])
