"""Sinusoidal table and embedding: values against the float64 reference, on every backend."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from olm_xp import sinusoidal_table
from olm_xp._compat import is_concrete
from olm_xp.nn.embeddings.positional import SinusoidalPositionalEmbedding
from olm_xp.reference import sinusoidal_reference

# A correctly rounded table entry is within 0.5 ulp (<= 0.5 eps for |v| <= 1) of the exact value;
# x + pe computed in the working dtype adds one more rounding.
TABLE_TOL_EPS = 0.5 + 2.0**-6
SUM_TOL_EPS = 1.5


@pytest.mark.parametrize("embed_dim", [1, 2, 7, 64])
def test_table_of_length_matches_reference(case, embed_dim):
    out = sinusoidal_table(50, embed_dim, xp=case.xp, device=case.device, dtype=case.dtype)
    case.assert_close(out, sinusoidal_reference(50, embed_dim), tol_eps=TABLE_TOL_EPS, max_angle=50)


@pytest.mark.parametrize("shape", [(7,), (2, 5)])
def test_table_of_positions_matches_reference(case, shape, rng):
    positions = rng.integers(0, 2**21, size=shape)
    out = case.call(
        lambda p: sinusoidal_table(p, 16, base=500.0, dtype=case.dtype), case.positions(positions)
    )
    expected = sinusoidal_reference(positions, 16, base=500.0)
    # Traced positions without float64 (JAX x64 off) compose byte-wise rotations in float32.
    traced_without_f64 = case.mode == "jit" and not case.has_float64
    tol = 4.0 if traced_without_f64 and not case.is_low_precision else TABLE_TOL_EPS
    case.assert_close(out, expected, tol_eps=tol, max_angle=2**21)


def test_table_is_float32_exact_up_to_2_pow_21(placement):
    """Every entry is correctly rounded at long context; a float32 angle is not."""
    positions = np.array([0, 1, 4095, 32768, 2**20 + 17, 2**21 - 1, 2**21])
    out = sinusoidal_table(placement.positions(positions), 128, dtype=placement.xp.float32)
    expected = sinusoidal_reference(positions, 128)
    placement.assert_close(out, expected, tol_eps=TABLE_TOL_EPS, max_angle=2**21)
    if placement.shape_only:
        return
    # What olm and most peers do: the angle p * w computed in float32.
    inv_freq = (10000.0 ** (-np.arange(0, 128, 2) / 128)).astype(np.float32)
    angles32 = positions.astype(np.float32)[:, None] * inv_freq
    naive = np.sin(angles32.astype(np.float64))
    assert np.max(np.abs(naive - expected[:, 0::2])) > 1e-3


def test_forward_matches_reference(case, rng):
    module = SinusoidalPositionalEmbedding(12, max_seq_len=64)
    x_host = rng.standard_normal((2, 9, 12))
    out = case.call(module, case.asarray(x_host))
    expected = case.rounded(x_host) + sinusoidal_reference(9, 12)
    case.assert_close(out, expected, tol_eps=SUM_TOL_EPS, max_angle=9)


@pytest.mark.parametrize("shape", [(9,), (2, 9), (1, 9)])
@pytest.mark.parametrize("max_seq_len", [16, 4096])
def test_forward_with_positions(case, shape, max_seq_len, rng):
    """Odd dim; positions beyond ``max_seq_len`` (16) and within it (4096: under ``jax.jit``
    the rows are gathered from the cached table, else computed in-graph)."""
    module = SinusoidalPositionalEmbedding(7, max_seq_len=max_seq_len)
    x_host = rng.standard_normal((2, 9, 7))
    positions = rng.integers(0, 3000, size=shape)
    out = case.call(module, case.asarray(x_host), case.positions(positions))
    expected = case.rounded(x_host) + sinusoidal_reference(positions, 7)
    traced_without_f64 = case.mode == "jit" and not case.has_float64
    tol = 4.0 if traced_without_f64 and not case.is_low_precision else SUM_TOL_EPS
    case.assert_close(out, expected, tol_eps=tol, max_angle=3000)


def test_sequence_longer_than_max_seq_len_extends(case, rng):
    module = SinusoidalPositionalEmbedding(8, max_seq_len=4)
    x_host = rng.standard_normal((1, 300, 8))
    out = case.call(module, case.asarray(x_host))
    expected = case.rounded(x_host) + sinusoidal_reference(300, 8)
    case.assert_close(out, expected, tol_eps=SUM_TOL_EPS, max_angle=300)


def test_no_table_at_construction_and_lazy_growth(placement):
    module = SinusoidalPositionalEmbedding(8, max_seq_len=1_000_000)
    assert len(module._cache) == 0
    x = placement.asarray(np.zeros((1, 3, 8)))
    module(x)
    if placement.shape_only:
        return
    (table,) = module._cache._tables.values()
    assert table.shape[0] < 1000  # grown to what was used, not max_seq_len
    module(x, placement.positions(np.array([0, 1, 5000])))
    (table,) = module._cache._tables.values()
    assert 5000 < table.shape[0] <= 2 * 5001


def test_cache_is_keyed_by_dtype_and_bounded(placement):
    module = SinusoidalPositionalEmbedding(4)
    xp = placement.xp
    module(placement.asarray(np.zeros((1, 2, 4)), dtype=xp.float32))
    if placement.has_float64 and not placement.shape_only:
        module(placement.asarray(np.zeros((1, 2, 4)), dtype=xp.float64))
        assert len(module._cache) == 2
    assert len(module._cache) <= module._cache.max_entries


def test_cache_never_holds_a_tracer(case, rng):
    if case.mode != "jit":
        pytest.skip("only meaningful under jax.jit")
    module = SinusoidalPositionalEmbedding(8)
    case.call(module, case.asarray(rng.standard_normal((1, 5, 8))))
    assert all(is_concrete(t) for t in module._cache._tables.values())


def test_threads_share_one_module(placement, rng):
    module = SinusoidalPositionalEmbedding(16)
    x_host = rng.standard_normal((1, 40, 16))
    expected = placement.rounded(x_host) + sinusoidal_reference(40, 16)
    x = placement.asarray(x_host)
    errors: list[BaseException] = []

    def work(length: int) -> None:
        try:
            positions = placement.positions(np.arange(40) + 0 * length)
            for _ in range(5):
                placement.assert_close(
                    module(x, positions), expected, tol_eps=SUM_TOL_EPS, max_angle=40
                )
                module(placement.asarray(np.zeros((1, length, 16))))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in (10, 100, 1000, 3000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_low_precision_is_computed_in_float32_and_rounded_once(lowp_case, rng):
    module = SinusoidalPositionalEmbedding(32)
    x_host = rng.standard_normal((2, 64, 32))
    out = lowp_case.call(module, lowp_case.asarray(x_host))
    exact = lowp_case.rounded(x_host) + sinusoidal_reference(64, 32)
    # One rounding of the exact sum to bf16/fp16 is within 0.5 eps; rounding pe first adds more.
    lowp_case.assert_close(out, exact, tol_eps=0.5 + 2.0**-10)
