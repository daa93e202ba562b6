"""Input checks shared by every public function and class.

Each check raises a ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, wrong
value) whose message names the argument, the expected and the actual value. Checks on array
*values* (negative or out-of-range positions) run only where the array is concrete, so nothing
here forces a JAX tracer, a ``torch.compile`` graph or a Dask graph.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from olm_xp._compat import (
    device_key,
    device_of,
    dtype_name,
    is_concrete,
    is_floating,
    is_integer,
    namespace_name,
)
from olm_xp._typing import Array, ArrayNamespace


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int > 0, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int; got {type(value).__name__} {value!r}")
    as_int = int(value)
    if as_int <= 0:
        raise ValueError(f"{name} must be a positive int (> 0); got {value}")
    return as_int


def check_positive_number(name: str, value: Any) -> float:
    """``value`` as a finite float > 0, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number; got {type(value).__name__} {value!r}")
    as_float = float(value)
    if not (math.isfinite(as_float) and as_float > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value}")
    return as_float


def check_probability(name: str, value: Any) -> float:
    """A dropout rate in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1); got {type(value).__name__} {value!r}")
    as_float = float(value)
    if not 0.0 <= as_float < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {value}")
    return as_float


def check_floating_input(xp: ArrayNamespace, x: Array, *, name: str, ndim: int) -> None:
    """``x`` has ``ndim`` axes and a real floating dtype."""
    if x.ndim != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D (batch, seq, embed_dim); got shape {tuple(x.shape)} "
            f"({x.ndim}-D)"
        )
    if not is_floating(xp, x.dtype):
        raise TypeError(f"{name} must have a real floating dtype; got {dtype_name(x.dtype)}")


def check_feature_size(name: str, actual: int, expected: int, *, what: str) -> None:
    if actual != expected:
        raise ValueError(f"{name} last dimension must equal {what}={expected}; got {actual}")


def check_same_placement(
    xp: ArrayNamespace, x: Array, other_xp: ArrayNamespace, other: Array, *, what: str
) -> None:
    """``other`` (a table held by a module) lives in ``x``'s namespace and on its device."""
    if namespace_name(xp) != namespace_name(other_xp):
        raise TypeError(
            f"x is a {namespace_name(xp)} array but {what} is a {namespace_name(other_xp)} "
            f"array; move the module with .to(xp=<x's namespace>, device=<x's device>)"
        )
    x_device, other_device = device_of(x), device_of(other)
    if x_device is None or other_device is None:  # inside jax.jit: XLA places constants
        return
    if device_key(x_device) != device_key(other_device):
        raise ValueError(
            f"x is on device {x_device} but {what} is on device {other_device}; move the "
            f"module with .to(device={x_device!r}) or move x to {other_device}"
        )


def check_positions(
    xp: ArrayNamespace,
    positions: Array,
    *,
    batch: int,
    seq_len: int,
    device: Any = None,
    limit: int | None = None,
    limit_name: str = "max_seq_len",
    name: str = "seq_positions",
) -> None:
    """Integer positions of shape ``(seq,)`` or ``(batch or 1, seq)`` on ``device`` (x's),
    all in ``[0, limit)``.

    Values are read only where ``positions`` is concrete (not traced, compiled or lazy).
    """
    if not hasattr(positions, "shape") or not hasattr(positions, "dtype"):
        raise TypeError(
            f"{name} must be an integer array of shape (seq,) or (batch, seq); "
            f"got {type(positions).__name__}"
        )
    if not is_integer(xp, positions.dtype):
        raise TypeError(f"{name} must have an integer dtype; got {dtype_name(positions.dtype)}")
    shape = tuple(positions.shape)
    ok = shape == (seq_len,) or (len(shape) == 2 and shape[1] == seq_len and shape[0] in (1, batch))
    if not ok:
        raise ValueError(
            f"{name} must have shape ({seq_len},) or ({batch}, {seq_len}) to fit x; got {shape}"
        )
    positions_device = device_of(positions)
    known = device is not None and positions_device is not None
    if known and device_key(positions_device) != device_key(device):
        raise ValueError(f"{name} must be on x's device {device}; got device {positions_device}")
    if not is_concrete(positions) or math.prod(shape) == 0:
        return
    low = int(xp.min(positions))
    if low < 0:
        raise ValueError(f"{name} must be >= 0; got minimum {low}")
    if limit is not None:
        high = int(xp.max(positions))
        if high >= limit:
            raise ValueError(f"{name} must be < {limit_name}={limit}; got maximum {high}")
