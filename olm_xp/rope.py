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

import math
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from olm_xp._angles import cos_sin, positions_placement
from olm_xp._compat import (
    array_namespace,
    can_write_in_chunks,
    compute_dtype,
    device_of,
    dtype_name,
    index_dtype,
    is_concrete,
    is_integer,
    is_torch_compiling,
    namespace_name,
    to_numpy,
    torch_out_kernels_ok,
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


def _table_target(
    table_shape: tuple[int, ...], x_shape: tuple[int, ...], seq_axis: int, name: str
) -> list[int]:
    """The leading broadcast shape of a ``(seq, k)``/``(batch, seq, k)`` table against ``x``
    (features last), or a ValueError naming the table and both shapes."""
    target = [1] * (len(x_shape) - 1)
    target[seq_axis] = table_shape[-2] if len(table_shape) >= 2 else 1
    if len(table_shape) == 3:
        if seq_axis == 0:
            raise ValueError(f"{name} with a batch axis needs seq_axis != 0")
        target[0] = table_shape[0]
    elif len(table_shape) != 2:
        raise ValueError(f"{name} must be (seq, d/2) or (batch, seq, d/2); got {table_shape}")
    if target[seq_axis] not in (1, x_shape[seq_axis]) or target[0] not in (1, x_shape[0]):
        raise ValueError(
            f"{name} of shape {table_shape} does not fit x of shape {x_shape} with "
            f"seq_axis={seq_axis} (expected (seq, d/2) or (batch, seq, d/2))"
        )
    return target


def _broadcast_table(
    xp: ArrayNamespace,
    table: Array,
    x_shape: tuple[int, ...],
    seq_axis: int,
    name: str,
    tail: tuple[int, ...] | None = None,
) -> Array:
    """``(seq, k)`` or ``(batch, seq, k)`` to a shape that broadcasts against ``x`` (features
    last, sequence at ``seq_axis``, batch at axis 0); the last axis becomes ``tail`` (a pair
    view ``(k/2, 2)``/``(2, k/2)`` of it) where given."""
    target = _table_target(tuple(table.shape), x_shape, seq_axis, name)
    return xp.reshape(table, (*target, *((table.shape[-1],) if tail is None else tail)))


# -- the rotation -------------------------------------------------------------------------------
#
# Eager cost is decided by the number of full-size temporaries (each fresh one page-faults on a
# CPU) and by passes over memory, and at decode size by the number of ops -- not by array-API
# overhead (performance.md). So the generic rotation is
#     out = x * cos_f + swap(x) * sin_f
# with *folded* tables: ``cos_f`` repeats each cosine over its pair, ``sin_f`` carries the sign
# (``[-s, s]`` half-split, ``[-s0, s0, -s1, s1, ...]`` interleaved), and ``swap`` exchanges the
# two members of every pair: a flip of the pair view ``(..., 2, d/2)``/``(..., d/2, 2)`` (a view
# on NumPy; XLA fuses it) or, interleaved, a stack of the pair's members (a product through a
# flipped size-2 axis runs without SIMD). New arrays are updated in place (never the
# input or a view of it). Where a fresh output is writeable on a CPU, chunks of positions are
# rotated into one ``empty`` output, so the temporaries stay in cache and malloc recycles them.
# Under ``torch.compile`` the half-table form ``(x1 c - x2 s, x2 c + x1 s)`` fuses best (0.9 of
# copy bandwidth) and is used instead. torch has two fast paths behind the same functions (see
# ``_FAST_PATHS``); the RoPE classes cache folded tables already shaped for their kernel.

_CHUNK_ELEMENTS = {"torch": 1 << 20, "default": 1 << 17}
"""Elements of ``x`` rotated per chunk on the chunked path, per namespace. NumPy (one thread):
512 KiB of float32, half of L2. torch: 4 MiB of float32 (L3 is 32 MiB), well above torch's
parallel grain, so each op on a chunk uses every intra-op thread: bfloat16 prefill took 0.29x
HF's time on an idle 2-core machine (32768-element chunks, one thread per op: 1.2x). Each op is
then a parallel region ending in a thread barrier, and on a CPU shared with other busy jobs a
barrier waits for a descheduled thread: there 1 Mi-element chunks were 1.5-3x HF and
32768-element ones 0.5-0.8x (benchmarks/README.md)."""
SMALL = 1 << 15
"""Below this many elements (a decode step) the fewest ops win: no chunks, no fast paths."""
_FAST_PATHS = True
"""torch fast paths behind the same functions, for inputs of at least ``SMALL`` elements:
interleaved pairs as complex numbers (one multiply), half-split as ``out=`` products and
``addcmul_`` (four kernels, no temporary). Each beat the generic path by a measured margin
(benchmarks/README.md). Tests set this to False to run the generic path on torch too."""
_STACK_PAIRS = frozenset({"numpy", "array_api_strict", "torch"})
"""Namespaces whose interleaved swap (above ``SMALL``) is ``stack((x1, x0))`` of the pair view:
a product through NumPy's flipped size-2 axis runs without SIMD (1.5-2x slower)."""
_FRESH_FLIP = frozenset({"torch", "jax"})
"""Namespaces whose ``flip`` returns a new array (torch copies; JAX rebinds ``*=``), so it
can be scaled in place; elsewhere (NumPy, array-api-strict) it may be a view of ``x``."""

Kernel = Callable[[Array, Array, Array], Array]
"""``kernel(x, cos, sin)``: the rotated ``x`` (exactly ``d`` features, last axis) in the
compute dtype, for tables already broadcast against it."""


def pair_shape(shape: tuple[int, ...], interleaved: bool) -> tuple[int, ...]:
    """``(..., d)`` as pairs: ``(..., d/2, 2)`` interleaved, ``(..., 2, d/2)`` half-split."""
    half = shape[-1] // 2
    return (*shape[:-1], half, 2) if interleaved else (*shape[:-1], 2, half)


def fold_tables(
    xp: ArrayNamespace, cos: Array, sin: Array, interleaved: bool
) -> tuple[Array, Array]:
    """Half tables ``(..., d/2)`` to folded ``(..., d)`` ones for ``x * cos_f + swap(x) * sin_f``.

    ``cos_f`` is each cosine repeated over its pair; ``sin_f`` is ``[-s, s]`` (half-split) or
    ``[-s0, s0, -s1, s1, ...]`` (interleaved). Negation is exact, so folded tables keep every
    entry's single rounding.
    """
    if not interleaved:
        return xp.concat((cos, cos), axis=-1), xp.concat((-sin, sin), axis=-1)
    shape = (*cos.shape[:-1], 2 * cos.shape[-1])
    cos_f = xp.reshape(xp.stack((cos, cos), axis=-1), shape)
    return cos_f, xp.reshape(xp.stack((-sin, sin), axis=-1), shape)


def table_rows(xp: ArrayNamespace, cos: Array, sin: Array, interleaved: bool) -> Array:
    """Half tables ``(..., d/2)`` in the form the RoPE classes cache, against the pair view of
    ``x`` (:func:`pair_shape`):

    * half-split: the 2x2 rotation of every pair, ``(..., 2, 2, d/2)``, entry ``[a, b]`` the
      weight of member ``b`` in output member ``a``: ``[[c, -s], [s, c]]``, so a decode step is
      one product and one sum over ``b`` (:func:`rotate_small`);
    * interleaved: ``(..., d/2, 2)`` pairs ``(c, s)``, which torch views as the complex
      ``c + i s`` with no copy (a product through a size-2 last axis is slow).
    """
    if interleaved:
        return xp.stack((cos, sin), axis=-1)
    first = xp.stack((cos, -sin), axis=-2)
    second = xp.stack((sin, cos), axis=-2)
    return xp.stack((first, second), axis=-3)


def rows_to_half(xp: ArrayNamespace, rows: Array, interleaved: bool) -> tuple[Array, Array]:
    """:func:`table_rows` back to the half tables ``cos``, ``sin`` (exact: no arithmetic)."""
    if interleaved:
        return rows[..., 0], rows[..., 1]
    return rows[..., 0, 0, :], rows[..., 1, 0, :]


def rotate_small(
    xp: ArrayNamespace, x: Array, rows: Array, interleaved: bool, work: DType, name: str = ""
) -> Array:
    """A decode-sized rotation in the fewest ops, for ``x`` with exactly ``d`` features last
    and :func:`table_rows` (in the compute dtype ``work``) broadcast against its pair view;
    the result is in ``x``'s dtype. ``name`` is ``xp``'s :func:`namespace_name` if known."""
    shape = x.shape
    name = name or namespace_name(xp)
    if not interleaved:  # one product, one sum over the input member
        if _FAST_PATHS and name == "torch":  # the same ops without the wrappers' overhead
            out = (x.unflatten(-1, (1, 2, shape[-1] // 2)) * rows).sum(-2).flatten(-2)
        else:
            pairs = xp.reshape(x, (*shape[:-1], 1, 2, shape[-1] // 2))
            out = xp.reshape(xp.sum(pairs * rows, axis=-2), shape)
    elif _FAST_PATHS and name == "torch" and not is_torch_compiling():
        torch = sys.modules["torch"]  # pairs times c + i s, both viewed as complex: one product
        pairs = (x if x.dtype == work else x.to(work)).reshape(*shape[:-1], shape[-1] // 2, 2)
        product = torch.view_as_complex(pairs) * torch.view_as_complex(rows)
        out = torch.view_as_real(product).reshape(shape)
    else:
        cos, sin = rows_to_half(xp, rows, interleaved)
        cos_pairs = xp.stack((cos, cos), axis=-1)
        sin_pairs = xp.stack((-sin, sin), axis=-1)
        out = _rotate_folded(xp, name, x, cos_pairs, sin_pairs, interleaved, True)
    return out if out.dtype == x.dtype else xp.astype(out, x.dtype)


def _rotate_folded(
    xp: ArrayNamespace,
    name: str,
    x: Array,
    cos: Array,
    sin: Array,
    interleaved: bool,
    small: bool,
) -> Array:
    """``x * cos_f + swap(x) * sin_f`` in the tables' dtype, for ``x`` with exactly ``d``
    features, last axis; the tables broadcast against its pair view (:func:`pair_shape`).

    A lower-precision ``x`` (bfloat16/float16) is cast to the tables' dtype first: kernels
    that mix dtypes are not vectorised on torch.
    """
    x = xp.reshape(xp.astype(x, cos.dtype, copy=False), pair_shape(tuple(x.shape), interleaved))
    if interleaved and name in _STACK_PAIRS and not (small and name in _FRESH_FLIP):
        swapped = xp.stack((x[..., 1], x[..., 0]), axis=-1)  # a new array
        fresh = True
    else:
        swapped = xp.flip(x, axis=-1 if interleaved else -2)
        fresh = name in _FRESH_FLIP
    if fresh:
        swapped *= sin
    else:
        swapped = swapped * sin
    out = x * cos
    out += swapped
    return xp.reshape(out, (*out.shape[:-2], -1))


class Scratch:
    """torch: compute-dtype buffers that every chunk of one call reuses, the first for the
    upcast chunk, the rest for results. Chunk temporaries then never come from the allocator,
    whose state (heap, or a fresh page-faulting mapping under glibc's dynamic mmap threshold)
    otherwise decides the speed of a lower-precision prefill (benchmarks/README.md)."""

    def __init__(self, work: DType, buffers: int = 2) -> None:
        self.work = work
        self.buffers = buffers
        self.flat: Array | None = None

    def upcast(self, x: Array) -> list[Array]:
        """The buffers shaped like ``x``, the first holding ``x`` in the compute dtype."""
        size = math.prod(x.shape)
        if self.flat is None or self.flat.numel() < self.buffers * size:  # first chunk: largest
            torch = sys.modules["torch"]
            self.flat = torch.empty(self.buffers * size, dtype=self.work, device=x.device)
        views = [self.flat[i * size : (i + 1) * size].view(x.shape) for i in range(self.buffers)]
        views[0].copy_(x)
        return views


def _torch_complex_kernel(x: Array, cis: Array, _: Array, scratch: Scratch | None = None) -> Array:
    """torch, interleaved: pairs as complex numbers times ``cis = cos + i sin``: one multiply,
    one pass, no temporary (for a lower-precision ``x``, one upcast into ``scratch`` first and
    the product written into it too)."""
    torch = sys.modules["torch"]
    real = cis.real.dtype
    pairs_shape = (*x.shape[:-1], x.shape[-1] // 2, 2)
    if x.dtype == real or scratch is None:
        pairs = (x if x.dtype == real else x.to(real)).reshape(pairs_shape)
        return torch.view_as_real(torch.view_as_complex(pairs) * cis).reshape(x.shape)
    up, out = scratch.upcast(x)
    product = torch.view_as_complex(out.view(pairs_shape))
    torch.mul(torch.view_as_complex(up.view(pairs_shape)), cis, out=product)
    return out


def _torch_halves_kernel(x: Array, cos: Array, sin: Array, out: Array | None = None) -> Array:
    """torch, half-split, ``x`` in the compute dtype: ``out=`` products and ``addcmul_`` into
    ``out`` (a chunk of the output) or one new tensor: four kernels, no temporary;
    ``cos``/``sin`` are half tables."""
    return _halves_out(x, cos, sin, sys.modules["torch"].empty_like(x) if out is None else out)


def _torch_lowp_kernel(x: Array, cos: Array, sin: Array, scratch: Scratch) -> Array:
    """torch, half-split, a lower-precision ``x`` (a chunk) and half tables: one upcast into
    ``scratch``, then :func:`_torch_halves_kernel`'s four kernels in float32 into its second
    buffer. Every kernel sees one dtype (a kernel mixing bfloat16 and float32 operands is not
    vectorised: 4-5x slower on these CPUs), and no ``flip`` (a gather kernel on torch): 0.5x
    the time of upcast-multiply-flip-addcmul per chunk (benchmarks/README.md)."""
    up, out = scratch.upcast(x)
    return _halves_out(up, cos, sin, out)


def _halves_out(x: Array, cos: Array, sin: Array, out: Array) -> Array:
    """``(x1 c - x2 s, x2 c + x1 s)`` written into ``out`` (``x``'s shape and dtype)."""
    torch = sys.modules["torch"]
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    out_first, out_second = out[..., :half], out[..., half:]
    torch.mul(first, cos, out=out_first)
    out_first.addcmul_(second, sin, value=-1)
    torch.mul(second, cos, out=out_second)
    out_second.addcmul_(first, sin)
    return out


def _torch_fast_path(name: str, x: Array, interleaved: bool, work: DType, writable: bool) -> str:
    """The torch fast path for ``x``, if any: ``"complex"`` (interleaved), ``"halves"``
    (half-split in the compute dtype) or ``"lowp"`` (half-split, lower precision, chunked);
    the last two use ``out=`` kernels, so they need ``writable`` (:func:`torch_out_kernels_ok`
    of ``x`` and the tables). Never on ``meta`` tensors, under ``torch.compile`` (Inductor fuses
    the generic form) or below ``SMALL`` elements."""
    if not _FAST_PATHS or name != "torch" or math.prod(x.shape) < SMALL:
        return ""
    if x.device.type == "meta" or is_torch_compiling():
        return ""
    if interleaved:
        return "complex"
    if not writable:
        return ""
    return "halves" if x.dtype == work else "lowp"


def _chunks(
    shape: tuple[int, ...], seq: int, rotary_dim: int, target: int
) -> list[tuple[slice, slice]]:
    """(batch block, sequence block) pairs that tile ``x``, each holding about ``target``
    rotated elements; empty when ``x`` is one chunk or less."""
    n = shape[seq]
    per_position = math.prod(shape) // max(n, 1) * rotary_dim // shape[-1]
    if n * per_position <= target:
        return []
    batches = [slice(None)]
    if seq > 0 and per_position > target and shape[0] > 1:  # split the batch too
        per_item = per_position // shape[0]
        size = max(1, target // per_item)
        batches = [slice(b, min(b + size, shape[0])) for b in range(0, shape[0], size)]
        per_position = per_item * min(size, shape[0])
    step = max(1, target // per_position)
    return [(b, slice(s, min(s + step, n))) for b in batches for s in range(0, n, step)]


def _rotate_chunked(
    xp: ArrayNamespace,
    kernel: Callable[..., Array],
    x: Array,
    cos: Array,
    sin: Array,
    chunks: list[tuple[slice, slice]],
    *,
    seq: int,
    rotary_dim: int,
    writes_into: bool = False,
) -> Array:
    """``kernel`` on each chunk, written into one new array (torch's ``__setitem__`` rounds
    a float32 chunk to the output's dtype in the copy itself); ``writes_into``: the kernel
    takes the output's chunk as ``out=`` and writes the result there itself (no copy)."""
    shape = tuple(x.shape)
    out = xp.empty(shape, dtype=x.dtype, device=device_of(x))
    if rotary_dim < shape[-1]:
        out[..., rotary_dim:] = x[..., rotary_dim:]
    middle = (slice(None),) * (len(shape) - seq - 2)
    features = slice(0, rotary_dim)
    cast_on_copy = namespace_name(xp) == "torch"

    def table_rows(table: Array, batch: slice, rows: slice) -> Array:
        index: list[slice] = [slice(None)] * (seq + 1)
        if seq > 0 and table.shape[0] != 1:
            index[0] = batch
        if table.shape[seq] != 1:
            index[seq] = rows
        return table[(*index, ...)]

    for batch, rows in chunks:
        lead = (batch, *(slice(None),) * (seq - 1)) if seq > 0 else ()
        index = (*lead, rows, *middle, features)
        cos_rows, sin_rows = table_rows(cos, batch, rows), table_rows(sin, batch, rows)
        if writes_into:
            kernel(x[index], cos_rows, sin_rows, out=out[index])
            continue
        rotated = kernel(x[index], cos_rows, sin_rows)
        out[index] = rotated if cast_on_copy else xp.astype(rotated, x.dtype, copy=False)
    return out


def _rotate_halves(
    xp: ArrayNamespace, x: Array, cos: Array, sin: Array, interleaved: bool
) -> Array:
    """Rotate the last axis of ``x`` with half tables (the form Inductor fuses best)."""
    half = x.shape[-1] // 2
    if interleaved:
        pairs = xp.reshape(x, (*x.shape[:-1], half, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = xp.stack((even * cos - odd * sin, odd * cos + even * sin), axis=-1)
        return xp.reshape(rotated, x.shape)
    first, second = x[..., :half], x[..., half:]
    return xp.concat((first * cos - second * sin, second * cos + first * sin), axis=-1)


def rotate(
    xp: ArrayNamespace,
    x: Array,
    cos: Array,
    sin: Array,
    *,
    interleaved: bool,
    seq: int,
    feature: int,
) -> Array:
    """The rotation behind :func:`apply_rope` and the RoPE classes, for validated input and a
    known ``xp``: ``seq``/``feature`` are normalised, distinct axes of ``x``; ``cos``/``sin``
    are ``(seq, d/2)`` or ``(batch, seq, d/2)`` half tables in ``xp`` on ``x``'s device."""
    moved = feature != x.ndim - 1
    if moved:
        x = xp.moveaxis(x, feature, -1)
        seq = seq if seq < feature else seq - 1
    name = namespace_name(xp)
    work = compute_dtype(xp, x.dtype)
    shape = tuple(x.shape)
    rotary_dim = 2 * cos.shape[-1]
    if rotary_dim > x.shape[-1]:
        raise ValueError(
            f"tables rotate {rotary_dim} features but x has only {x.shape[-1]} on feature_axis"
        )
    half = (rotary_dim // 2,)
    kernel: Kernel
    writable = name == "torch" and torch_out_kernels_ok(x, cos, sin)
    fast = _torch_fast_path(name, x, interleaved, work, writable)
    # The half-table form where a compiler fuses it best: torch.compile, and XLA for
    # interleaved pairs (bfloat16 prefill 0.66x the HF-style jnp code; the folded form with a
    # flipped size-2 axis: 1.13x; float32: the same; benchmarks/README.md).
    halves_form = is_torch_compiling() or (name == "jax" and interleaved)
    if halves_form or fast:
        cos = xp.astype(_broadcast_table(xp, cos, shape, seq, "cos", half), work, copy=False)
        sin = xp.astype(_broadcast_table(xp, sin, shape, seq, "sin", half), work, copy=False)
        if fast == "complex":
            cos = sin = sys.modules["torch"].complex(cos, sin)
            scratch = Scratch(work) if x.dtype != work and writable else None  # out= kernels
            kernel = partial(_torch_complex_kernel, scratch=scratch)
        elif fast == "halves":
            kernel = _torch_halves_kernel
        elif fast == "lowp":
            kernel = partial(_torch_lowp_kernel, scratch=Scratch(work))
        else:  # the half-table form, which Inductor and XLA fuse into one loop

            def kernel(x: Array, cos: Array, sin: Array) -> Array:
                x = xp.astype(x, work, copy=False)
                return _rotate_halves(xp, x, cos, sin, interleaved)

        # Chunked: an upcast per chunk, or the half-split out= kernels writing straight into
        # the output's chunks (their four passes then stay in cache: 0.6x the time unchunked).
        chunked = (fast != "" and x.dtype != work) or fast == "halves"
    else:
        small = math.prod(shape) < SMALL
        tail = pair_shape((rotary_dim,), interleaved)
        _table_target(tuple(cos.shape), shape, seq, "cos")  # the caller's shape in errors
        cos, sin = fold_tables(xp, cos, sin, interleaved)
        cos = xp.astype(_broadcast_table(xp, cos, shape, seq, "cos", tail), work, copy=False)
        sin = xp.astype(_broadcast_table(xp, sin, shape, seq, "sin", tail), work, copy=False)

        def kernel(x: Array, cos: Array, sin: Array) -> Array:
            return _rotate_folded(xp, name, x, cos, sin, interleaved, small)

        chunked = not small
    target = _CHUNK_ELEMENTS.get(name, _CHUNK_ELEMENTS["default"])
    chunks = _chunks(shape, seq, rotary_dim, target) if chunked else []
    if chunks and can_write_in_chunks(x):
        out = _rotate_chunked(
            xp,
            kernel,
            x,
            cos,
            sin,
            chunks,
            seq=seq,
            rotary_dim=rotary_dim,
            writes_into=fast == "halves",
        )
    else:
        head = x if rotary_dim == shape[-1] else x[..., :rotary_dim]
        out = xp.astype(kernel(head, cos, sin), x.dtype, copy=False)
        if rotary_dim < shape[-1]:
            out = xp.concat((out, x[..., rotary_dim:]), axis=-1)
    return xp.moveaxis(out, -1, feature) if moved else out


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
    float32 and rounded once. On a CPU, eager NumPy/torch/array-api-strict input is rotated in
    sequence chunks written into one new array (see ``benchmarks/``); the input is never
    modified.
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
    return rotate(xp, x, cos, sin, interleaved=interleaved, seq=seq, feature=feature)


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
