"""Parity with the real olm (``openlanguagemodel``): olm is the oracle for olm's semantics.

What is proved here, for olm_xp on NumPy and on torch (CPU, float32):

* ``AbsolutePositionalEmbedding``: olm's ``state_dict`` loads into olm_xp and olm_xp's loads
  into olm; forwards agree bit for bit (no positions, ``(batch, seq)``, ``(1, seq)`` and
  ``(seq,)`` positions; odd and even ``embed_dim``).
* ``SinusoidalPositionalEmbedding``: same layout as olm (odd ``embed_dim`` ends with a sine)
  and the same numbers up to olm's own float32 angle error, whose bound is derived below; at
  large positions olm_xp is correctly rounded while olm is off by up to ~2.5e-4 (the README's
  "Difference from olm": olm_xp is more accurate).
* Dropout: identity in eval mode; in training mode every output element is 0 or
  ``(x + pe) / (1 - p)``, olm's semantics (dropout on the sum).
* Positions beyond ``max_seq_len``: olm's sinusoidal raises IndexError, olm_xp extends the table
  (checked against the float64 reference); olm_xp's absolute raises a ValueError naming
  ``seq_positions`` and ``max_seq_len``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pytest

olm = pytest.importorskip("olm")
torch = pytest.importorskip("torch")
olm_positional = pytest.importorskip("olm.nn.embeddings.positional")

from olm_xp.nn.embeddings.positional import (  # noqa: E402 - after the importorskip guards
    AbsolutePositionalEmbedding,
    SinusoidalPositionalEmbedding,
)
from olm_xp.reference import sinusoidal_reference  # noqa: E402

pytestmark = pytest.mark.parity

EPS32 = 2.0**-24  # float32 unit roundoff: half an ulp of 1
BATCH = 3
BACKENDS = ["numpy", "torch"]
POSITION_MODES = ["none", "batch_seq", "one_seq", "seq"]


# -- helpers --------------------------------------------------------------------------------
def _as_backend(a: np.ndarray, backend: str) -> Any:
    return torch.from_numpy(np.array(a)) if backend == "torch" else a  # a writable copy


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _check_output_type(out: Any, backend: str) -> None:
    if backend == "torch":
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.float32
    else:
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.float32


def _positions(
    mode: str, rng: np.random.Generator, seq_len: int, high: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(positions for olm_xp, the same positions as olm's documented (batch, seq) shape)."""
    if mode == "none":
        return None, None
    if mode == "batch_seq":
        pos = rng.integers(0, high, size=(BATCH, seq_len))
        pos[0, -1] = high - 1  # always exercise the last row of the table
    elif mode == "one_seq":
        pos = rng.integers(0, high, size=(1, seq_len))
        pos[0, 0] = high - 1
    else:  # "seq": olm documents only (batch, seq); give olm the positions expanded
        pos = rng.integers(0, high, size=(seq_len,))
        pos[-1] = high - 1
    pos = pos.astype(np.int64)
    return pos, np.array(np.broadcast_to(pos, (BATCH, seq_len)))  # a writable copy for torch


