"""RoPE inverse frequencies for every scaling variant, with Hugging Face's names.

Each variant maps ``(rotary_dim, base, parameters)`` to ``(inv_freq, attention_factor)`` as
Hugging Face's ``ROPE_INIT_FUNCTIONS`` do: ``inv_freq`` has shape ``(rotary_dim // 2,)`` and
``attention_factor`` multiplies both cos and sin (so attention logits scale by its square).
The maths runs on the host in float64 (HF uses float32); the public function places the result.

Variants (parameter names as in HF's ``rope_parameters``):

===========  ================================================================================
default      ``w_i = base**(-2i/d)``
linear       position interpolation: ``w_i / factor``
ntk          static NTK-aware (bloc97): ``base * factor**(d/(d-2))``
dynamic      dynamic NTK (HF ``dynamic``): base grows with the current length ``seq_len``
yarn         YaRN (Peng et al. 2023): ramp between extrapolation and interpolation, mscale
longrope     LongRoPE / Phi-3: per-pair ``short_factor``/``long_factor``, by ``seq_len``
llama3       Llama 3.1 frequency bands (Meta's defaults: 8, 1, 4, 8192)
===========  ================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from olm_xp._compat import default_float_dtype, has_float64, resolve_namespace
from olm_xp._typing import Array, Device, DType
from olm_xp._validation import check_positive_int, check_positive_number

__all__ = ["ROPE_TYPES", "rope_inverse_frequencies"]

HostFrequencies = tuple[np.ndarray[Any, np.dtype[np.float64]], float]
"""Float64 ``inv_freq`` of shape ``(d/2,)`` and the attention factor."""


def _check_factor(name: str, value: Any, *, at_least_one: bool) -> float:
    factor = check_positive_number(name, value)
    if at_least_one and factor < 1.0:
        raise ValueError(f"{name} must be >= 1 for this scaling variant; got {value}")
    return factor


def _exponents(dim: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """``2i/d`` for the ``d/2`` pairs."""
    return np.arange(0, dim, 2, dtype=np.float64) / dim


def _default(dim: int, base: float) -> HostFrequencies:
    return base ** -_exponents(dim), 1.0


def _linear(dim: int, base: float, *, factor: float) -> HostFrequencies:
    factor = _check_factor("factor", factor, at_least_one=False)
    return base ** -_exponents(dim) / factor, 1.0


def _ntk_base(dim: int, base: float, growth: float) -> float:
    if dim <= 2:
        raise ValueError(f"NTK scaling needs rotary_dim > 2 (it uses d/(d-2)); got {dim}")
    return float(base * growth ** (dim / (dim - 2)))


def _ntk(dim: int, base: float, *, factor: float) -> HostFrequencies:
    factor = _check_factor("factor", factor, at_least_one=False)
    return _ntk_base(dim, base, factor) ** -_exponents(dim), 1.0


def dynamic_ntk_growth(factor: float, seq_len: Any, original: int) -> Any:
    """HF's dynamic-NTK base multiplier term ``factor * L / L0 - (factor - 1)``, ``L >= L0``."""
    return factor * seq_len / original - (factor - 1)


def _dynamic(
    dim: int,
    base: float,
    *,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
) -> HostFrequencies:
    factor = _check_factor("factor", factor, at_least_one=True)
    original = check_positive_int(
        "original_max_position_embeddings", original_max_position_embeddings
    )
    length = original if seq_len is None else max(check_positive_int("seq_len", seq_len), original)
    growth = float(dynamic_ntk_growth(factor, length, original))
    return _ntk_base(dim, base, growth) ** -_exponents(dim), 1.0


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's ``0.1 * mscale * ln(factor) + 1`` (1 for ``factor <= 1``)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(
    dim: int,
    base: float,
    *,
    factor: float,
    original_max_position_embeddings: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    truncate: bool = True,
) -> HostFrequencies:
    factor = _check_factor("factor", factor, at_least_one=True)
    original = check_positive_int(
        "original_max_position_embeddings", original_max_position_embeddings
    )
    beta_fast = check_positive_number("beta_fast", beta_fast)
    beta_slow = check_positive_number("beta_slow", beta_slow)
    if beta_fast <= beta_slow:
        raise ValueError(
            f"beta_fast must be > beta_slow; got beta_fast={beta_fast}, beta_slow={beta_slow}"
        )
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    attention_factor = check_positive_number("attention_factor", attention_factor)

    def correction_dim(rotations: float) -> float:
        """The pair index whose wavelength fits ``rotations`` times into the original context."""
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)  # HF clamps to d-1 (not d/2-1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolation = base ** -_exponents(dim)
    interpolation = extrapolation / factor
    return interpolation * ramp + extrapolation * (1.0 - ramp), attention_factor


