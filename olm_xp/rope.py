"""Rotary position embedding (RoPE, Su et al. 2021): cos/sin tables and the rotation.

Each pair of features ``(u, v)`` at position ``p`` is rotated by the angle ``p * w_i``:
``(u cos - v sin, u sin + v cos)``. Two pairings exist and both are supported:

* ``interleaved=True`` -- pairs ``(x[2i], x[2i+1])``: olm, GPT-J, Meta's Llama reference;
* ``interleaved=False`` -- half-split pairs ``(x[i], x[i + d/2])``: GPT-NeoX, Hugging Face.

Only the first ``rotary_dim = 2 * cos.shape[-1]`` features rotate; the rest pass through
bit-exact (partial rotary). Tables are computed in float64 and rounded once to the compute
dtype (at least float32); bfloat16/float16 inputs are rotated in float32 and returned in their
own dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from olm_xp._angles import cos_sin, positions_placement
from olm_xp._compat import (
    array_namespace,
    compute_dtype,
    device_of,
    dtype_name,
    index_dtype,
    is_concrete,
    is_integer,
    to_numpy,
)
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp._validation import check_positions, check_positive_number

__all__ = ["apply_rope", "rope", "rope_cos_sin"]


def normalize_axis(axis: Any, ndim: int, name: str) -> int:
    """``axis`` in ``[0, ndim)``, or a ValueError naming ``name``."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{name} must be an int; got {type(axis).__name__} {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim}) for a {ndim}-D x; got {axis}")
    return axis % ndim


def _host_frequencies(inv_freq: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    if isinstance(inv_freq, np.ndarray | list | tuple):
        host = np.asarray(inv_freq, dtype=np.float64)
    else:
        if not is_concrete(inv_freq):
            raise TypeError(
                "inv_freq must be concrete (a NumPy array or an array outside jax.jit/"
                "torch.compile): tables are built from it on the host in float64"
            )
        host = to_numpy(inv_freq).astype(np.float64)
    if host.ndim != 1 or host.shape[0] == 0:
        raise ValueError(f"inv_freq must be 1-D and non-empty; got shape {host.shape}")
    return host


def rope_cos_sin(
    positions: int | Array,
    inv_freq: Any,
    *,
    attention_factor: float = 1.0,
    xp: Any = None,
    device: Device = None,
    dtype: DType = None,
) -> tuple[Array, Array]:
    """``attention_factor * cos(p * w)`` and ``... * sin(p * w)`` for integer positions.

    Parameters
    ----------
    positions
        An int ``n`` (positions ``0..n-1``) or an integer array of any shape ``P``.
    inv_freq
        ``(d/2,)`` frequencies, e.g. from :func:`olm_xp.rope_inverse_frequencies` (must be
        concrete: tables are computed from it in float64).
    attention_factor
        Multiplies cos and sin before rounding (YaRN, LongRoPE).
    xp, device
        Namespace and device of the result when ``positions`` is an int (default NumPy).
    dtype
        Result dtype (default: the namespace's default float dtype).

    Returns
    -------
    ``(cos, sin)``, each ``(n, d/2)`` or ``(*P, d/2)``, correctly rounded from float64 (traced
    positions on a device without float64: within a few ulp).
    """
    host = _host_frequencies(inv_freq)
    attention_factor = check_positive_number("attention_factor", attention_factor)
    xp, device, dtype = positions_placement(positions, xp, device, dtype)
    return cos_sin(positions, host, xp=xp, device=device, dtype=dtype, scale=attention_factor)


def _broadcast_table(
    xp: ArrayNamespace, table: Array, x_shape: tuple[int, ...], seq_axis: int, name: str
) -> Array:
    """``(seq, d/2)`` or ``(batch, seq, d/2)`` to a shape that broadcasts against ``x``
    (features last, sequence at ``seq_axis``, batch at axis 0)."""
    ndim = len(x_shape)
    half = table.shape[-1]
    target = [1] * ndim
    target[seq_axis] = table.shape[-2] if table.ndim >= 2 else 1
    target[-1] = half
    if table.ndim == 3:
        if seq_axis == 0:
            raise ValueError(f"{name} with a batch axis needs seq_axis != 0")
        target[0] = table.shape[0]
    elif table.ndim != 2:
        raise ValueError(f"{name} must be (seq, d/2) or (batch, seq, d/2); got {table.shape}")
    ok = target[seq_axis] in (1, x_shape[seq_axis]) and target[0] in (1, x_shape[0])
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(table.shape)} does not fit x of shape {x_shape} with "
            f"seq_axis={seq_axis} (expected (seq, d/2) or (batch, seq, d/2))"
        )
    return xp.reshape(table, tuple(target))