def _olm_forward(module: Any, x: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        pos = None if positions is None else torch.from_numpy(np.array(positions))
        return module(torch.from_numpy(np.array(x)), pos).numpy()


def _xp_forward(module: Any, x: np.ndarray, positions: np.ndarray | None, backend: str) -> Any:
    pos = None if positions is None else _as_backend(positions, backend)
    out = module(_as_backend(x, backend), pos)
    _check_output_type(out, backend)
    return out


def _ulp32(a: np.ndarray) -> np.ndarray:
    """float32 ulp of each |a| (as float64)."""
    return np.spacing(np.abs(a).astype(np.float32)).astype(np.float64)


def _olm_angle_error_bound(positions: np.ndarray, embed_dim: int, base: float) -> np.ndarray:
    """Bound on |olm's float32 angle - exact angle|, shape ``(*positions.shape, embed_dim)``.

    olm computes ``div = exp(fl(2i) * fl(-ln(base)/D))`` and ``angle = fl(p * div)`` in float32.
    With ``a = 2i ln(base)/D`` (<= ln(base)) and u = 2**-24:

    * the exponent ``-a`` picks up two roundings (the scalar and the product): abs error
      <= 2 a u, which ``exp`` turns into a relative error of 2 a u;
    * float32 ``exp`` (SLEEF u10) adds <= 1 ulp, i.e. a relative error <= 2 u;
    * ``fl(p * div)`` adds one more rounding, relative u (``p`` itself is exact below 2**24).

    So |angle error| <= p * div * (2 a + 3) * u. Column 0 (div = 1, a = 0) has error 0 when
    ``p`` is exact, i.e. olm's error grows with both the position and the column.
    """
    column = np.arange(embed_dim)
    a = 2 * (column // 2) * math.log(base) / embed_dim
    div = np.exp(-a)
    p = np.asarray(positions, dtype=np.float64)[..., None]
    return p * div * (2 * a + 3) * EPS32


def _sinusoidal_tolerance(
    positions: np.ndarray, embed_dim: int, base: float, olm_out: np.ndarray, xp_out: np.ndarray
) -> np.ndarray:
    """Elementwise bound on |olm - olm_xp| for ``x + pe`` in float32.

    |olm - olm_xp| <= olm's angle error (sin and cos are 1-Lipschitz)
                    + olm's float32 sin/cos rounding (<= 1 ulp <= 2u for |v| <= 1)
                    + olm_xp's single rounding of the float64 value (<= u/2)
                    + both sides' rounding of ``x + pe`` (<= half an ulp of the sum each).
    The sin/cos terms are bounded generously by 4u (measured slack: the largest observed
    |olm - olm_xp| is about half of this bound).
    """
    angle = _olm_angle_error_bound(positions, embed_dim, base)
    sums = np.maximum(np.abs(olm_out), np.abs(xp_out)).astype(np.float64)
    return angle + 4 * EPS32 + _ulp32(sums)


@functools.cache
def _olm_sinusoidal(embed_dim: int, max_seq_len: int, dropout: float = 0.0) -> Any:
    return olm_positional.SinusoidalPositionalEmbedding(embed_dim, max_seq_len, dropout=dropout)


# -- 1. AbsolutePositionalEmbedding --------------------------------------------------------
def _absolute_pair(
    max_seq_len: int, embed_dim: int, backend: str, dropout: float = 0.0
) -> tuple[Any, Any]:
    """An olm module (seeded torch init) and an olm_xp module loaded from its state_dict."""
    torch.manual_seed(1234 + 97 * embed_dim + max_seq_len)
    ref = olm_positional.AbsolutePositionalEmbedding(max_seq_len, embed_dim, dropout=dropout)
    state = ref.state_dict()
    assert set(state) == {"pos_embedding.weight"}
    if backend == "torch":
        mine = AbsolutePositionalEmbedding(
            max_seq_len, embed_dim, dropout=dropout, xp=torch, dtype=torch.float32, seed=0
        )
    else:
        mine = AbsolutePositionalEmbedding(
            max_seq_len, embed_dim, dropout=dropout, dtype=np.float32, seed=0
        )
    assert set(mine.state_dict()) == set(state)
    mine.load_state_dict(state)
    return ref.eval(), mine.eval()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("embed_dim", [7, 8])
@pytest.mark.parametrize("mode", POSITION_MODES)
def test_absolute_matches_olm_after_loading_olm_state_dict(
    backend: str, embed_dim: int, mode: str
) -> None:
    max_seq_len, seq_len = 16, 11
    ref, mine = _absolute_pair(max_seq_len, embed_dim, backend)
    np.testing.assert_array_equal(
        _to_numpy(mine.state_dict()["pos_embedding.weight"]),
        ref.state_dict()["pos_embedding.weight"].numpy(),
    )
    rng = np.random.default_rng(embed_dim)
    x = rng.standard_normal((BATCH, seq_len, embed_dim)).astype(np.float32)
    pos, pos_for_olm = _positions(mode, rng, seq_len, max_seq_len)

    expected = _olm_forward(ref, x, pos_for_olm)
    got = _to_numpy(_xp_forward(mine, x, pos, backend))
    # Both compute one IEEE float32 addition of the same two float32 operands (x and the same
    # table row) with round-to-nearest, so the results are bitwise identical: tolerance 0.
    assert got.shape == expected.shape == (BATCH, seq_len, embed_dim)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("embed_dim", [5, 8])
def test_absolute_olm_xp_state_dict_loads_into_olm(backend: str, embed_dim: int) -> None:
    max_seq_len, seq_len = 12, 12
    xp_kwargs: dict[str, Any] = (
        {"xp": torch, "dtype": torch.float32} if backend == "torch" else {"dtype": np.float32}
    )
    mine = AbsolutePositionalEmbedding(max_seq_len, embed_dim, seed=7, **xp_kwargs).eval()
    ref = olm_positional.AbsolutePositionalEmbedding(max_seq_len, embed_dim).eval()
    ref.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in mine.state_dict().items()})

    rng = np.random.default_rng(3)
    x = rng.standard_normal((BATCH, seq_len, embed_dim)).astype(np.float32)
    for mode in POSITION_MODES:
        pos, pos_for_olm = _positions(mode, rng, seq_len, max_seq_len)
        got = _to_numpy(_xp_forward(mine, x, pos, backend))
        np.testing.assert_array_equal(_olm_forward(ref, x, pos_for_olm), got)  # see above: exact


