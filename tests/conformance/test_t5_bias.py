"""T5 relative position bias on every backend: buckets, the bias, decode alignment, state."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from olm_xp import t5_relative_position_bias, t5_relative_position_bucket
from olm_xp._compat import to_numpy
from olm_xp.nn.embeddings.positional import T5RelativePositionBias
from olm_xp.reference import t5_bias_reference, t5_bucket_reference
from olm_xp.t5_bias import t5_bucket_spec

HEADS = 3
Q, K = 4, 9  # a prefill chunk: the queries are the last 4 of 9 positions
# (num_buckets, max_distance, bidirectional): T5's own, small ones, and one where the exact
# buckets and Hugging Face's float32 log disagree at one boundary (see tests/parity).
CONFIGS = [(32, 128, True), (32, 128, False), (8, 20, True), (34, 27, True), (17, 27, False)]
RELATIVE = np.concatenate([np.arange(-300, 301), [-(10**6), 10**6, 2**30, -(2**30)]])


@functools.cache
def _cached_buckets(relative, num_buckets, max_distance, bidirectional):
    return np.array(
        [t5_bucket_reference(r, bidirectional, num_buckets, max_distance) for r in relative]
    )


def _reference_buckets(relative, num_buckets, max_distance, bidirectional):
    values = tuple(int(r) for r in np.asarray(relative).reshape(-1))
    return _cached_buckets(values, num_buckets, max_distance, bidirectional)


def _place(case):
    return {"xp": case.xp, "device": case.device, "dtype": case.dtype}


def assert_equal(case, out, expected):
    """Placement, and the values exactly (a bias is a gather from the table)."""
    case.check_placement(out, tuple(expected.shape), dtype=out.dtype)
    if not case.shape_only:
        np.testing.assert_array_equal(to_numpy(out).astype(np.float64), expected)


# -- buckets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_buckets", "max_distance", "bidirectional"), CONFIGS)
def test_buckets_match_reference_on_numpy(num_buckets, max_distance, bidirectional):
    kwargs = {"num_buckets": num_buckets, "max_distance": max_distance}
    out = t5_relative_position_bucket(RELATIVE, bidirectional=bidirectional, **kwargs)
    expected = _reference_buckets(RELATIVE, num_buckets, max_distance, bidirectional)
    np.testing.assert_array_equal(out, expected)


def test_buckets_match_reference(placement):
    relative = placement.positions(RELATIVE)
    out = t5_relative_position_bucket(relative)  # T5's 32 buckets, max_distance=128
    placement.check_placement(out, RELATIVE.shape, dtype=relative.dtype)
    if placement.shape_only:
        return
    expected = _reference_buckets(RELATIVE, 32, 128, True)
    np.testing.assert_array_equal(to_numpy(out), expected)
    if placement.profile.jit == "jax":
        import jax

        causal = jax.jit(lambda r: t5_relative_position_bucket(r, bidirectional=False))
        expected = _reference_buckets(RELATIVE, 32, 128, False)
        np.testing.assert_array_equal(to_numpy(causal(relative)), expected)


def test_bucket_boundaries_are_exact():
    """At T5's defaults the logarithmic buckets start at distances where
    ``log(n/8) / log(16) * 8`` (bidirectional) reaches an integer: 12, 16, 23, 32, 46, 64, 91."""
    assert t5_bucket_spec(32, 128, True).thresholds == (12, 16, 23, 32, 46, 64, 91)
    spec = t5_bucket_spec(32, 128, False)
    assert spec.exact == 16
    assert len(spec.thresholds) == 15
    assert spec.thresholds[0] == 19  # 16 * 8**(1/16) = 18.2..., so 19


def test_buckets_of_unsigned_and_narrow_dtypes():
    out = t5_relative_position_bucket(np.arange(0, 200, dtype=np.uint8))
    assert out.dtype == np.int64  # unsigned positions are made signed before the distance
    np.testing.assert_array_equal(out, _reference_buckets(np.arange(200), 32, 128, True))
    small = t5_relative_position_bucket(np.arange(-100, 100, dtype=np.int8))
    assert small.dtype == np.int8
    np.testing.assert_array_equal(small, _reference_buckets(np.arange(-100, 100), 32, 128, True))


# -- the bias ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
def test_module_forward_matches_reference(float_case, bidirectional):
    """A prefill chunk (the last ``Q`` of ``K`` positions): the last rows of the full bias."""
    case = float_case
    module = T5RelativePositionBias(
        HEADS, num_buckets=8, max_distance=6, bidirectional=bidirectional, seed=5, **_place(case)
    )
    table = case.rounded(np.random.default_rng(5).standard_normal((8, HEADS)))
    kwargs = {"bidirectional": bidirectional, "max_distance": 6}
    chunk = case.call(module, seq_len_q=Q, seq_len_k=K)
    case.check_placement(chunk, (1, HEADS, Q, K))
    assert_equal(case, chunk, t5_bias_reference(table, K, K, **kwargs)[:, :, -Q:, :])


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
def test_decode_step_is_the_last_row(bidirectional):
    """With a KV cache the one new query is the newest position (Hugging Face's
    ``past_seen_tokens``): its bias is the last row of the full bias."""
    module = T5RelativePositionBias(HEADS, bidirectional=bidirectional, seed=1)
    full = module(200, 200)
    for q in (1, 7, 200):
        np.testing.assert_array_equal(module(q, 200), full[:, :, -q:, :])


def test_pure_function_with_batched_positions(float_case, rng):
    case = float_case
    table_host = rng.standard_normal((16, HEADS))
    q_host = rng.integers(0, 300, size=(2, Q))
    k_host = rng.integers(0, 300, size=(1, K))

    def f(weight, qp, kp):
        return t5_relative_position_bias(
            weight, Q, K, max_distance=40, query_positions=qp, key_positions=kp
        )

    out = case.call(f, case.asarray(table_host), case.positions(q_host), case.positions(k_host))
    table = case.rounded(table_host)
    expected = np.concatenate(
        [
            t5_bias_reference(
                table, Q, K, max_distance=40, query_positions=qp, key_positions=k_host[0]
            )
            for qp in q_host
        ]
    )
    assert_equal(case, out, expected)
    case.check_placement(out, (2, HEADS, Q, K))


def test_explicit_positions_equal_the_default_ones():
    module = T5RelativePositionBias(HEADS, seed=0)
    for positions in (np.arange(K - Q, K), np.arange(K - Q, K, dtype=np.uint16)):
        explicit = module(Q, K, query_positions=positions, key_positions=np.arange(K))
        np.testing.assert_array_equal(explicit, module(Q, K))


# -- learned state ----------------------------------------------------------------------------


def test_state_dict_key_and_round_trip(placement):
    xp = placement.xp
    source = T5RelativePositionBias(HEADS, seed=3)  # NumPy float64
    assert list(source.state_dict()) == ["relative_attention_bias.weight"]
    assert source.state_dict()["relative_attention_bias.weight"].shape == (32, HEADS)
    target = T5RelativePositionBias(HEADS, xp=xp, device=placement.device, dtype=xp.float32)
    target.load_state_dict(source.state_dict())
    weight = target.relative_attention_bias.weight
    placement.check_placement(weight, (32, HEADS), dtype=xp.float32)
    if not placement.shape_only:
        expected = source.state_dict()["relative_attention_bias.weight"].astype(np.float32)
        np.testing.assert_array_equal(to_numpy(weight), expected)


def test_same_seed_same_table_everywhere(placement):
    module = T5RelativePositionBias(
        HEADS, xp=placement.xp, device=placement.device, dtype=placement.xp.float32, seed=9
    )
    if not placement.shape_only:
        expected = np.random.default_rng(9).standard_normal((32, HEADS)).astype(np.float32)
        np.testing.assert_array_equal(to_numpy(module.relative_attention_bias.weight), expected)


def test_module_surface_and_to():
    module = T5RelativePositionBias(4, num_buckets=16, max_distance=64, bidirectional=False)
    text = repr(module)
    assert text.startswith("T5RelativePositionBias(")
    assert "num_heads=4, num_buckets=16, max_distance=64, bidirectional=False" in text
    assert "(relative_attention_bias): Embedding(16, 4)" in text
    assert module.to(dtype=np.float32) is module
    assert module(2, 3).dtype == np.float32
    assert module(1, 5000).shape == (1, 4, 1, 5000)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_heads": 0}, ValueError, r"num_heads must be a positive int \(> 0\); got 0"),
        ({"num_heads": 1.5}, TypeError, "num_heads must be a positive int; got float 1.5"),
        ({"num_buckets": -4}, ValueError, r"num_buckets must be a positive int \(> 0\); got -4"),
        ({"num_buckets": 32.0}, TypeError, "num_buckets must be a positive int; got float"),
        ({"num_buckets": 3}, ValueError, r"num_buckets must be >= 4 for bidirectional .* got 3"),
        (
            {"num_buckets": 1, "bidirectional": False},
            ValueError,
            r"num_buckets must be >= 2 for causal buckets .* got 1",
        ),
        ({"max_distance": 0}, ValueError, r"max_distance must be a positive int \(> 0\); got 0"),
        ({"max_distance": "128"}, TypeError, "max_distance must be a positive int; got str"),
        (
            {"max_distance": 7},
            ValueError,
            r"max_distance must be greater than the number of exact buckets "
            r"\(num_buckets // 4 = 8 for bidirectional buckets\); got 7",
        ),
        (
            {"max_distance": 16, "bidirectional": False},
            ValueError,
            r"max_distance must be greater .* \(num_buckets // 2 = 16 for causal buckets\); got 16",
        ),
        ({"bidirectional": 1}, TypeError, "bidirectional must be a bool; got int 1"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        T5RelativePositionBias(**({"num_heads": 2} | kwargs))


def test_bad_pure_function_arguments():
    with pytest.raises(ValueError, match="max_distance must be greater than the number of exact"):
        t5_relative_position_bucket(np.arange(3), max_distance=8)
    with pytest.raises(TypeError, match="relative_positions must have an integer dtype; got float"):
        t5_relative_position_bucket(np.zeros(3))
    with pytest.raises(ValueError, match=r"weight must be a 2-D \(num_buckets, heads\) table"):
        t5_relative_position_bias(np.zeros(32), 2, 2)
    with pytest.raises(TypeError, match="weight must have a real floating dtype; got int64"):
        t5_relative_position_bias(np.zeros((32, 2), dtype=np.int64), 2, 2)
    with pytest.raises(ValueError, match=r"seq_len_q must be a positive int \(> 0\); got 0"):
        t5_relative_position_bias(np.zeros((32, 2)), 0, 2)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0, 4), ValueError, r"seq_len_q must be a positive int \(> 0\); got 0"),
        ((3, -2), ValueError, r"seq_len_k must be a positive int \(> 0\); got -2"),
        ((3.0, 4), TypeError, "seq_len_q must be a positive int; got float 3.0"),
    ],
)
def test_bad_sequence_lengths(args, error, match):
    with pytest.raises(error, match=match):
        T5RelativePositionBias(2)(*args)


def test_bad_positions(placement):
    index = placement.index_dtype
    module = T5RelativePositionBias(2).to(xp=placement.xp, device=placement.device)
    with pytest.raises(
        ValueError, match=r"query_positions must have shape \(3,\) or \(batch, 3\) .* got \(2,\)"
    ):
        module(3, 4, query_positions=placement.asarray(np.arange(2), dtype=index))
    with pytest.raises(TypeError, match="key_positions must have an integer dtype; got float32"):
        module(3, 4, key_positions=placement.asarray(np.arange(4), dtype=placement.xp.float32))
    if placement.profile.module != "numpy":
        with pytest.raises(TypeError, match=r"key_positions is a numpy array but .* \.to\(xp="):
            module(3, 4, key_positions=np.arange(4))