def _rotate(xp: ArrayNamespace, x: Array, cos: Array, sin: Array, interleaved: bool) -> Array:
    """Rotate the last axis of ``x`` (exactly ``2 * cos.shape[-1]`` features)."""
    half = x.shape[-1] // 2
    if interleaved:
        pairs = xp.reshape(x, (*x.shape[:-1], half, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = xp.stack((even * cos - odd * sin, odd * cos + even * sin), axis=-1)
        return xp.reshape(rotated, x.shape)
    first, second = x[..., :half], x[..., half:]
    return xp.concat((first * cos - second * sin, second * cos + first * sin), axis=-1)


def apply_rope(
    x: Array,
    cos: Array,
    sin: Array,
    *,
    interleaved: bool = True,
    seq_axis: int = 1,
    feature_axis: int = -1,
) -> Array:
    """Rotate the first ``2 * cos.shape[-1]`` features of ``x``; pass the rest through.

    Parameters
    ----------
    x
        Floating array with a sequence axis and a feature axis, e.g. ``(batch, seq, heads,
        head_dim)`` (the default axes) or ``(batch, heads, seq, head_dim)`` with
        ``seq_axis=2``.
    cos, sin
        ``(seq, d/2)`` or ``(batch, seq, d/2)`` tables from :func:`rope_cos_sin`, in ``x``'s
        namespace and on its device; ``d <= x.shape[feature_axis]``.
    interleaved
        ``True``: pairs ``(x[2i], x[2i+1])`` (olm, Meta). ``False``: ``(x[i], x[i+d/2])`` (HF).

    Returns
    -------
    Array with ``x``'s namespace, device, dtype and shape; bfloat16/float16 are rotated in
    float32 and rounded once.
    """
    xp = array_namespace(x, cos, sin)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x must have a real floating dtype; got {dtype_name(x.dtype)}")
    if x.ndim < 2:
        raise ValueError(f"x must have a sequence and a feature axis; got shape {x.shape}")
    if tuple(cos.shape) != tuple(sin.shape):
        raise ValueError(f"cos and sin must have one shape; got {cos.shape} and {sin.shape}")
    feature = normalize_axis(feature_axis, x.ndim, "feature_axis")
    seq = normalize_axis(seq_axis, x.ndim, "seq_axis")
    if feature == seq:
        raise ValueError(f"seq_axis and feature_axis must differ; both are axis {seq}")
    moved = feature != x.ndim - 1
    if moved:
        x = xp.moveaxis(x, feature, -1)
        seq = seq if seq < feature else seq - 1
    rotary_dim = 2 * cos.shape[-1]
    if rotary_dim > x.shape[-1]:
        raise ValueError(
            f"tables rotate {rotary_dim} features but x has only {x.shape[-1]} on feature_axis"
        )
    work = compute_dtype(xp, x.dtype)
    shape = tuple(x.shape)
    cos = xp.astype(_broadcast_table(xp, cos, shape, seq, "cos"), work, copy=False)
    sin = xp.astype(_broadcast_table(xp, sin, shape, seq, "sin"), work, copy=False)
    head = xp.astype(x[..., :rotary_dim], work, copy=False)
    out = xp.astype(_rotate(xp, head, cos, sin, interleaved), x.dtype, copy=False)
    if rotary_dim < x.shape[-1]:
        out = xp.concat((out, x[..., rotary_dim:]), axis=-1)
    return xp.moveaxis(out, -1, feature) if moved else out


def resolve_positions(
    xp: ArrayNamespace, x: Array, positions: Any, *, seq_axis: int, index_dtype: DType
) -> Array:
    """Positions of shape ``(seq,)`` or ``(batch, seq)`` for ``x``.

    ``None`` means ``0..seq-1``; an int or a 0-D integer array is an offset (decoding: the
    tokens sit at ``offset..offset+seq-1``); arrays of shape ``(seq,)`` or ``(batch or 1, seq)``
    are used as given (validated; values checked where concrete).
    """
    seq_len = x.shape[seq_axis]
    device = device_of(x)
    if positions is None or (isinstance(positions, int) and not isinstance(positions, bool)):
        offset = 0 if positions is None else positions
        if offset < 0:
            raise ValueError(f"seq_positions offset must be >= 0; got {offset}")
        return xp.arange(offset, offset + seq_len, dtype=index_dtype, device=device)
    array_namespace(x, positions)
    if getattr(positions, "ndim", None) == 0:
        if not is_integer(xp, positions.dtype):
            raise TypeError(
                f"seq_positions must have an integer dtype; got {dtype_name(positions.dtype)}"
            )
        if is_concrete(positions) and int(positions) < 0:
            raise ValueError(f"seq_positions offset must be >= 0; got {int(positions)}")
        steps = xp.arange(seq_len, dtype=positions.dtype, device=device)
        return positions + steps
    batch = x.shape[0] if seq_axis != 0 else 1
    check_positions(xp, positions, batch=batch, seq_len=seq_len, device=device)
    return positions


def rope(
    x: Array,
    positions: Any = None,
    *,
    inv_freq: Any,
    attention_factor: float = 1.0,
    interleaved: bool = True,
    seq_axis: int = 1,
    feature_axis: int = -1,
) -> Array:
    """RoPE in one call: :func:`rope_cos_sin` for ``positions``, then :func:`apply_rope`.

    ``positions``: ``None`` (``0..seq-1``), an int or 0-D array offset, or integer positions
    ``(seq,)`` / ``(batch, seq)``. Works under ``jax.jit`` and ``jax.grad`` (with respect to
    ``x``) and ``torch.compile``.
    """
    xp = array_namespace(x)
    seq = normalize_axis(seq_axis, getattr(x, "ndim", 0) or 1, "seq_axis")
    index = index_dtype(xp, device_of(x))
    p = resolve_positions(xp, x, positions, seq_axis=seq, index_dtype=index)
    work = compute_dtype(xp, x.dtype)
    cos, sin = rope_cos_sin(p, inv_freq, attention_factor=attention_factor, dtype=work)
    return apply_rope(
        x, cos, sin, interleaved=interleaved, seq_axis=seq_axis, feature_axis=feature_axis
    )