# -- 2. SinusoidalPositionalEmbedding ------------------------------------------------------
SIN_DIMS = [1, 2, 7, 8, 64, 65]


def test_sinusoidal_has_no_learned_state_like_olm() -> None:
    assert _olm_sinusoidal(8, 16).state_dict() == {}  # olm's ``pe`` buffer is not persistent
    assert SinusoidalPositionalEmbedding(8, 16).state_dict() == {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("embed_dim", SIN_DIMS)
@pytest.mark.parametrize("max_seq_len", [16, 5000])
@pytest.mark.parametrize("mode", [*POSITION_MODES, "longer_than_max"])
def test_sinusoidal_matches_olm(backend: str, embed_dim: int, max_seq_len: int, mode: str) -> None:
    ref = _olm_sinusoidal(embed_dim, max_seq_len).eval()
    mine = SinusoidalPositionalEmbedding(embed_dim, max_seq_len).eval()
    rng = np.random.default_rng(embed_dim * 10_000 + max_seq_len)
    if mode == "longer_than_max":  # olm recomputes its table for seq_len > max_seq_len
        seq_len, positions_high = max_seq_len + 37, None
    else:
        seq_len, positions_high = min(max_seq_len, 40), max_seq_len
    x = rng.standard_normal((BATCH, seq_len, embed_dim)).astype(np.float32)
    if positions_high is None:
        pos, pos_for_olm = None, None
    else:
        pos, pos_for_olm = _positions(mode, rng, seq_len, positions_high)

    expected = _olm_forward(ref, x, pos_for_olm)
    got = _to_numpy(_xp_forward(mine, x, pos, backend))
    assert got.shape == expected.shape == (BATCH, seq_len, embed_dim)

    default = np.broadcast_to(np.arange(seq_len), (BATCH, seq_len))
    effective = default if pos_for_olm is None else pos_for_olm
    tol = _sinusoidal_tolerance(effective, embed_dim, 10000.0, expected, got)
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    worst = np.unravel_index(np.argmax(diff - tol), diff.shape)
    assert np.all(diff <= tol), (
        f"|olm - olm_xp| = {diff[worst]:.3g} > bound {tol[worst]:.3g} at {worst}"
    )


@pytest.mark.parametrize("embed_dim", [1, 2, 7, 8, 65])
def test_sinusoidal_layout_matches_olm(embed_dim: int) -> None:
    """Column order (sin, cos, sin, cos, ..., odd D ending with a sine) is olm's.

    At small positions both tables are within a few float32 ulp of each other, while a
    swapped sin/cos column or a shifted frequency would differ by O(1).
    """
    seq_len = 8
    table_olm = _olm_forward(
        _olm_sinusoidal(embed_dim, 16).eval(), np.zeros((1, seq_len, embed_dim), np.float32), None
    )[0]
    table_xp = SinusoidalPositionalEmbedding(embed_dim, 16).eval()(
        np.zeros((1, seq_len, embed_dim), np.float32)
    )[0]
    np.testing.assert_allclose(table_xp, table_olm, rtol=0, atol=16 * EPS32)
    # Position 0: sin(0) = 0 in the even columns, cos(0) = 1 in the odd ones, exactly.
    expected_row0 = (np.arange(embed_dim) % 2).astype(np.float32)
    np.testing.assert_array_equal(table_olm[0], expected_row0)
    np.testing.assert_array_equal(table_xp[0], expected_row0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("embed_dim", [8, 64, 65])
def test_sinusoidal_more_accurate_than_olm_at_large_positions(backend: str, embed_dim: int) -> None:
    """Difference from olm: olm_xp is correctly rounded; olm's float32 angle drifts with p.

    In olm's default 5000-row table, positions 4000..4999 are compared with the float64
    reference: olm_xp is within half a float32 ulp (+ the reference's own float64 error)
    everywhere; olm is within its derived angle bound but ~1400-8500 times worse.
    """
    lo, hi = 4000, 5000
    positions = np.arange(lo, hi, dtype=np.int64)[None, :]
    zeros = np.zeros((1, hi - lo, embed_dim), np.float32)  # x = 0, so the output is pe exactly
    table_olm = _olm_forward(_olm_sinusoidal(embed_dim, 5000).eval(), zeros, positions)[0]
    mine = SinusoidalPositionalEmbedding(embed_dim).eval()
    table_xp = _to_numpy(_xp_forward(mine, zeros, positions, backend))[0]
    ref = sinusoidal_reference(positions[0], embed_dim)

    err_xp = np.abs(table_xp.astype(np.float64) - ref)
    err_olm = np.abs(table_olm.astype(np.float64) - ref)
    # olm_xp: one rounding of a float64 value, so <= half an ulp of the exact value (the
    # float64 sin/cos of angles < 5000 are themselves good to ~1e-12, hence the 1e-12 slack).
    assert np.all(err_xp <= 0.5 * _ulp32(ref) + 1e-12), err_xp.max()
    assert err_xp.max() <= EPS32 / 2 + 1e-12
    # olm: inside its own error model (angle bound + 1-ulp sin/cos)...
    assert np.all(err_olm <= _olm_angle_error_bound(positions[0], embed_dim, 1e4) + 2 * EPS32)
    # ... and far from correctly rounded: > 100x olm_xp's worst error (measured max errors:
    # olm 4.3e-5 / 1.7e-4 / 2.5e-4 for D = 8 / 64 / 65, olm_xp 2.98e-8 = 2**-25 for all).
    assert err_olm.max() > 100 * err_xp.max()


# -- 3. Dropout ---------------------------------------------------------------------------
def _dropout_modules(kind: str, embed_dim: int, p: float, backend: str) -> tuple[Any, Any]:
    if kind == "absolute":
        return _absolute_pair(16, embed_dim, backend, dropout=p)
    ref = olm_positional.SinusoidalPositionalEmbedding(embed_dim, 16, dropout=p).eval()
    return ref, SinusoidalPositionalEmbedding(embed_dim, 16, dropout=p, seed=5).eval()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["absolute", "sinusoidal"])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_is_identity_in_eval_mode(backend: str, kind: str, p: float) -> None:
    embed_dim, seq_len = 6, 10
    ref, mine = _dropout_modules(kind, embed_dim, p, backend)
    x = np.random.default_rng(0).standard_normal((BATCH, seq_len, embed_dim)).astype(np.float32)
    expected = _olm_forward(ref, x, None)
    got = _to_numpy(_xp_forward(mine, x, None, backend))
    if kind == "absolute":
        np.testing.assert_array_equal(got, expected)  # exact, as in the no-dropout test
    else:
        tol = _sinusoidal_tolerance(
            np.broadcast_to(np.arange(seq_len), (BATCH, seq_len)), embed_dim, 1e4, expected, got
        )
        assert np.all(np.abs(got.astype(np.float64) - expected) <= tol)
    # Calling again gives the same numbers: no randomness in eval mode.
    np.testing.assert_array_equal(_to_numpy(_xp_forward(mine, x, None, backend)), got)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["absolute", "sinusoidal"])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_in_training_mode_is_olms_inverted_dropout_of_the_sum(
    backend: str, kind: str, p: float
) -> None:
    """Each element is 0 or (x + pe) / (1 - p), as olm's ``nn.Dropout`` applied to x + pe.

    The surviving value is computed as fl32(fl32(x + pe) * fl32(1 / (1 - p))) by both (torch's
    dropout scales by a float32 1/(1-p)); the check is exact for olm_xp and olm alike, with
    ``x + pe`` taken from each library's own eval-mode output.
    """
    embed_dim, seq_len = 6, 16
    ref, mine = _dropout_modules(kind, embed_dim, p, backend)
    x = np.random.default_rng(1).standard_normal((BATCH, seq_len, embed_dim)).astype(np.float32)
    scale = np.float32(1.0 / (1.0 - p))

    for module, forward in (
        (ref, lambda m: _olm_forward(m, x, None)),
        (mine, lambda m: _to_numpy(_xp_forward(m, x, None, backend))),
    ):
        module.eval()
        total = forward(module)
        module.train()
        torch.manual_seed(0)  # olm's dropout stream; olm_xp uses its own seeded stream
        dropped = forward(module)
        module.eval()
        kept = dropped != 0
        assert np.all(dropped[~kept] == 0)
        np.testing.assert_array_equal(dropped[kept], (total * scale)[kept])
        # Some, but not all, elements dropped (288 draws: vanishing chance to fail by luck).
        assert 0 < np.count_nonzero(~kept) < kept.size


