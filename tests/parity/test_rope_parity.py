"""RoPE parity with the real olm (interleaved layout) and with Hugging Face (half-split layout).

What is proved here (float32 inputs, CPU):

* olm (``openlanguagemodel``), on NumPy and on torch: ``RotaryPositionalEmbedding``,
  ``PartialRotaryPositionalEmbedding`` (odd ``int(head_dim * pct)`` rounded down like olm, the
  pass-through tail bit-exact), ``ScaledRotaryPositionalEmbedding`` and
  ``PartialScaledRotaryPositionalEmbedding`` with ``linear`` and ``ntk`` scaling, and
  ``Llama3RotaryPositionalEmbedding`` with every parameter passed explicitly (olm's own set and
  Meta's Llama 3.1 set) agree with olm up to olm's float32 error, whose bound is derived below,
  without positions and with ``(batch, seq)`` positions. At positions near 4000 olm_xp is within
  a few float32 ulp of an exact float64 rotation, olm is not (olm's angle error grows with p).
* Hugging Face ``transformers`` 5.x: ``RotaryPositionalEmbedding.from_hf`` equals a fresh
  ``LlamaRotaryEmbedding`` (``GPTNeoXRotaryEmbedding`` for partial rotary) followed by HF's
  ``apply_rotary_pos_emb`` on q and k of shape ``(batch, heads, seq, head_dim)``, for
  ``default``, ``linear``, ``dynamic`` (below and above ``max_position_embeddings``), ``yarn``
  (attention factor explicit or derived, ``mscale``/``mscale_all_dim``, ``truncate``, betas),
  ``longrope`` (both factor tables, attention factor explicit or derived, factor given or
  derived), ``llama3`` and ``partial_rotary_factor`` with ``default`` and ``yarn``; the attention
  factors are equal and ``rope_inverse_frequencies`` matches HF's ``ROPE_INIT_FUNCTIONS``.
* ``from_hf`` accepts the real-world shapes of HF rope dicts: legacy ``type``, no
  ``rope_theta``, a dict already standardized by a config (``type`` and ``rope_type``),
  ``factor: None`` (yarn/longrope), ``beta_*: None``, no ``original_max_position_embeddings``,
  and an ``original_max_position_embeddings`` on ``dynamic`` (which HF ignores).

Tolerances. Let u = 2**-24 (float32 unit roundoff) and, for pair ``i`` of a rotary dim ``d``,
``e_i = 2i/d`` and ``a_i = e_i * ln(base)``. olm and HF compute ``w_i = 1/base**e_i`` in float32:
the rounded exponent costs a relative ``a_i u`` (zero when ``d`` is a power of two), ``pow`` at
most 1 ulp (2u), the reciprocal u; every variant's further float32 steps add a few u (counted
in ``_olm_frequency_error``/``_hf_frequency_error``). The angle ``fl(p * w_i)`` adds u, so
|angle error| <= |p| * (|dw_i| + w_i u): it grows with the position. sin and cos are
1-Lipschitz, float32 sin/cos add <= 1 ulp (<= 2u), olm_xp's tables are rounded once from float64
(<= u/2), and each side's two products and one sum add <= 2u (|x_a| + |x_b|); so each rotated
element of a pair (x_a, x_b) differs by at most ``A (|x_a| + |x_b|) (angle error + 8u)`` where A
is the attention factor (HF's ``cos * A`` rounding is inside the 8u). Pass-through features
are compared bit for bit. The measured max differences are printed (``pytest -s``) with the
largest ratio to the bound.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Any

import numpy as np
import pytest

olm = pytest.importorskip("olm")
torch = pytest.importorskip("torch")
olm_positional = pytest.importorskip("olm.nn.embeddings.positional")
transformers = pytest.importorskip("transformers")
hf_rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
hf_llama = pytest.importorskip("transformers.models.llama.modeling_llama")
hf_neox = pytest.importorskip("transformers.models.gpt_neox.modeling_gpt_neox")

from olm_xp import rope_inverse_frequencies  # noqa: E402 - after the importorskip guards
from olm_xp.nn.embeddings.positional import (  # noqa: E402
    Llama3RotaryPositionalEmbedding,
    PartialRotaryPositionalEmbedding,
    PartialScaledRotaryPositionalEmbedding,
    RotaryPositionalEmbedding,
    ScaledRotaryPositionalEmbedding,
)
from olm_xp.reference import rope_frequencies_reference  # noqa: E402

pytestmark = pytest.mark.parity

EPS32 = 2.0**-24  # float32 unit roundoff: half an ulp of 1
ROUNDING = 8.0  # sin/cos, table and product/sum roundings of both sides, in units of u
BATCH = 2
HEADS = 3
BACKENDS = ["numpy", "torch"]


# -- helpers --------------------------------------------------------------------------------
def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _as_backend(a: np.ndarray | None, backend: str) -> Any:
    if a is None:
        return None
    return torch.from_numpy(np.array(a)) if backend == "torch" else np.array(a)


def _xp_forward(module: Any, x: np.ndarray, positions: np.ndarray | None, backend: str) -> Any:
    out = module(_as_backend(x, backend), _as_backend(positions, backend))
    if backend == "torch":
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.float32
    else:
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.float32
    return _to_numpy(out)


def _olm_forward(module: Any, x: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        pos = None if positions is None else torch.from_numpy(np.array(positions))
        return module(torch.from_numpy(np.array(x)), pos).numpy()


def _seed(*labels: str) -> int:
    return zlib.crc32(" ".join(labels).encode())


def _exponents(d: int) -> np.ndarray:
    return np.arange(0, d, 2, dtype=np.float64) / d


def _pair_magnitudes(x: np.ndarray, rotary_dim: int, interleaved: bool) -> np.ndarray:
    """``|x_a| + |x_b|`` of the pair each rotated feature belongs to, shape ``x[..., :d]``."""
    j = np.arange(rotary_dim)
    half = rotary_dim // 2
    partner = j ^ 1 if interleaved else (j + half) % rotary_dim
    ax = np.abs(x[..., :rotary_dim].astype(np.float64))
    return ax + ax[..., partner]


def _rope_tolerance(
    x: np.ndarray,
    positions: np.ndarray,
    w_eff: np.ndarray,
    freq_error: np.ndarray,
    *,
    interleaved: bool,
    seq_axis: int,
    amplitude: float = 1.0,
) -> np.ndarray:
    """Bound on |other - olm_xp| for the rotated features of ``x`` (see the module docstring).

    ``positions`` is ``(batch, seq)``; ``w_eff`` the exact frequencies; ``freq_error`` a bound on
    |the other side's float32 frequency - w_eff|, per pair.
    """
    d = 2 * w_eff.shape[0]
    p = np.abs(positions.astype(np.float64))[..., None]  # (B, S, 1)
    angle = p * (freq_error + w_eff * EPS32)  # (B, S, d/2)
    pair = np.arange(d) // 2 if interleaved else np.arange(d) % (d // 2)
    angle = angle[..., pair]  # (B, S, d)
    angle = angle[:, :, None, :] if seq_axis == 1 else angle[:, None, :, :]
    mags = _pair_magnitudes(x, d, interleaved)
    return amplitude * mags * (angle + ROUNDING * EPS32)


def _check_close(
    label: str, got: np.ndarray, expected: np.ndarray, tol: np.ndarray, rotary_dim: int
) -> tuple[float, float]:
    """Rotated features within ``tol``; pass-through features bit-exact. Returns the max diff
    and the max diff/bound ratio (printed for the report)."""
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(got[..., rotary_dim:], expected[..., rotary_dim:])
    diff = np.abs(got[..., :rotary_dim].astype(np.float64) - expected[..., :rotary_dim])
    worst = np.unravel_index(np.argmax(diff - tol), diff.shape)
    assert np.all(diff <= tol), (
        f"{label}: |diff| = {diff[worst]:.3g} > bound {tol[worst]:.3g} at {worst}"
    )
    ratio = float(np.max(diff / tol))
    print(f"[{label}] max|diff| = {diff.max():.3g}, max diff/bound = {ratio:.3f}")
    return float(diff.max()), ratio


def _random_positions(rng: np.random.Generator, batch: int, seq_len: int, high: int) -> np.ndarray:
    pos = rng.integers(0, high, size=(batch, seq_len)).astype(np.int64)
    pos[0, -1] = high - 1  # always hit the largest position
    return pos


def _llama3_band_kappa(
    d: int, base: float, factor: float, original: float, low: float, high: float
) -> np.ndarray:
    """|dw_i| / (w_base_i u) for a float32 Llama 3.1 frequency (olm's and HF's code alike).

    Outside the blend band the frequency is ``w`` or ``w/factor``: a + 3 (w) + 1 (/factor) + 1
    (the wavelength comparison cannot flip a pair: the blend is continuous at both edges).
    Inside, ``smooth = (L0/lambda - low)/(high - low)`` inherits the relative error of
    ``lambda = 2 pi / w`` (a + 5) amplified by ``(L0/lambda)/(high - low) <= high/(high - low)``
    plus 2 roundings, and ``(1 - s) w/f + s w`` moves by ``w (1 - 1/f) ds <= w ds``; the blend's
    own 4 roundings and w's error add a + 7.
    """
    a = _exponents(d) * math.log(base)
    w = base ** -_exponents(d)
    wavelength = 2 * math.pi / w
    band = (wavelength >= original / high * (1 - 1e-3)) & (
        wavelength <= original / low * (1 + 1e-3)
    )
    blend = a + 7 + high / (high - low) * (a + 7)
    return np.where(band, blend, a + 5)


# -- 1. olm parity (interleaved) ----------------------------------------------------------------
OLM_MAX_SEQ_LEN = 4096


def _olm_frequency_error(kind: str, d: int, base: float, params: dict[str, Any]) -> np.ndarray:
    """Bound on |olm's float32 frequency (angle / p) - exact|, per pair, absolute.

    default: a + 3 (exponent, pow, reciprocal); linear: olm divides the *positions* by the
    factor in float32, one more u relative to ``w/factor``; ntk: the adjusted base is rounded to
    float32 (relative u, raised to e <= 1) on top of default with ``a`` of the adjusted base;
    llama3: see ``_llama3_band_kappa``, relative to the unscaled ``w``.
    """
    e = _exponents(d)
    if kind == "default":
        return base**-e * (e * math.log(base) + 3) * EPS32
    if kind == "linear":
        return base**-e / params["factor"] * (e * math.log(base) + 4) * EPS32
    if kind == "ntk":
        adjusted = base * params["factor"] ** (d / (d - 2))
        return adjusted**-e * (e * math.log(adjusted) + 4) * EPS32
    kappa = _llama3_band_kappa(
        d, base, params["factor"], params["original"], params["low"], params["high"]
    )
    return base**-e * kappa * EPS32


# (id, kind, head_dim, rotary_dim, base, params, olm factory, olm_xp factory)
def _olm_cases() -> list[tuple[str, str, int, int, float, dict[str, Any], Any, Any]]:
    n = OLM_MAX_SEQ_LEN
    cases: list[tuple[str, str, int, int, float, dict[str, Any], Any, Any]] = []
    for head_dim, base in [(16, 10000.0), (64, 10000.0), (96, 1e6), (128, 500000.0)]:
        cases.append(
            (
                f"rope-d{head_dim}-b{base:g}",
                "default",
                head_dim,
                head_dim,
                base,
                {},
                functools.partial(olm_positional.RotaryPositionalEmbedding, head_dim, n, base),
                functools.partial(RotaryPositionalEmbedding, head_dim, n, base),
            )
        )
    # (head_dim, pct, olm's rotary dim): 20*0.25 = 5, 64*0.3 = 19.2, 10*0.7 = 7.000000000000001
    # and 21*0.5 = 10.5 give odd or fractional products that olm rounds down to even.
    for head_dim, pct, rotary_dim in [
        (64, 0.5, 32),
        (20, 0.25, 4),
        (64, 0.3, 18),
        (10, 0.7, 6),
        (21, 0.5, 10),
        (32, 1.0, 32),
    ]:
        cases.append(
            (
                f"partial-d{head_dim}-p{pct}",
                "default",
                head_dim,
                rotary_dim,
                10000.0,
                {},
                functools.partial(
                    olm_positional.PartialRotaryPositionalEmbedding, head_dim, pct, 10000.0, n
                ),
                functools.partial(PartialRotaryPositionalEmbedding, head_dim, pct, 10000.0, n),
            )
        )
    for scaling, factors in [("linear", [2.0, 3.0, 4.0]), ("ntk", [2.0, 4.0, 8.0])]:
        for factor in factors:
            args = (64, n, 10000.0, scaling, factor)
            cases.append(
                (
                    f"scaled-{scaling}-f{factor:g}",
                    scaling,
                    64,
                    64,
                    10000.0,
                    {"factor": factor},
                    functools.partial(olm_positional.ScaledRotaryPositionalEmbedding, *args),
                    functools.partial(ScaledRotaryPositionalEmbedding, *args),
                )
            )
    for scaling, head_dim, pct, rotary_dim, factor in [
        ("linear", 64, 0.5, 32, 2.0),
        ("linear", 20, 0.25, 4, 3.0),
        ("ntk", 64, 0.5, 32, 4.0),
        ("ntk", 48, 0.3, 14, 2.0),
    ]:
        args = (head_dim, pct, n, 10000.0, scaling, factor)
        cases.append(
            (
                f"partial-scaled-{scaling}-d{head_dim}-p{pct}-f{factor:g}",
                scaling,
                head_dim,
                rotary_dim,
                10000.0,
                {"factor": factor},
                functools.partial(olm_positional.PartialScaledRotaryPositionalEmbedding, *args),
                functools.partial(PartialScaledRotaryPositionalEmbedding, *args),
            )
        )
    # Llama 3: every parameter explicit on both sides (the two libraries' defaults differ).
    for label, head_dim, base, factor, original, low, high in [
        ("olm-set", 64, 10000.0, 2.0, 131072, 1.0, 32.0),
        ("meta-set", 128, 500000.0, 8.0, 8192, 1.0, 4.0),
    ]:
        kwargs = {
            "max_seq_len": n,
            "base": base,
            "factor": factor,
            "original_max_seq_len": original,
            "low_freq_factor": low,
            "high_freq_factor": high,
        }
        params = {"factor": factor, "original": original, "low": low, "high": high}
        cases.append(
            (
                f"llama3-{label}",
                "llama3",
                head_dim,
                head_dim,
                base,
                params,
                functools.partial(
                    olm_positional.Llama3RotaryPositionalEmbedding, head_dim, **kwargs
                ),
                functools.partial(Llama3RotaryPositionalEmbedding, head_dim, **kwargs),
            )
        )
    return cases


OLM_CASES = _olm_cases()


@functools.cache
def _olm_module(case_id: str) -> Any:
    (case,) = [c for c in OLM_CASES if c[0] == case_id]
    return case[6]().eval()


def _exact_frequencies(kind: str, d: int, base: float, params: dict[str, Any]) -> np.ndarray:
    """Float64 frequencies straight from the formulas (independent of olm_xp and olm)."""
    w = 1.0 / base ** _exponents(d)
    if kind == "default":
        return w
    if kind == "linear":
        return w / params["factor"]
    if kind == "ntk":
        return 1.0 / (base * params["factor"] ** (d / (d - 2))) ** _exponents(d)
    factor, original, low, high = (params[k] for k in ("factor", "original", "low", "high"))
    wavelength = 2 * math.pi / w
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * w / factor + smooth * w
    scaled = np.where(wavelength > original / low, w / factor, blended)
    return np.where(wavelength < original / high, w, scaled)


def _exact_rotation(
    x: np.ndarray, positions: np.ndarray, w: np.ndarray, *, interleaved: bool
) -> np.ndarray:
    """Float64 RoPE of ``x`` ``(B, S, H, D)``, pairs interleaved or half-split."""
    x = x.astype(np.float64)
    d = 2 * w.shape[0]
    angle = positions.astype(np.float64)[..., None, None] * w  # (B, S, 1, d/2)
    c, s = np.cos(angle), np.sin(angle)
    out = x.copy()
    if interleaved:
        a, b = x[..., 0:d:2], x[..., 1:d:2]
        out[..., 0:d:2], out[..., 1:d:2] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., : d // 2], x[..., d // 2 : d]
        out[..., : d // 2], out[..., d // 2 : d] = a * c - b * s, a * s + b * c
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["none", "batch_seq"])
@pytest.mark.parametrize("case_id", [c[0] for c in OLM_CASES])
def test_rope_matches_olm(case_id: str, mode: str, backend: str) -> None:
    (case,) = [c for c in OLM_CASES if c[0] == case_id]
    _, kind, head_dim, rotary_dim, base, params, _, make_mine = case
    ref = _olm_module(case_id)
    mine = make_mine()
    assert getattr(ref, "rotary_dim", head_dim) == mine.rotary_dim == rotary_dim
    assert mine.interleaved is True

    rng = np.random.default_rng(_seed(case_id))
    seq_len = 16 if mode == "none" else 40
    x = rng.standard_normal((BATCH, seq_len, HEADS, head_dim)).astype(np.float32)
    if mode == "none":
        pos = None
        effective = np.broadcast_to(np.arange(seq_len), (BATCH, seq_len))
    else:
        pos = effective = _random_positions(rng, BATCH, seq_len, OLM_MAX_SEQ_LEN)

    expected = _olm_forward(ref, x, pos)
    got = _xp_forward(mine, x, pos, backend)
    w_eff = _exact_frequencies(kind, rotary_dim, base, params)
    tol = _rope_tolerance(
        x,
        effective,
        w_eff,
        _olm_frequency_error(kind, rotary_dim, base, params),
        interleaved=True,
        seq_axis=1,
    )
    _check_close(f"olm {case_id} {mode} {backend}", got, expected, tol, rotary_dim)
    # The pass-through tail is the input, bit for bit (checked against olm above, and here).
    np.testing.assert_array_equal(got[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case_id",
    [
        "rope-d64-b10000",
        "rope-d128-b500000",
        "partial-d64-p0.3",
        "scaled-linear-f3",
        "scaled-ntk-f4",
        "partial-scaled-ntk-d64-p0.5-f4",
        "llama3-olm-set",
        "llama3-meta-set",
    ],
)
def test_rope_more_accurate_than_olm_at_large_positions(case_id: str, backend: str) -> None:
    """Difference from olm: olm_xp's angles are float64, olm's float32 angles drift with p.

    Positions 4000..4095 of olm's 4096-row table, x upcast to float64 and rotated with float64
    frequencies from the formulas: olm_xp's error is its final float32 rotation only (<= 3u per
    unit of pair magnitude: tables u/2, two products and a sum), olm's is dominated by its angle
    error and is far larger.
    """
    (case,) = [c for c in OLM_CASES if c[0] == case_id]
    _, kind, head_dim, rotary_dim, base, params, _, make_mine = case
    rng = np.random.default_rng(7)
    positions = np.arange(4000, OLM_MAX_SEQ_LEN, dtype=np.int64)[None, :]
    x = rng.standard_normal((1, positions.shape[1], HEADS, head_dim)).astype(np.float32)
    w = _exact_frequencies(kind, rotary_dim, base, params)
    exact = _exact_rotation(x[..., :rotary_dim], positions, w, interleaved=True)

    got = _xp_forward(make_mine(), x, positions, backend)[..., :rotary_dim]
    olm_out = _olm_forward(_olm_module(case_id), x, positions)[..., :rotary_dim]
    err_xp = np.abs(got - exact)
    err_olm = np.abs(olm_out - exact)
    mags = _pair_magnitudes(x, rotary_dim, interleaved=True)
    assert np.all(err_xp <= 3 * EPS32 * mags), (err_xp / (EPS32 * mags)).max()
    print(
        f"[vs float64 {case_id} {backend}] max err olm_xp = {err_xp.max():.3g}, "
        f"olm = {err_olm.max():.3g} ({err_olm.max() / err_xp.max():.0f}x)"
    )
    assert err_olm.max() > 10 * err_xp.max()


def test_partial_rounds_odd_rotary_dims_down_like_olm() -> None:
    for head_dim, pct, expected in [(20, 0.25, 4), (64, 0.3, 18), (10, 0.7, 6), (21, 0.5, 10)]:
        ref = olm_positional.PartialRotaryPositionalEmbedding(head_dim, pct, max_seq_len=4)
        assert ref.rotary_dim == expected
        assert PartialRotaryPositionalEmbedding(head_dim, pct).rotary_dim == expected
        assert PartialScaledRotaryPositionalEmbedding(head_dim, pct).rotary_dim == expected


# -- 2. Hugging Face parity (half-split) ------------------------------------------------------
def _hf_config(
    head_dim: int, max_position_embeddings: int, rope_parameters: dict[str, Any], arch: str
) -> Any:
    """A small HF config; ``rope_parameters`` is copied (HF standardizes the dict in place)."""
    params = {k: (list(v) if isinstance(v, list) else v) for k, v in rope_parameters.items()}
    if arch == "neox":  # partial rotary: GPT-NeoX derives head_dim = hidden / heads
        return transformers.GPTNeoXConfig(
            hidden_size=head_dim * 4,
            num_attention_heads=4,
            max_position_embeddings=max_position_embeddings,
            rope_parameters=params,
        )
    return transformers.LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=params,
    )


def _hf_rotary(config: Any, arch: str) -> Any:
    if arch == "neox":
        return hf_neox.GPTNeoXRotaryEmbedding(config)
    return hf_llama.LlamaRotaryEmbedding(config)


def _hf_apply(
    q: np.ndarray, k: np.ndarray, positions: np.ndarray, config: Any, arch: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """HF's rotation of q and k ``(B, H, S, D)``: a FRESH rotary module per call, because HF's
    dynamic and longrope modules keep state across calls (``max_seq_len_cached``, the swapped
    ``inv_freq``). olm_xp is stateless by design: its frequencies follow each call's positions."""
    rotary = _hf_rotary(config, arch)
    qt, kt = torch.from_numpy(q), torch.from_numpy(k)
    with torch.no_grad():
        cos, sin = rotary(qt, torch.from_numpy(positions))
        apply = hf_neox.apply_rotary_pos_emb if arch == "neox" else hf_llama.apply_rotary_pos_emb
        q_out, k_out = apply(qt, kt, cos, sin)
    return q_out.numpy(), k_out.numpy(), float(rotary.attention_scaling)


