"""Float64 NumPy reference implementations, written straight from the formulas.

This module is the oracle for the conformance tests and for ``olm-xp compare``. It shares no
code with the implementations it checks (it imports nothing from ``olm_xp``), favours the
literal formula over speed, and works in float64 throughout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["absolute_reference", "float64_allowance_eps", "sinusoidal_reference"]

Float64Array = np.ndarray[Any, np.dtype[np.float64]]


def sinusoidal_reference(positions: Any, embed_dim: int, base: float = 10000.0) -> Float64Array:
    """Vaswani et al.: ``PE[p, 2i] = sin(p / base**(2i/D))``, ``PE[p, 2i+1] = cos(...)``.

    ``positions`` is an int ``n`` (for ``0..n-1``) or an integer array of any shape ``S``;
    the result has shape ``(n, D)`` or ``(*S, D)``. For odd ``D`` the last column is a sine.
    """
    p = np.arange(positions) if isinstance(positions, int) else np.asarray(positions)
    p = p.astype(np.float64)
    out = np.empty((*p.shape, embed_dim), dtype=np.float64)
    for column in range(embed_dim):
        i = column // 2
        angle = p / base ** (2 * i / embed_dim)
        out[..., column] = np.sin(angle) if column % 2 == 0 else np.cos(angle)
    return out


def float64_allowance_eps(max_angle: float) -> float:
    """Extra tolerance, in float64 eps, when a float64 result is compared with this reference.

    A float64 reference is not exact for a float64 result: both compute an angle ``p * w`` in
    float64, each off by up to ``|angle| * 2**-53`` radians, so sines of angles up to
    ``max_angle`` may differ by about ``max_angle`` eps plus their own rounding. For float32 and
    narrower dtypes the reference is exact to far below the result's eps and needs no allowance.
    """
    return 2.0 * max_angle + 2.0


def absolute_reference(x: Any, table: Any, positions: Any = None) -> Float64Array:
    """``x + table[positions]`` in float64; ``positions=None`` means ``0..seq-1``."""
    x = np.asarray(x, dtype=np.float64)
    table = np.asarray(table, dtype=np.float64)
    p = np.arange(x.shape[1]) if positions is None else np.asarray(positions)
    return np.asarray(x + table[p], dtype=np.float64)