# -- 4. Positions beyond max_seq_len ----------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("embed_dim", [7, 8])
def test_sinusoidal_positions_beyond_max_seq_len(backend: str, embed_dim: int) -> None:
    """olm indexes its fixed buffer (IndexError); olm_xp extends the table, correctly rounded."""
    max_seq_len, seq_len = 16, 5
    positions = np.array([[0, 15, 16, 100, 4321]] * BATCH, dtype=np.int64)
    zeros = np.zeros((BATCH, seq_len, embed_dim), np.float32)
    with pytest.raises(IndexError):
        _olm_forward(_olm_sinusoidal(embed_dim, max_seq_len).eval(), zeros, positions)

    mine = SinusoidalPositionalEmbedding(embed_dim, max_seq_len).eval()
    got = _to_numpy(_xp_forward(mine, zeros, positions, backend)).astype(np.float64)
    ref = sinusoidal_reference(positions, embed_dim)
    assert np.all(np.abs(got - ref) <= 0.5 * _ulp32(ref) + 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_absolute_positions_beyond_max_seq_len_raise(backend: str) -> None:
    max_seq_len, embed_dim, seq_len = 8, 4, 3
    ref, mine = _absolute_pair(max_seq_len, embed_dim, backend)
    x = np.zeros((BATCH, seq_len, embed_dim), np.float32)
    positions = np.array([[0, 1, max_seq_len]] * BATCH, dtype=np.int64)
    with pytest.raises(IndexError):  # olm: nn.Embedding's out-of-range lookup
        _olm_forward(ref, x, positions)
    with pytest.raises(ValueError, match=rf"seq_positions.*max_seq_len={max_seq_len}"):
        _xp_forward(mine, x, positions, backend)

    # A sequence longer than the table without positions: both raise ValueError.
    long_x = np.zeros((1, max_seq_len + 1, embed_dim), np.float32)
    with pytest.raises(ValueError, match="max_seq_len"):
        _olm_forward(ref, long_x, None)
    with pytest.raises(ValueError, match="max_seq_len"):
        _xp_forward(mine, long_x, None, backend)