def _hf_frequency_error(
    rope_type: str, d: int, base: float, params: dict[str, Any], length: int, max_pos: int
) -> np.ndarray:
    """Bound on |HF's float32 frequency - exact|, per pair, absolute (see the module docstring).

    default: a + 3; linear: ``inv_freq /= factor`` adds u; longrope: the factor list rounded to
    float32, a product and a reciprocal: a + 5; dynamic beyond ``max_position_embeddings``: HF
    computes the grown base from a tensor length in float32 -- ``f L/L0 - (f - 1)`` has relative
    error <= (2f + 1)u (the subtraction amplifies by at most f), the power d/(d-2) <= 2 and base*
    add 3u -- which reaches w as e_i (2f + 6)u; yarn: extrapolation/interpolation (a + 4), the
    blend's 4 roundings, and the float32 ramp's error times |w - w/f| <= w where 0 < ramp < 1.
    """
    e = _exponents(d)
    a = e * math.log(base)
    w = base**-e
    if rope_type == "default":
        return w * (a + 3) * EPS32
    if rope_type == "linear":
        return w / params["factor"] * (a + 4) * EPS32
    if rope_type == "longrope":
        original = params["original_max_position_embeddings"]
        table = params["long_factor"] if length > original else params["short_factor"]
        return w / np.asarray(table) * (a + 5) * EPS32
    if rope_type == "dynamic":
        if length <= max_pos:
            return w * (a + 3) * EPS32
        f = params["factor"]
        grown = base * (f * length / max_pos - (f - 1)) ** (d / (d - 2))
        return grown**-e * (e * math.log(grown) + 3 + (2 * f + 6) * e) * EPS32
    if rope_type == "yarn":
        low, high = _yarn_range(d, base, params)
        i = np.arange(d // 2, dtype=np.float64)
        ramp = (i - low) / (high - low)
        ramp_error = (abs(low) + 2 * np.abs(i - low) + 2 * (high - low)) / (high - low)
        ramp_error = np.where((ramp > -0.01) & (ramp < 1.01), ramp_error, 0.0)
        return w * (a + 8 + ramp_error) * EPS32
    assert rope_type == "llama3"
    kappa = _llama3_band_kappa(
        d,
        base,
        params["factor"],
        params["original_max_position_embeddings"],
        params["low_freq_factor"],
        params["high_freq_factor"],
    )
    return w * kappa * EPS32


def _yarn_range(d: int, base: float, params: dict[str, Any]) -> tuple[float, float]:
    original = params["original_max_position_embeddings"]

    def correction(rotations: float) -> float:
        return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = correction(params.get("beta_fast") or 32)
    high = correction(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    return low, (high + 0.001 if low == high else high)


def _longrope_lists(pairs: int, seed: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    short = [float(v) for v in rng.uniform(1.0, 1.5, pairs)]
    long = [float(v) for v in rng.uniform(1.0, 8.0, pairs)]
    return short, long


_SHORT16, _LONG16 = _longrope_lists(16, 0)
_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}

# (id, arch, head_dim, max_position_embeddings, rope_parameters, position specs)
# A position spec (seq_len, high) draws (batch, seq) positions below ``high`` (hitting
# high - 1); (seq_len, None) means no positions (olm_xp) / arange(seq_len) (HF).
HF_CASES: list[tuple[str, str, int, int, dict[str, Any], list[tuple[int, int | None]]]] = [
    (
        "default",
        "llama",
        64,
        4096,
        {"rope_type": "default", "rope_theta": 10000.0},
        [(16, None), (40, 4096)],
    ),
    (
        "default-b5e5-d128",
        "llama",
        128,
        8192,
        {"rope_type": "default", "rope_theta": 500000.0},
        [(16, None), (40, 8192)],
    ),
    (
        "linear-f2",
        "llama",
        64,
        4096,
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        [(16, None), (40, 4096)],
    ),
    (
        "linear-f4",
        "llama",
        64,
        4096,
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        [(40, 4096)],
    ),
    (
        "linear-f3",
        "llama",
        32,
        4096,
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 3.0},
        [(40, 4096)],
    ),
    (
        "dynamic-f2",
        "llama",
        64,
        256,
        {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        [(16, None), (300, None), (32, 200), (32, 256), (32, 257), (48, 700), (64, 768)],
    ),
    (
        "dynamic-f4-d32",
        "llama",
        32,
        256,
        {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
        [(32, 100), (48, 768)],
    ),
    (
        "yarn-f4",
        "llama",
        64,
        256,
        {**_YARN, "original_max_position_embeddings": 64},
        [(16, None), (40, 1024)],
    ),
    (
        "yarn-f4-attention_factor",
        "llama",
        64,
        256,
        {**_YARN, "original_max_position_embeddings": 64, "attention_factor": 1.3},
        [(40, 1024)],
    ),
    (
        "yarn-f4-mscale-equal",
        "llama",
        64,
        256,
        {
            **_YARN,
            "original_max_position_embeddings": 64,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
        },
        [(40, 1024)],
    ),
    (
        "yarn-f4-mscale-different",
        "llama",
        64,
        256,
        {**_YARN, "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 0.5},
        [(40, 1024)],
    ),
    (
        "yarn-f4-no-truncate",
        "llama",
        64,
        256,
        {**_YARN, "original_max_position_embeddings": 64, "truncate": False},
        [(40, 1024)],
    ),
    (
        "yarn-f4-betas",
        "llama",
        64,
        256,
        {
            **_YARN,
            "original_max_position_embeddings": 64,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
            "truncate": False,
        },
        [(40, 1024)],
    ),
    (
        "yarn-deepseek-like",
        "llama",
        64,
        163840,
        {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 40.0,
            "original_max_position_embeddings": 4096,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "beta_fast": 32,
            "beta_slow": 1,
        },
        [(40, 16384)],
    ),
    (
        "longrope-factor-derived",
        "llama",
        32,
        256,
        {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": _SHORT16,
            "long_factor": _LONG16,
            "original_max_position_embeddings": 64,
        },
        [(16, None), (32, 50), (32, 64), (32, 65), (40, 200), (100, None)],
    ),
    (
        "longrope-factor-given",
        "llama",
        32,
        256,
        {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": _SHORT16,
            "long_factor": _LONG16,
            "original_max_position_embeddings": 64,
            "factor": 8.0,
        },
        [(32, 64), (40, 200)],
    ),
    (
        "longrope-attention_factor",
        "llama",
        32,
        256,
        {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": _SHORT16,
            "long_factor": _LONG16,
            "original_max_position_embeddings": 64,
            "factor": 4.0,
            "attention_factor": 1.25,
        },
        [(32, 64), (40, 200)],
    ),
    (
        "llama3-meta",
        "llama",
        128,
        131072,
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        [(16, None), (40, 32768)],
    ),
    (
        "llama3-3.2-like",
        "llama",
        64,
        131072,
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        [(40, 32768)],
    ),
    (
        "partial-0.5-default",
        "neox",
        64,
        4096,
        {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        [(16, None), (40, 4096)],
    ),
    (
        "partial-0.25-default",
        "neox",
        64,
        4096,
        {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        [(40, 4096)],
    ),
    (
        "partial-0.5-yarn",
        "neox",
        64,
        256,
        {**_YARN, "original_max_position_embeddings": 64, "partial_rotary_factor": 0.5},
        [(16, None), (40, 1024)],
    ),
]


def _hf_case(case_id: str) -> tuple[str, str, int, int, dict[str, Any], list[Any]]:
    (case,) = [c for c in HF_CASES if c[0] == case_id]
    return case


def _our_params(
    rope_parameters: dict[str, Any], max_pos: int
) -> tuple[str, float, float, dict[str, Any]]:
    """(rope_type, base, partial_rotary_factor, HF-named parameters with the standardized
    defaults) for ``rope_inverse_frequencies`` and the tolerance model."""
    params = dict(rope_parameters)
    rope_type = params.pop("rope_type")
    base = params.pop("rope_theta")
    partial = params.pop("partial_rotary_factor", 1.0)
    if rope_type == "dynamic":
        params["original_max_position_embeddings"] = max_pos
    if rope_type in ("yarn", "longrope") and params.get("factor") is None:
        params["factor"] = max_pos / params["original_max_position_embeddings"]
    return rope_type, base, partial, params


def _hf_case_params(case_id: str) -> tuple[str, float, float, dict[str, Any]]:
    _, _, _, max_pos, rope_parameters, _ = _hf_case(case_id)
    return _our_params(rope_parameters, max_pos)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id", [c[0] for c in HF_CASES])
def test_from_hf_matches_hf_apply_rotary_pos_emb(case_id: str, backend: str) -> None:
    _, arch, head_dim, max_pos, rope_parameters, specs = _hf_case(case_id)
    config = _hf_config(head_dim, max_pos, rope_parameters, arch)
    mine = RotaryPositionalEmbedding.from_hf(
        rope_parameters, head_dim=head_dim, max_position_embeddings=max_pos, seq_axis=2
    )
    assert mine.interleaved is False
    rope_type, base, partial, params = _our_params(rope_parameters, max_pos)
    rotary_dim = int(head_dim * partial)
    assert mine.rotary_dim == rotary_dim

    rng = np.random.default_rng(_seed(case_id, backend))
    for seq_len, high in specs:
        shape = (BATCH, HEADS, seq_len, head_dim)
        q = rng.standard_normal(shape).astype(np.float32)
        k = rng.standard_normal(shape).astype(np.float32)
        if high is None:
            pos = None
            effective = np.array(np.broadcast_to(np.arange(seq_len), (BATCH, seq_len)))
        else:
            pos = effective = _random_positions(rng, BATCH, seq_len, high)
        hf_q, hf_k, attention = _hf_apply(q, k, effective, config, arch)
        got_q = _xp_forward(mine, q, pos, backend)
        got_k = _xp_forward(mine, k, pos, backend)

        length = int(effective.max()) + 1
        w_eff, _ = rope_frequencies_reference(rotary_dim, rope_type, base, seq_len=length, **params)
        error = _hf_frequency_error(rope_type, rotary_dim, base, params, length, max_pos)
        for name, x, got, expected in (("q", q, got_q, hf_q), ("k", k, got_k, hf_k)):
            tol = _rope_tolerance(
                x, effective, w_eff, error, interleaved=False, seq_axis=2, amplitude=attention
            )
            label = f"HF {case_id} {name} S={seq_len} max_p={length - 1} {backend}"
            _check_close(label, got, expected, tol, rotary_dim)


@pytest.mark.parametrize("case_id", [c[0] for c in HF_CASES])
def test_attention_factor_and_inverse_frequencies_match_hf(case_id: str) -> None:
    _, arch, head_dim, max_pos, rope_parameters, specs = _hf_case(case_id)
    config = _hf_config(head_dim, max_pos, rope_parameters, arch)
    rope_type, base, partial, params = _our_params(rope_parameters, max_pos)
    rotary_dim = int(head_dim * partial)
    mine = RotaryPositionalEmbedding.from_hf(
        rope_parameters, head_dim=head_dim, max_position_embeddings=max_pos
    )
    hf_attention = float(_hf_rotary(config, arch).attention_scaling)
    assert mine.attention_factor == pytest.approx(hf_attention, rel=1e-15, abs=0)

    lengths: list[int | None] = [None]
    if rope_type in ("dynamic", "longrope"):  # data-dependent: also at every tested length
        lengths += sorted({seq if high is None else high for seq, high in specs})
    for length in lengths:
        extra = {} if length is None else {"seq_len": length}
        if rope_type == "default":
            hf_freq, hf_factor = _hf_rotary(config, arch).compute_default_rope_parameters(config)
        else:
            init = hf_rope_utils.ROPE_INIT_FUNCTIONS[rope_type]
            hf_freq, hf_factor = init(config, torch.device("cpu"), **extra)
        ours, factor = rope_inverse_frequencies(
            rotary_dim, rope_type=rope_type, base=base, **{**params, **extra}
        )
        assert ours.dtype == np.float64
        assert ours.shape == (rotary_dim // 2,)
        # HF's frequencies are float32 (a few ulp from exact): ours rounded to float32 agree
        # to rtol 1e-6 (~17 u).
        np.testing.assert_allclose(ours, hf_freq.double().numpy(), rtol=1e-6, atol=0)
        assert factor == pytest.approx(float(hf_factor), rel=1e-15, abs=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id", ["default-b5e5-d128", "llama3-meta"])
def test_from_hf_more_accurate_than_hf_at_large_positions(case_id: str, backend: str) -> None:
    """Like olm, HF rotates with float32 angles; olm_xp stays within 3u of the float64 rotation."""
    _, arch, head_dim, max_pos, rope_parameters, _ = _hf_case(case_id)
    config = _hf_config(head_dim, max_pos, rope_parameters, arch)
    rope_type, base, _, params = _hf_case_params(case_id)
    mine = RotaryPositionalEmbedding.from_hf(
        rope_parameters, head_dim=head_dim, max_position_embeddings=max_pos, seq_axis=2
    )
    positions = np.arange(32000, 32064, dtype=np.int64)[None, :]
    rng = np.random.default_rng(11)
    q = rng.standard_normal((1, HEADS, positions.shape[1], head_dim)).astype(np.float32)
    w, _ = rope_frequencies_reference(head_dim, rope_type, base, **params)
    exact = np.swapaxes(
        _exact_rotation(np.swapaxes(q, 1, 2), positions, w, interleaved=False), 1, 2
    )
    hf_q, _, _ = _hf_apply(q, q, positions, config, arch)
    err_xp = np.abs(_xp_forward(mine, q, positions, backend) - exact)
    err_hf = np.abs(hf_q - exact)
    mags = _pair_magnitudes(q, head_dim, interleaved=False)
    assert np.all(err_xp <= 3 * EPS32 * mags)
    print(
        f"[vs float64 HF {case_id} {backend}] max err olm_xp = {err_xp.max():.3g}, "
        f"HF = {err_hf.max():.3g} ({err_hf.max() / err_xp.max():.0f}x)"
    )
    assert err_hf.max() > 10 * err_xp.max()


# -- 3. Real-world shapes of HF rope dicts -----------------------------------------------------
def _assert_from_hf_matches(
    rope_parameters: dict[str, Any],
    *,
    head_dim: int = 32,
    max_pos: int = 256,
    high: int = 600,
    arch: str = "llama",
) -> None:
    """from_hf(dict) rotates q like HF's config built from the same dict (one position draw
    beyond ``max_pos``; tolerance: the generic 64u per unit of p*w, generous for every variant
    here, plus rounding)."""
    config = _hf_config(head_dim, max_pos, rope_parameters, arch)
    mine = RotaryPositionalEmbedding.from_hf(
        dict(rope_parameters), head_dim=head_dim, max_position_embeddings=max_pos, seq_axis=2
    )
    rng = np.random.default_rng(3)
    q = rng.standard_normal((BATCH, HEADS, 24, head_dim)).astype(np.float32)
    positions = _random_positions(rng, BATCH, 24, high)
    hf_q, _, attention = _hf_apply(q, q, positions, config, arch)
    got = _xp_forward(mine, q, positions, "torch")
    assert mine.attention_factor == pytest.approx(attention, rel=1e-15, abs=0)
    d = mine.rotary_dim
    hf_w = _hf_rotary(config, arch).inv_freq.double().numpy()
    if mine.rope_type in ("dynamic", "longrope"):  # the frequencies HF used for these positions
        rotary = _hf_rotary(config, arch)
        rotary(torch.from_numpy(q), torch.from_numpy(positions))
        hf_w = rotary.inv_freq.double().numpy()
    tol = _rope_tolerance(
        q, positions, hf_w, 64 * EPS32 * hf_w, interleaved=False, seq_axis=2, amplitude=attention
    )
    _check_close(f"from_hf {rope_parameters}", got, hf_q, tol, d)


def test_from_hf_legacy_type_key_and_default_theta() -> None:
    # Llama-2-era rope_scaling: legacy "type", rope_theta absent (HF's default_theta, 10000).
    _assert_from_hf_matches({"type": "linear", "factor": 2.0})
    _assert_from_hf_matches({"type": "dynamic", "factor": 2.0})
    # Qwen2.5-style YaRN rope_scaling.
    _assert_from_hf_matches({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})


def test_from_hf_accepts_a_dict_standardized_by_hf() -> None:
    """A config's ``rope_parameters`` after HF standardization (``type`` and ``rope_type`` both
    present, ``rope_theta`` and ``original_max_position_embeddings`` filled in)."""
    for raw in (
        {"type": "yarn", "factor": 4.0},
        {"type": "linear", "factor": 2.0, "rope_theta": 5e5},
        {
            "type": "longrope",
            "short_factor": _SHORT16,
            "long_factor": _LONG16,
            "original_max_position_embeddings": 64,
        },
    ):
        standardized = _hf_config(32, 256, raw, "llama").rope_parameters
        assert "rope_type" in standardized
        assert "rope_theta" in standardized
        _assert_from_hf_matches(dict(standardized))


def test_from_hf_factor_none_is_derived_like_hf() -> None:
    # DeepSeek-/Phi-3-style: factor None -> max_position_embeddings / original.
    _assert_from_hf_matches(
        {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 64}
    )
    _assert_from_hf_matches(
        {
            "rope_type": "longrope",
            "factor": None,
            "short_factor": _SHORT16,
            "long_factor": _LONG16,
            "original_max_position_embeddings": 64,
        }
    )


def test_from_hf_yarn_optional_keys_none_and_missing_original() -> None:
    _assert_from_hf_matches(
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": None,
            "beta_slow": None,
            "attention_factor": None,
            "mscale": None,
            "mscale_all_dim": None,
        }
    )
    # No original_max_position_embeddings: HF's standardization uses max_position_embeddings.
    _assert_from_hf_matches({"rope_type": "yarn", "factor": 4.0})


def test_from_hf_dynamic_ignores_original_max_position_embeddings_like_hf() -> None:
    """HF's dynamic NTK grows from ``config.max_position_embeddings``; an
    ``original_max_position_embeddings`` key in the dict is not used by HF."""
    _assert_from_hf_matches(
        {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 128}
    )


def test_from_hf_llama3_missing_original_uses_max_position_embeddings_like_hf() -> None:
    """HF's standardization fills a missing llama3 ``original_max_position_embeddings`` with
    ``max_position_embeddings`` (here 4096), not with Meta's 8192."""
    _assert_from_hf_matches(
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        },
        head_dim=64,
        max_pos=4096,
        high=8000,
    )


def test_from_hf_rejects_types_hf_does_not_have_or_olm_xp_does_not_support() -> None:
    for rope_type in ("ntk", "proportional", "mrope", "bogus"):
        with pytest.raises(ValueError, match="rope_type"):
            RotaryPositionalEmbedding.from_hf(
                {"rope_type": rope_type, "factor": 2.0}, head_dim=32, max_position_embeddings=64
            )


def test_from_hf_odd_partial_rotary_dim_is_an_error() -> None:
    """HF rounds an odd ``int(head_dim * partial_rotary_factor)`` up (head_dim 20 x 0.25 = 5:
    3 frequencies with exponents over 5, 6 features rotated); olm_xp refuses loudly rather
    than rotate differently."""
    with pytest.raises(ValueError, match="even"):
        RotaryPositionalEmbedding.from_hf(
            {"rope_type": "default", "partial_rotary_factor": 0.25},
            head_dim=20,
            max_position_embeddings=64,
        )