def _factor_list(name: str, values: Any, pairs: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a list of {pairs} numbers; got {type(values).__name__}")
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (pairs,):
        raise ValueError(f"{name} must have length rotary_dim/2={pairs}; got {len(values)}")
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError(f"{name} must hold finite numbers > 0; got {values!r}")
    return array


def _longrope(
    dim: int,
    base: float,
    *,
    short_factor: Sequence[float],
    long_factor: Sequence[float],
    original_max_position_embeddings: int,
    factor: float,
    attention_factor: float | None = None,
    seq_len: int | None = None,
) -> HostFrequencies:
    original = check_positive_int(
        "original_max_position_embeddings", original_max_position_embeddings
    )
    factor = _check_factor("factor", factor, at_least_one=True)
    short = _factor_list("short_factor", short_factor, dim // 2)
    long = _factor_list("long_factor", long_factor, dim // 2)
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        )
    attention_factor = check_positive_number("attention_factor", attention_factor)
    use_long = seq_len is not None and check_positive_int("seq_len", seq_len) > original
    return 1.0 / ((long if use_long else short) * base ** _exponents(dim)), attention_factor


def _llama3(
    dim: int,
    base: float,
    *,
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_position_embeddings: int = 8192,
) -> HostFrequencies:
    factor = _check_factor("factor", factor, at_least_one=True)
    low = check_positive_number("low_freq_factor", low_freq_factor)
    high = check_positive_number("high_freq_factor", high_freq_factor)
    if low >= high:
        raise ValueError(
            f"low_freq_factor must be < high_freq_factor; got {low_freq_factor} and "
            f"{high_freq_factor}"
        )
    original = check_positive_int(
        "original_max_position_embeddings", original_max_position_embeddings
    )
    inv_freq = base ** -_exponents(dim)
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = np.where(wavelength > original / low, inv_freq / factor, blended)
    return np.where(wavelength < original / high, inv_freq, scaled), 1.0


_VARIANTS: dict[str, Callable[..., HostFrequencies]] = {
    "default": _default,
    "linear": _linear,
    "ntk": _ntk,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "longrope": _longrope,
    "llama3": _llama3,
}
ROPE_TYPES: tuple[str, ...] = tuple(_VARIANTS)
"""The accepted ``rope_type`` names (Hugging Face's, plus the static ``ntk``)."""

DATA_DEPENDENT_TYPES = frozenset({"dynamic", "longrope"})
"""Variants whose frequencies depend on the current length ``seq_len = max(position) + 1``."""


def check_rope_type(rope_type: Any) -> str:
    if rope_type not in _VARIANTS:
        raise ValueError(f"rope_type must be one of {list(ROPE_TYPES)}; got {rope_type!r}")
    return str(rope_type)


def host_inverse_frequencies(
    rotary_dim: int, rope_type: str, base: float, parameters: dict[str, Any]
) -> HostFrequencies:
    """The float64 frequencies and attention factor of one variant (validated)."""
    rotary_dim = check_positive_int("rotary_dim", rotary_dim)
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even (pairs of features rotate); got {rotary_dim}")
    base = check_positive_number("base", base)
    variant = _VARIANTS[check_rope_type(rope_type)]
    try:
        return variant(rotary_dim, base, **parameters)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        raise TypeError(f"rope_type={rope_type!r}: {err}") from None


def rope_inverse_frequencies(
    rotary_dim: int,
    *,
    rope_type: str = "default",
    base: float = 10000.0,
    xp: Any = None,
    device: Device = None,
    dtype: DType = None,
    **parameters: Any,
) -> tuple[Array, float]:
    """Inverse frequencies and attention factor of a RoPE scaling variant.

    Parameters
    ----------
    rotary_dim
        Number of rotated features ``d`` (even); the result has ``d // 2`` frequencies.
    rope_type
        One of :data:`ROPE_TYPES`: ``default``, ``linear``, ``ntk``, ``dynamic``, ``yarn``,
        ``longrope``, ``llama3``.
    base
        ``rope_theta``.
    xp, device, dtype
        Where to place ``inv_freq`` (default NumPy, float64).
    **parameters
        The variant's parameters with Hugging Face's names: ``factor``;
        ``original_max_position_embeddings``; ``seq_len`` (the current length, for ``dynamic``
        and ``longrope``); ``beta_fast``, ``beta_slow``, ``attention_factor``, ``mscale``,
        ``mscale_all_dim``, ``truncate`` (``yarn``); ``short_factor``, ``long_factor``,
        ``attention_factor`` (``longrope``); ``low_freq_factor``, ``high_freq_factor``
        (``llama3``). An unknown name is a TypeError naming the variant.

    Returns
    -------
    ``(inv_freq, attention_factor)``: ``inv_freq`` of shape ``(d // 2,)`` computed in float64;
    ``attention_factor`` is a float that multiplies cos and sin.
    """
    inv_freq, attention_factor = host_inverse_frequencies(rotary_dim, rope_type, base, parameters)
    xp = resolve_namespace(xp)
    if dtype is None:
        dtype = xp.float64 if has_float64(xp, device) else default_float_dtype(xp, device)
    return xp.asarray(inv_freq, dtype=dtype, device=device), attention_factor
