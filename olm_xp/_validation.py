"""Input checks shared by every public function and class.

Each check raises a ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, wrong
value) whose message names the argument, the expected and the actual value. Checks on array
*values* (negative or out-of-range positions) run only where the array is concrete, so nothing
here forces a JAX tracer, a ``torch.compile`` graph or a Dask graph.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from olm_xp._compat import (
    array_namespace,
    device_key,
    device_of,
    dtype_name,
    is_concrete,
    is_floating,
    is_integer,
    max_value,
    min_value,
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
    low = min_value(positions)
    if low < 0:
        raise ValueError(f"{name} must be >= 0; got minimum {low}")
    if limit is not None:
        high = max_value(positions)
        if high >= limit:
            raise ValueError(f"{name} must be < {limit_name}={limit}; got maximum {high}")


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool, or a TypeError naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__} {value!r}")
    return value


def _position_batch(
    xp: ArrayNamespace, positions: Array, *, name: str, length: int, length_name: str
) -> int | None:
    """Check integer positions of shape ``(length,)`` or ``(batch, length)``; the batch or None."""
    if not hasattr(positions, "shape") or not hasattr(positions, "dtype"):
        raise TypeError(
            f"{name} must be an integer array of shape ({length},) or (batch, {length}); "
            f"got {type(positions).__name__}"
        )
    if not is_integer(xp, positions.dtype):
        raise TypeError(f"{name} must have an integer dtype; got {dtype_name(positions.dtype)}")
    shape = tuple(positions.shape)
    if not (1 <= len(shape) <= 2 and shape[-1] == length):
        raise ValueError(
            f"{name} must have shape ({length},) or (batch, {length}) to match "
            f"{length_name}={length}; got {shape}"
        )
    return int(shape[0]) if len(shape) == 2 else None


def check_query_key_positions(
    xp: ArrayNamespace,
    query_positions: Array | None,
    key_positions: Array | None,
    *,
    seq_len_q: int,
    seq_len_k: int,
) -> None:
    """Optional query/key positions for a ``(q, k)`` bias: integer ``(q,)``/``(batch, q)`` and
    ``(k,)``/``(batch, k)``, batches that broadcast, on one device. Values are not checked:
    any integer position (negative included) has a well-defined relative distance."""
    q_batch = k_batch = None
    if query_positions is not None:
        q_batch = _position_batch(
            xp, query_positions, name="query_positions", length=seq_len_q, length_name="seq_len_q"
        )
    if key_positions is not None:
        k_batch = _position_batch(
            xp, key_positions, name="key_positions", length=seq_len_k, length_name="seq_len_k"
        )
    batches = {q_batch, k_batch} - {None, 1}
    if len(batches) > 1:
        raise ValueError(
            f"query_positions and key_positions must have the same batch size (or 1); got "
            f"{q_batch} and {k_batch}"
        )
    if query_positions is not None and key_positions is not None:
        q_device, k_device = device_of(query_positions), device_of(key_positions)
        known = q_device is not None and k_device is not None
        if known and device_key(q_device) != device_key(k_device):
            raise ValueError(
                f"query_positions and key_positions must be on one device; got {q_device} and "
                f"{k_device}"
            )


def check_slopes(xp: ArrayNamespace, slopes: Array, *, name: str = "slopes") -> None:
    """A 1-D real floating array of per-head slopes."""
    if slopes.ndim != 1:
        raise ValueError(
            f"{name} must be an int or a 1-D (heads,) array of slopes; got shape "
            f"{tuple(slopes.shape)}"
        )
    if not is_floating(xp, slopes.dtype):
        raise TypeError(
            f"{name} slopes must have a real floating dtype; got {dtype_name(slopes.dtype)}"
        )


def check_t5_buckets(
    num_buckets: Any, max_distance: Any, bidirectional: Any
) -> tuple[int, int, bool]:
    """T5 bucket configuration: at least one exact bucket, and ``max_distance`` beyond them
    (at ``max_distance`` equal to the exact-bucket count T5's ``log`` ratio divides by zero)."""
    num_buckets = check_positive_int("num_buckets", num_buckets)
    max_distance = check_positive_int("max_distance", max_distance)
    bidirectional = check_bool("bidirectional", bidirectional)
    divisor, kind = (4, "bidirectional") if bidirectional else (2, "causal")
    exact = num_buckets // divisor
    if exact < 1:
        raise ValueError(
            f"num_buckets must be >= {divisor} for {kind} buckets (at least one exact bucket, "
            f"num_buckets // {divisor}); got {num_buckets}"
        )
    if max_distance <= exact:
        raise ValueError(
            f"max_distance must be greater than the number of exact buckets "
            f"(num_buckets // {divisor} = {exact} for {kind} buckets); got {max_distance}"
        )
    return num_buckets, max_distance, bidirectional


def check_device(name: str, array: Array, device: Any, *, what: str) -> None:
    """``array`` lives on ``device`` (skipped where either is unknown, e.g. inside jax.jit)."""
    where = device_of(array)
    if where is None or device is None:
        return
    if device_key(where) != device_key(device):
        raise ValueError(f"{name} must be on {what} {device}; got device {where}")


def check_table(xp: ArrayNamespace, table: Array, *, name: str) -> None:
    """A 2-D real floating learned table."""
    if not hasattr(table, "ndim") or table.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (num_buckets, heads) table; got shape "
            f"{tuple(getattr(table, 'shape', ()))}"
        )
    if not is_floating(xp, table.dtype):
        raise TypeError(f"{name} must have a real floating dtype; got {dtype_name(table.dtype)}")


