"""Sinusoidal position encoding (Vaswani et al. 2017), olm's interleaved layout.

``PE[p, 2j] = sin(p * base**(-2j/D))`` and ``PE[p, 2j+1] = cos(p * base**(-2j/D))``. For odd
``D`` the last column is a sine (olm drops the last cosine). Angles and sines are computed in
float64 and rounded once to the requested dtype, so every entry is correctly rounded at any
position -- olm computes the angle in float32, which is off by a few times ``p * 2**-24`` radians.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from olm_xp._angles import cos_sin, positions_placement
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp._validation import check_positive_int, check_positive_number

__all__ = ["sinusoidal_table"]


def _inverse_frequencies(embed_dim: int, base: float) -> np.ndarray[Any, Any]:
    """Float64 ``base**(-2j/D)`` for ``j in [0, ceil(D/2))``, shape ``(ceil(D/2),)``."""
    return base ** (-np.arange(0, embed_dim, 2, dtype=np.float64) / embed_dim)


def _interleave(xp: ArrayNamespace, sin: Array, cos: Array, embed_dim: int) -> Array:
    """``(..., ceil(D/2))`` sines and cosines to ``(..., D)`` as ``[s0, c0, s1, c1, ...]``."""
    pairs = xp.stack((sin, cos), axis=-1)
    flat = xp.reshape(pairs, (*pairs.shape[:-2], 2 * pairs.shape[-2]))
    return flat[..., :embed_dim]


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
        check_positive_int("positions", positions)
    xp, device, dtype = positions_placement(positions, xp, device, dtype)
    cos, sin = cos_sin(
        positions, _inverse_frequencies(embed_dim, base), xp=xp, device=device, dtype=dtype
    )
    return _interleave(xp, sin, cos, embed_dim)
