"""ALiBi on every backend: slopes, the bias forms, decode alignment, positions, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from olm_xp import alibi_bias, alibi_distances, alibi_slopes, scaled_dot_product_attention
from olm_xp._compat import to_numpy
from olm_xp.alibi import alibi_slope_values
from olm_xp.nn.embeddings.positional import ALiBiPositionalBias
from olm_xp.reference import alibi_reference, alibi_slopes_reference, float64_allowance_eps

HEADS = 12  # not a power of two: 8 geometric slopes, then 4 interleaved ones
Q, K = 4, 9  # a prefill chunk: the queries are the last 4 of 9 positions
BIAS_TOL_EPS = 1.0  # slope rounded once, product rounded once (bf16/fp16: from float32, once)
PAPER_SLOPES_EPS64 = 8.0  # the paper's start * ratio**i accumulates up to 7 float64 ulp


def _tol(case, tol_eps: float) -> float:
    """``tol_eps`` plus, for float64, the paper slopes' own float64 error and the allowance
    :meth:`Case.assert_close` adds."""
    if case.dtype_name == "float64":
        return tol_eps + PAPER_SLOPES_EPS64 + float64_allowance_eps(0.0)
    return tol_eps


def assert_bias_close(case, out, expected: np.ndarray, tol_eps: float = BIAS_TOL_EPS) -> None:
    """Placement, the same ``-inf`` entries, and the finite entries within ``tol_eps``."""
    case.check_placement(out, tuple(expected.shape))
    if case.shape_only:
        return
    got = to_numpy(out).astype(np.float64)
    masked = np.isneginf(expected)
    np.testing.assert_array_equal(np.isneginf(got), masked)
    error = case.error_eps(np.where(masked, 0.0, got), np.where(masked, 0.0, expected))
    tol = _tol(case, tol_eps)
    assert error <= tol, f"error {error:.3g} eps > {tol} eps ({case.id})"


def _place(case):
    return {"xp": case.xp, "device": case.device, "dtype": case.dtype}


# -- slopes -----------------------------------------------------------------------------------


def test_slopes_match_the_paper_list_for_1_to_64_heads():
    for num_heads in range(1, 65):
        paper = np.array(alibi_slopes_reference(num_heads))
        ours = np.array(alibi_slope_values(num_heads))
        assert ours.shape == (num_heads,)
        np.testing.assert_allclose(ours, paper, rtol=PAPER_SLOPES_EPS64 * 2.0**-52, atol=0)
        # Rounded to float32 (olm's buffer dtype) they are the paper's list exactly.
        np.testing.assert_array_equal(ours.astype(np.float32), paper.astype(np.float32))


def test_slopes_of_twelve_heads_spelled_out():
    expected = [2.0**-k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]
    assert alibi_slope_values(12) == expected


def test_slopes_on_every_backend(float_case):
    out = float_case.call(alibi_slopes, num_heads=HEADS, **_place(float_case))
    expected = np.array(alibi_slopes_reference(HEADS))
    tol = 0.5 if float_case.dtype_name != "float64" else PAPER_SLOPES_EPS64
    float_case.check_placement(out, (HEADS,))
    if not float_case.shape_only:
        assert float_case.error_eps(out, expected) <= tol


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 9))
def test_power_of_two_slopes_are_geometric(exponent):
    """For ``n = 2**k`` heads the slopes are ``r, r**2, ..., r**n`` with ``r = 2**(-8/n)``."""
    n = 2**exponent
    slopes = alibi_slope_values(n)
    ratio = 2.0 ** (-8.0 / n)
    assert slopes[0] == ratio
    assert slopes[-1] == 2.0**-8
    for a, b in itertools.pairwise(slopes):
        assert math.isclose(b / a, ratio, rel_tol=4e-16)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 600))
def test_any_head_count_follows_the_paper_rule(num_heads):
    """Slopes of ``n`` heads: those of ``c = 2**floor(log2 n)`` heads, then every other slope
    of ``2c`` heads; all distinct, in (0, 1), and a subset of the ``2c``-head slopes."""
    slopes = alibi_slope_values(num_heads)
    c = 1 << (num_heads.bit_length() - 1)
    assert len(slopes) == num_heads == len(set(slopes))
    assert slopes[:c] == alibi_slope_values(c)
    assert slopes[c:] == alibi_slope_values(2 * c)[0::2][: num_heads - c]
    assert set(slopes) <= set(alibi_slope_values(2 * c))
    assert all(0.0 < m < 1.0 for m in slopes)


# -- the bias ---------------------------------------------------------------------------------


def test_bias_matches_reference(case):
    """The causal form for a prefill chunk: values, ``-inf`` entries, decode alignment."""
    out = case.call(alibi_bias, seq_len_q=Q, seq_len_k=K, heads=HEADS, causal=True, **_place(case))
    expected = alibi_reference(alibi_slopes_reference(HEADS), Q, K, causal=True)
    assert_bias_close(case, out, expected)


def test_symmetric_bias_with_more_queries_than_keys(placement):
    out = alibi_bias(7, 3, 3, **_place(placement))
    expected = alibi_reference(alibi_slopes_reference(3), 7, 3)  # queries at -4..2
    assert_bias_close(placement, out, expected)


def test_module_forward_and_decode_alignment(float_case):
    """olm's symmetric form; a decode step's bias is the last row of the full bias."""
    case = float_case
    module = ALiBiPositionalBias(HEADS, max_seq_len=4, **_place(case))  # no limit, just a hint
    full_expected = alibi_reference(alibi_slopes_reference(HEADS), K, K)
    full = case.call(module, seq_len_q=K, seq_len_k=K)
    assert_bias_close(case, full, full_expected)
    step = case.call(module, seq_len_q=1, seq_len_k=K)
    assert_bias_close(case, step, full_expected[:, :, -1:, :])
    if not case.shape_only:
        np.testing.assert_array_equal(to_numpy(step), to_numpy(full)[:, :, -1:, :])


def test_causal_module_decode_rows(placement):
    module = ALiBiPositionalBias(HEADS, causal=True, **_place(placement))
    full = module(K, K)
    for q in (1, Q):
        rows = module(q, K)
        placement.check_placement(rows, (1, HEADS, q, K))
        if not placement.shape_only:
            np.testing.assert_array_equal(to_numpy(rows), to_numpy(full)[:, :, -q:, :])


def test_explicit_positions(float_case, rng):
    """Batched query positions (``(batch, q)``, e.g. left padding) with shared key positions."""
    case = float_case
    q_host = rng.integers(0, 50, size=(2, Q))
    k_host = rng.integers(0, 50, size=(1, K))
    k_host[..., 0] = 0  # every query sees at least one key

    def f(qp, kp):
        return alibi_bias(
            Q, K, 3, causal=True, query_positions=qp, key_positions=kp, dtype=case.dtype
        )

    out = case.call(f, case.positions(q_host), case.positions(k_host))
    slopes = alibi_slopes_reference(3)
    expected = np.concatenate(
        [
            alibi_reference(slopes, Q, K, causal=True, query_positions=qp, key_positions=k_host[0])
            for qp in q_host
        ]
    )
    assert_bias_close(case, out, expected)


def test_explicit_1d_positions_symmetric(placement, rng):
    q_host, k_host = rng.integers(-20, 50, size=Q), rng.integers(0, 50, size=K)
    out = alibi_bias(
        Q,
        K,
        3,
        query_positions=placement.positions(q_host),
        key_positions=placement.positions(k_host),
        dtype=placement.dtype,
    )
    slopes = alibi_slopes_reference(3)
    expected = alibi_reference(slopes, Q, K, query_positions=q_host, key_positions=k_host)
    assert_bias_close(placement, out, expected)


def test_default_positions_equal_explicit_ones(placement):
    explicit = alibi_bias(
        3,
        7,
        4,
        causal=True,
        query_positions=placement.positions(np.arange(4, 7)),
        key_positions=placement.positions(np.arange(7)),
        dtype=placement.dtype,
    )
    implicit = alibi_bias(3, 7, 4, causal=True, **_place(placement))
    if not placement.shape_only:
        np.testing.assert_array_equal(to_numpy(explicit), to_numpy(implicit))


def test_only_key_positions(placement):
    """Key positions alone: the queries still default to the last ``q`` indices."""
    keys = [10, 11, 12, 13]
    out = alibi_bias(2, 4, 2, key_positions=placement.positions(keys), dtype=placement.dtype)
    expected = alibi_reference(alibi_slopes_reference(2), 2, 4, key_positions=keys)
    assert_bias_close(placement, out, expected)


def test_unsigned_positions(placement):
    xp = placement.xp
    if not hasattr(xp, "uint8"):
        pytest.skip("no unsigned dtype")
    out = alibi_bias(
        2,
        3,
        2,
        causal=True,
        query_positions=placement.asarray(np.array([1, 2]), dtype=xp.uint8),
        key_positions=placement.asarray(np.array([0, 1, 2]), dtype=xp.uint8),
        dtype=xp.float32,
    )
    expected = alibi_reference(alibi_slopes_reference(2), 2, 3, causal=True)
    placement.check_placement(out, expected.shape)
    if not placement.shape_only:
        got = to_numpy(out)
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
        np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)])


def test_slopes_array_instead_of_a_head_count(placement):
    slopes = np.array([0.5, 0.0, 2.0])  # any per-head slopes, zero included
    out = alibi_bias(3, 5, placement.asarray(slopes), causal=True)
    assert_bias_close(placement, out, alibi_reference(slopes, 3, 5, causal=True), tol_eps=0.5)


# -- broadcastable and factored forms ---------------------------------------------------------


def test_row_constant_form_gives_the_same_attention(placement, rng):
    """``(1, h, 1, k)`` plus the causal mask: the same softmax as the full causal bias."""
    case = placement
    module = ALiBiPositionalBias(HEADS, causal=True, **_place(case))
    rows = module(Q, K, broadcastable=True)
    case.check_placement(rows, (1, HEADS, 1, K))
    full = module(Q, K)
    if case.shape_only:
        return
    slopes = np.array(alibi_slopes_reference(HEADS))
    np.testing.assert_allclose(
        to_numpy(rows)[0, :, 0, :], -slopes[:, None] * (K - 1 - np.arange(K)), rtol=1e-6
    )
    q = case.asarray(rng.standard_normal((2, HEADS, Q, 4)))
    k = case.asarray(rng.standard_normal((2, HEADS, K, 4)))
    v = case.asarray(rng.standard_normal((2, HEADS, K, 3)))
    with_rows = scaled_dot_product_attention(q, k, v, bias=rows, causal=True)
    with_full = scaled_dot_product_attention(q, k, v, bias=full)
    # Shift invariance is exact in real arithmetic; rounding of the larger raw values differs.
    assert case.error_eps(with_rows, to_numpy(with_full).astype(np.float64)) <= 64


def test_row_constant_form_with_key_positions(placement):
    keys = placement.positions(np.array([[3, 4, 5, 6], [0, 2, 4, 6]]))
    out = alibi_bias(
        1, 4, 2, causal=True, broadcastable=True, key_positions=keys, dtype=placement.dtype
    )
    slopes = np.array(alibi_slopes_reference(2))
    distances = np.array([[-3, -2, -1, 0], [-6, -4, -2, 0]], dtype=np.float64)
    expected = slopes[None, :, None, None] * distances[:, None, None, :]
    assert_bias_close(placement, out, expected)


@pytest.mark.parametrize("causal", [False, True], ids=["symmetric", "causal"])
def test_factored_form_equals_the_bias(placement, causal):
    xp = placement.xp
    slopes = alibi_slopes(5, **_place(placement))
    distances = alibi_distances(3, 6, causal=causal, **_place(placement))
    placement.check_placement(distances, (3, 6))
    factored = xp.reshape(slopes, (1, 5, 1, 1)) * distances
    full = alibi_bias(3, 6, 5, causal=causal, **_place(placement))
    if not placement.shape_only:
        np.testing.assert_array_equal(to_numpy(factored), to_numpy(full))


# -- module surface -----------------------------------------------------------------------------


def test_module_surface():
    module = ALiBiPositionalBias(6)
    assert module.state_dict() == {}
    module.load_state_dict({})
    assert module.slopes.shape == (6,)
    assert module.slopes.dtype == np.float64
    assert module(3, 3).dtype == np.float64
    assert module(3, 3, dtype=np.float32).dtype == np.float32
    assert repr(module).startswith(
        "ALiBiPositionalBias(num_heads=6, max_seq_len=2048, causal=False"
    )
    assert module(3000, 3000, dtype=np.float32).shape == (1, 6, 3000, 3000)  # beyond max_seq_len


def test_module_to_and_per_call_namespace(placement):
    from olm_xp._compat import default_float_dtype

    xp = placement.xp
    module = ALiBiPositionalBias(3)  # NumPy, float64
    out = module(2, 4, xp=xp, device=placement.device)
    default = np.float64 if placement.profile.module == "numpy" else default_float_dtype(xp)
    placement.check_placement(out, (1, 3, 2, 4), dtype=default)
    out = module(2, 4, xp=xp, device=placement.device, dtype=xp.float32)
    placement.check_placement(out, (1, 3, 2, 4), dtype=xp.float32)
    moved = module.to(xp=xp, device=placement.device, dtype=xp.float32)
    assert moved is module
    placement.check_placement(module(2, 4), (1, 3, 2, 4), dtype=xp.float32)
    placement.check_placement(module.slopes, (3,), dtype=xp.float32)


def test_olm_style_device_argument_picks_torch():
    torch = pytest.importorskip("torch")
    module = ALiBiPositionalBias(4)  # NumPy by default
    out = module(3, 3, device=torch.device("cpu"))  # as olm callers write it
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    assert out.shape == (1, 4, 3, 3)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_heads": 0}, ValueError, r"num_heads must be a positive int \(> 0\); got 0"),
        ({"num_heads": 2.0}, TypeError, "num_heads must be a positive int; got float 2.0"),
        ({"num_heads": True}, TypeError, "num_heads must be a positive int; got bool True"),
        ({"max_seq_len": -1}, ValueError, r"max_seq_len must be a positive int \(> 0\); got -1"),
        ({"causal": 1}, TypeError, "causal must be a bool; got int 1"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ALiBiPositionalBias(**({"num_heads": 4} | kwargs))


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0, 4), ValueError, r"seq_len_q must be a positive int \(> 0\); got 0"),
        ((3, -1), ValueError, r"seq_len_k must be a positive int \(> 0\); got -1"),
        ((2.0, 4), TypeError, "seq_len_q must be a positive int; got float 2.0"),
        ((2, "4"), TypeError, "seq_len_k must be a positive int; got str '4'"),
    ],
)
def test_bad_sequence_lengths(args, error, match):
    with pytest.raises(error, match=match):
        ALiBiPositionalBias(4)(*args)
    with pytest.raises(error, match=match):
        alibi_bias(*args, 4)


def test_causal_form_with_more_queries_than_keys():
    match = r"causal form needs seq_len_q <= seq_len_k .* got seq_len_q=5 > seq_len_k=3"
    with pytest.raises(ValueError, match=match):
        ALiBiPositionalBias(4, causal=True)(5, 3)
    with pytest.raises(ValueError, match=match):
        alibi_distances(5, 3, causal=True)


def test_bad_heads_and_forms():
    with pytest.raises(ValueError, match=r"heads must be a positive int \(> 0\); got 0"):
        alibi_bias(2, 2, 0)
    with pytest.raises(TypeError, match="heads must be a positive int; got float"):
        alibi_bias(2, 2, 4.0)
    with pytest.raises(ValueError, match=r"heads must be an int or a 1-D \(heads,\) array"):
        alibi_bias(2, 2, np.ones((2, 2)))
    with pytest.raises(TypeError, match="heads slopes must have a real floating dtype; got int64"):
        alibi_bias(2, 2, np.ones(2, dtype=np.int64))
    with pytest.raises(ValueError, match="broadcastable=True needs causal=True"):
        alibi_bias(2, 2, 4, broadcastable=True)
    with pytest.raises(TypeError, match="broadcastable must be a bool"):
        alibi_bias(2, 2, 4, causal=True, broadcastable="yes")
    with pytest.raises(TypeError, match="dtype must be a real floating dtype; got int32"):
        alibi_bias(2, 2, 4, dtype=np.int32)


def test_bad_positions(placement):
    xp = placement.xp
    index = placement.index_dtype
    module = ALiBiPositionalBias(2)
    with pytest.raises(
        ValueError,
        match=r"query_positions must have shape \(3,\) or \(batch, 3\) to match seq_len_q=3; "
        r"got \(4,\)",
    ):
        module(3, 5, query_positions=placement.asarray(np.arange(4), dtype=index))
    with pytest.raises(
        ValueError, match=r"key_positions must have shape \(5,\) .* got \(1, 2, 5\)"
    ):
        module(3, 5, key_positions=placement.asarray(np.zeros((1, 2, 5)), dtype=index))
    with pytest.raises(TypeError, match="key_positions must have an integer dtype; got float32"):
        module(3, 5, key_positions=placement.asarray(np.arange(5), dtype=xp.float32))
    with pytest.raises(ValueError, match=r"must have the same batch size .*; got 2 and 3"):
        module(
            1,
            2,
            query_positions=placement.asarray(np.zeros((2, 1)), dtype=index),
            key_positions=placement.asarray(np.zeros((3, 2)), dtype=index),
        )


@pytest.mark.parametrize("causal", [False, True])
def test_bias_allocates_no_temporary_as_large_as_the_output(causal):
    """Memory is the output and nothing else of its order: the distances are built in the
    last head's slot (a causal mask is a bool ``(q, k)``, 1/(4 heads) of the output), never a
    second ``(heads, q, k)`` array (olm keeps a ``(heads, max, max)`` buffer; a masked product
    makes one). NumPy's allocations are traced exactly, so this is deterministic."""
    import tracemalloc

    heads, q, k = 32, 256, 256
    alibi_bias(q, k, heads, causal=causal, xp=np, dtype=np.float32)  # warm caches
    tracemalloc.start()
    try:
        out = alibi_bias(q, k, heads, causal=causal, xp=np, dtype=np.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.nbytes == heads * q * k * 4
    assert peak <= 1.01 * out.nbytes, f"peak {peak / out.nbytes:.3f}x the output"
