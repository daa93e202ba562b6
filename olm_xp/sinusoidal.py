"""Sinusoidal position encoding (Vaswani et al. 2017), olm's interleaved layout.

``PE[p, 2j] = sin(p * base**(-2j/D))`` and ``PE[p, 2j+1] = cos(p * base**(-2j/D))``. For odd
``D`` the last column is a sine (olm drops the last cosine). Angles and sines are computed in
float64 and rounded once to the requested dtype, so every entry is correctly rounded at any
position -- olm computes the angle in float32, which is off by a few times ``p * 2**-24`` radians.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from olm_xp._compat import (
    array_namespace,
    default_float_dtype,
    device_of,
    has_float64,
    is_concrete,
    is_integer,
    resolve_namespace,
    to_numpy,
)
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp._validation import check_positive_int, check_positive_number

__all__ = ["sinusoidal_table"]

_DIGIT_BITS = 8  # positions split into bytes for the float64-free traced path


def _inverse_frequencies(embed_dim: int, base: float) -> np.ndarray[Any, Any]:
    """Float64 ``base**(-2j/D)`` for ``j in [0, ceil(D/2))``, shape ``(ceil(D/2),)``."""
    return base ** (-np.arange(0, embed_dim, 2, dtype=np.float64) / embed_dim)


def _interleave(xp: ArrayNamespace, sin: Array, cos: Array, embed_dim: int) -> Array:
    """``(..., ceil(D/2))`` sines and cosines to ``(..., D)`` as ``[s0, c0, s1, c1, ...]``."""
    pairs = xp.stack((sin, cos), axis=-1)
    flat = xp.reshape(pairs, (*pairs.shape[:-2], 2 * pairs.shape[-2]))
    return flat[..., :embed_dim]


def _float64_table(xp: ArrayNamespace, positions: Array, embed_dim: int, base: float) -> Array:
    """The table for integer ``positions`` (any shape) computed in float64 with ``xp``."""
    inv_freq = xp.asarray(
        _inverse_frequencies(embed_dim, base), dtype=xp.float64, device=device_of(positions)
    )
    angles = xp.astype(positions, xp.float64)[..., None] * inv_freq
    return _interleave(xp, xp.sin(angles), xp.cos(angles), embed_dim)


def _digit_table(
    xp: ArrayNamespace, positions: Array, embed_dim: int, base: float, dtype: DType
) -> Array:
    """The table for traced positions where the device has no float64 (JAX without x64).

    A position is split into bytes ``p = sum_k d_k * 256**k``; the rotation for each byte is
    looked up in a 256-row float64-exact table and the rotations are composed with the
    angle-addition formulas in float32. Error: a few float32 ulp, independent of ``p``.
    """
    device = device_of(positions)
    inv_freq = _inverse_frequencies(embed_dim, base)
    digits = np.arange(1 << _DIGIT_BITS, dtype=np.float64)[:, None]

    def rotation_of_digit(level: int) -> tuple[Array, Array]:
        shift = level * _DIGIT_BITS
        digit = xp.reshape((positions >> shift) & ((1 << _DIGIT_BITS) - 1), (-1,))
        angles = digits * (inv_freq * float(2**shift))
        cos = xp.asarray(np.cos(angles), dtype=dtype, device=device)
        sin = xp.asarray(np.sin(angles), dtype=dtype, device=device)
        return xp.take(cos, digit, axis=0), xp.take(sin, digit, axis=0)

    levels = math.ceil(xp.iinfo(positions.dtype).bits / _DIGIT_BITS)
    cos, sin = rotation_of_digit(0)
    for level in range(1, levels):
        level_cos, level_sin = rotation_of_digit(level)
        cos, sin = cos * level_cos - sin * level_sin, sin * level_cos + cos * level_sin
    shape = (*positions.shape, inv_freq.shape[0])
    return _interleave(xp, xp.reshape(sin, shape), xp.reshape(cos, shape), embed_dim)


def sinusoidal_table(
    positions: int | Array,
    embed_dim: int,
    *,
    base: float = 10000.0,
    xp: Any = None,
    device: Device = None,
    dtype: DType = None,
) -> Array:
    """Sinusoidal encodings for ``positions``, correctly rounded to ``dtype``.

    Parameters
    ----------
    positions
        An int ``n`` for positions ``0..n-1`` (result shape ``(n, embed_dim)``), or an integer
        array of any shape ``S`` (result shape ``(*S, embed_dim)``, same namespace and device).
    embed_dim
        Feature size ``D``; odd ``D`` ends with a sine column, as in olm.
    base
        Wavelength base (10000 in Vaswani et al.).
    xp, device
        Namespace and device of the result when ``positions`` is an int (default NumPy, its
        default device); ignored otherwise. Accepts ``numpy``, ``torch``, ``jax.numpy``, ...
    dtype
        Result dtype; default: the namespace's default real floating dtype.

    Returns
    -------
    Array of shape ``(n, embed_dim)`` or ``(*S, embed_dim)``. Computed in float64 (on the host
    or on the device where it has float64) and rounded once; traced positions on a device
    without float64 use an exact byte-wise table composition accurate to a few ulp.
    """
    embed_dim = check_positive_int("embed_dim", embed_dim)
    base = check_positive_number("base", base)
    if isinstance(positions, int) and not isinstance(positions, bool):
        num_positions = check_positive_int("positions", positions)
        xp = resolve_namespace(xp)
        dtype = default_float_dtype(xp, device) if dtype is None else dtype
        host = _float64_table(np, np.arange(num_positions), embed_dim, base)
        return xp.asarray(host, dtype=dtype, device=device)

    xp = array_namespace(positions)
    if not is_integer(xp, positions.dtype):
        raise TypeError(f"positions must be an int or an integer array; got {positions.dtype}")
    device = device_of(positions)
    dtype = default_float_dtype(xp, device) if dtype is None else dtype
    if has_float64(xp, device):
        return xp.astype(_float64_table(xp, positions, embed_dim, base), dtype)
    if is_concrete(positions):
        host = _float64_table(np, to_numpy(positions), embed_dim, base)
        return xp.asarray(host, dtype=dtype, device=device)
    return xp.astype(_digit_table(xp, positions, embed_dim, base, xp.float32), dtype)