def check_attention_inputs(xp: ArrayNamespace, q: Array, k: Array, v: Array) -> None:
    """``q (batch, heads, seq_q, d)``, ``k (batch, heads, seq_k, d)``, ``v (batch, heads,
    seq_k, dv)``, all real floating."""
    for name, array in (("q", q), ("k", k), ("v", v)):
        if array.ndim != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, seq, head_dim); got shape "
                f"{tuple(array.shape)} ({array.ndim}-D)"
            )
        if not is_floating(xp, array.dtype):
            raise TypeError(
                f"{name} must have a real floating dtype; got {dtype_name(array.dtype)}"
            )
    batch, heads, _, head_dim = (int(n) for n in q.shape)
    if tuple(k.shape[:2]) != (batch, heads) or int(k.shape[3]) != head_dim:
        raise ValueError(
            f"k must have shape (batch={batch}, heads={heads}, seq_k, head_dim={head_dim}) to "
            f"match q {tuple(q.shape)}; got {tuple(k.shape)}"
        )
    if tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise ValueError(
            f"v must have shape (batch={batch}, heads={heads}, seq_k={k.shape[2]}, value_dim) to "
            f"match k {tuple(k.shape)}; got {tuple(v.shape)}"
        )


def check_attention_bias(xp: ArrayNamespace, bias: Array, scores_shape: tuple[int, ...]) -> None:
    """An additive floating ``bias`` that broadcasts to ``scores_shape`` (batch, heads, q, k);
    a head-count mismatch is named as such."""
    if not hasattr(bias, "shape") or not hasattr(bias, "dtype"):
        raise TypeError(f"bias must be an array; got {type(bias).__name__}")
    if not is_floating(xp, bias.dtype):
        raise TypeError(
            f"bias must be an additive real floating array (0 to keep, -inf to mask); got "
            f"{dtype_name(bias.dtype)}"
        )
    shape = tuple(int(n) for n in bias.shape)
    if 3 <= len(shape) <= 4 and shape[-3] not in (1, scores_shape[1]):
        raise ValueError(
            f"bias has {shape[-3]} heads (shape {shape}) but the scores have "
            f"{scores_shape[1]} heads (q's); expected 1 or {scores_shape[1]}"
        )
    padded = (1,) * (4 - len(shape)) + shape
    if len(shape) > 4 or any(b not in (1, s) for b, s in zip(padded, scores_shape, strict=True)):
        raise ValueError(
            f"bias of shape {shape} does not broadcast to the scores' shape "
            f"(batch, heads, seq_q, seq_k) = {scores_shape}"
        )


def check_state_dict(
    owner: str, expected: Mapping[str, tuple[int, ...]], state_dict: Any, strict: bool
) -> dict[str, Any]:
    """The entries of ``state_dict`` to load, after checking keys, shapes and dtypes.

    Raises ``ValueError`` for a missing or unexpected key (``strict=True``) or a wrong shape,
    and ``TypeError`` for a value that is not a real floating array, naming the key, the
    expected and the actual value. Nothing is loaded when a check fails.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping; got {type(state_dict).__name__}")
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if strict and (missing or unexpected):
        raise ValueError(
            f"load_state_dict for {owner}: expected keys {sorted(expected)}; missing "
            f"{missing}, unexpected {unexpected}"
        )
    values = {}
    for key in sorted(set(expected) & set(state_dict)):
        value = state_dict[key]
        shape = tuple(int(n) for n in getattr(value, "shape", ()))
        if shape != tuple(expected[key]):
            raise ValueError(
                f"load_state_dict for {owner}: {key} must have shape {tuple(expected[key])}; "
                f"got {shape}"
            )
        try:
            floating = bool(array_namespace(value).isdtype(value.dtype, "real floating"))
        except (TypeError, ValueError, AttributeError):
            floating = False
        if not floating:
            raise TypeError(
                f"load_state_dict for {owner}: {key} must be a real floating array; got "
                f"{type(value).__name__} of dtype {getattr(value, 'dtype', None)}"
            )
        values[key] = value
    return values
