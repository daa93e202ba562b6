"""cos/sin of integer positions times frequencies, correctly rounded, on any backend.

The one place angles ``p * w`` become arrays. Sinusoidal tables and RoPE tables both come
from :func:`cos_sin`, which picks the most exact path the input allows:

* positions given as an int ``n`` (``0..n-1``) or as a concrete array on a device without
  float64: computed on the host in float64 and rounded once to ``dtype``;
* an array on a device with float64 (traced or not): computed in-graph in float64, rounded once;
* traced positions on a device without float64 (JAX with x64 off, torch MPS): each position is
  split into bytes, each byte's rotation is looked up in a 256-row float64-exact table, and the
  rotations are composed with the angle-addition formulas in float32. Error: a few float32 ulp,
  independent of the position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from olm_xp._compat import (
    array_namespace,
    default_float_dtype,
    device_of,
    dtype_name,
    has_float64,
    is_concrete,
    is_integer,
    resolve_namespace,
    take_rows,
    to_numpy,
)
from olm_xp._typing import Array, ArrayNamespace, Device, DType

__all__ = ["Decay", "cos_sin", "positions_placement"]

_DIGIT_BITS = 8

HostArray = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Decay:
    """An amplitude ``exp((p - center) * log_rate[i])`` per position and frequency (xPos)."""

    log_rate: HostArray
    center: float = 0.0


def _amplitude(
    xp: ArrayNamespace, positions: Array, decay: Decay | None, scale: float, dtype: DType
) -> Array | float:
    """``scale`` times the decay amplitude, computed in ``dtype`` with ``xp``."""
    if decay is None:
        return scale
    device = device_of(positions)
    rate = xp.asarray(decay.log_rate, dtype=dtype, device=device)
    shifted = xp.astype(positions, dtype)[..., None] - decay.center
    return xp.exp(shifted * rate) * scale


def _float64_cos_sin(
    xp: ArrayNamespace, positions: Array, inv_freq: HostArray, scale: float, decay: Decay | None
) -> tuple[Array, Array]:
    frequencies = xp.asarray(inv_freq, dtype=xp.float64, device=device_of(positions))
    angles = xp.astype(positions, xp.float64)[..., None] * frequencies
    amplitude = _amplitude(xp, positions, decay, scale, xp.float64)
    return xp.cos(angles) * amplitude, xp.sin(angles) * amplitude


def _digit_cos_sin(
    xp: ArrayNamespace,
    positions: Array,
    inv_freq: HostArray,
    scale: float,
    decay: Decay | None,
    dtype: DType,
) -> tuple[Array, Array]:
    device = device_of(positions)
    digits = np.arange(1 << _DIGIT_BITS, dtype=np.float64)[:, None]

    def rotation_of_digit(level: int) -> tuple[Array, Array]:
        shift = level * _DIGIT_BITS
        digit = (positions >> shift) & ((1 << _DIGIT_BITS) - 1)
        angles = digits * (inv_freq * float(2**shift))
        cos = xp.asarray(np.cos(angles), dtype=dtype, device=device)
        sin = xp.asarray(np.sin(angles), dtype=dtype, device=device)
        # Rows of (*P, d/2), positions not flattened: keeps a sharded sequence sharded.
        return take_rows(xp, cos, digit), take_rows(xp, sin, digit)

    levels = math.ceil(xp.iinfo(positions.dtype).bits / _DIGIT_BITS)
    cos, sin = rotation_of_digit(0)
    for level in range(1, levels):
        level_cos, level_sin = rotation_of_digit(level)
        cos, sin = cos * level_cos - sin * level_sin, sin * level_cos + cos * level_sin
    amplitude = _amplitude(xp, positions, decay, scale, dtype)
    return cos * amplitude, sin * amplitude


def positions_placement(
    positions: Any, xp: Any, device: Device, dtype: DType
) -> tuple[ArrayNamespace, Device, DType]:
    """Namespace, device and dtype of tables for ``positions``: an int count (placed by the
    given ``xp``/``device``) or an integer array (its own namespace and device).
    ``dtype=None`` means the namespace's default float dtype."""
    if isinstance(positions, int) and not isinstance(positions, bool):
        xp = resolve_namespace(xp)
    else:
        xp = array_namespace(positions)
        if not is_integer(xp, positions.dtype):
            raise TypeError(
                f"positions must be an int or an integer array; got {dtype_name(positions.dtype)}"
            )
        device = device_of(positions)
    return xp, device, default_float_dtype(xp, device) if dtype is None else dtype


def cos_sin(
    positions: int | Array,
    inv_freq: HostArray,
    *,
    xp: ArrayNamespace,
    device: Device,
    dtype: DType,
    scale: float = 1.0,
    decay: Decay | None = None,
) -> tuple[Array, Array]:
    """``a * cos(p * w)`` and ``a * sin(p * w)``, each ``(*P, len(w))`` in ``dtype``.

    ``positions`` is an int ``n`` (for ``0..n-1``, with ``xp``/``device`` placing the result)
    or an integer array of shape ``P`` in namespace ``xp`` (the result follows its device);
    ``inv_freq`` is a float64 NumPy array of frequencies ``w``. The amplitude ``a`` is ``scale``
    times the optional ``decay`` amplitude; it multiplies both before the single rounding.
    """
    inv_freq = np.asarray(inv_freq, dtype=np.float64)

    def on_host(host_positions: HostArray, device: Device) -> tuple[Array, Array]:
        p = host_positions.astype(np.float64)[..., None]
        amplitude = scale if decay is None else scale * np.exp((p - decay.center) * decay.log_rate)
        cos = xp.asarray(np.cos(p * inv_freq) * amplitude, dtype=dtype, device=device)
        return cos, xp.asarray(np.sin(p * inv_freq) * amplitude, dtype=dtype, device=device)

    if isinstance(positions, int):
        return on_host(np.arange(positions), device)
    device = device_of(positions)
    if has_float64(xp, device):
        cos, sin = _float64_cos_sin(xp, positions, inv_freq, scale, decay)
    elif is_concrete(positions):
        return on_host(to_numpy(positions), device)
    else:
        cos, sin = _digit_cos_sin(xp, positions, inv_freq, scale, decay, xp.float32)
    return xp.astype(cos, dtype, copy=False), xp.astype(sin, dtype, copy=False)
