"""Learned absolute position embeddings: the table initialiser and the lookup-and-add.

``add_position_embeddings`` is the one lookup-and-add used by both the learned
(:class:`~olm_xp.nn.embeddings.positional.AbsolutePositionalEmbedding`) and the sinusoidal
embedding classes.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from olm_xp._compat import (
    array_namespace,
    can_write_in_chunks,
    compute_dtype,
    default_float_dtype,
    device_of,
    namespace_name,
    resolve_namespace,
    take_rows,
    torch_out_kernels_ok,
)
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp._validation import (
    check_feature_size,
    check_floating_input,
    check_positions,
    check_positive_int,
)
from olm_xp.rope import Scratch, _chunks

__all__ = ["add_position_embeddings", "normal_table"]

_CHUNK_ELEMENTS = {"torch": 1 << 20, "default": 1 << 17}
"""Elements per chunk when a lower-precision ``x`` is added chunk by chunk (see olm_xp.rope).
torch: with reused chunk buffers, 1 Mi elements was the fastest of 256 Ki-2 Mi on an idle
machine (bfloat16 ``(8, 2048, 1024)``: 1.06x the native bfloat16 sum, 256 Ki: 1.27x;
benchmarks/README.md)."""
_NATIVE = frozenset({"torch", "numpy"})
"""Namespaces whose sum of two lower-precision arrays is computed in float32 and rounded once."""
_FAST_PATHS = True
"""A lower-precision ``x`` plus rows of its own dtype as one native sum on torch and NumPy
(they compute it in float32 and round once, as the generic path does), and torch chunks summed
in reused buffers (:class:`~olm_xp.rope.Scratch`); tests set it to False to run the generic
path there too."""


def normal_table(
    num_positions: int,
    embed_dim: int,
    *,
    seed: int | np.random.Generator | None = None,
    xp: Any = None,
    device: Device = None,
    dtype: DType = None,
) -> Array:
    """A ``(num_positions, embed_dim)`` table drawn from N(0, 1), like ``nn.Embedding``'s init.

    The values are drawn on the host by NumPy's PCG64 from ``seed``, so one seed gives
    identical weights on every backend and device (``seed=None`` draws fresh entropy).
    ``xp``/``device``/``dtype`` place the result (default: NumPy, its default float dtype).
    """
    num_positions = check_positive_int("num_positions", num_positions)
    embed_dim = check_positive_int("embed_dim", embed_dim)
    xp = resolve_namespace(xp)
    dtype = default_float_dtype(xp, device) if dtype is None else dtype
    host = np.random.default_rng(seed).standard_normal((num_positions, embed_dim))
    return xp.asarray(host, dtype=dtype, device=device)


def add_position_embeddings(x: Array, table: Array, positions: Array | None = None) -> Array:
    """``x + table[positions]``: look up one table row per token and add it.

    Parameters
    ----------
    x
        ``(batch, seq, embed_dim)`` floating array.
    table
        ``(num_positions, embed_dim)`` array in ``x``'s namespace and on its device.
    positions
        ``None`` for ``0..seq-1``, or integer positions of shape ``(seq,)`` or
        ``(batch or 1, seq)``, each in ``[0, num_positions)`` (checked where concrete).

    Returns
    -------
    Array with ``x``'s namespace, device, dtype and shape. The sum is computed in at least
    float32 and rounded once to ``x``'s dtype.
    """
    xp = array_namespace(x, table, positions)
    check_floating_input(xp, x, name="x", ndim=3)
    batch, seq_len, embed_dim = x.shape
    num_positions, table_dim = table.shape
    check_feature_size("x", embed_dim, table_dim, what="the table's embed_dim")
    if positions is None:
        if seq_len > num_positions:
            raise ValueError(
                f"x has seq_len={seq_len} but the table holds only {num_positions} positions "
                f"(max_seq_len); pass seq_positions or use a longer table"
            )
    else:
        check_positions(
            xp, positions, batch=batch, seq_len=seq_len, device=device_of(x), limit=num_positions
        )
    work = compute_dtype(xp, x.dtype)
    name = namespace_name(xp)
    native = table.dtype == x.dtype and (x.dtype == work or (_FAST_PATHS and name in _NATIVE))
    if not native and x.dtype != work and can_write_in_chunks(x):
        target = _CHUNK_ELEMENTS.get(name, _CHUNK_ELEMENTS["default"])
        chunks = _chunks(tuple(x.shape), 1, embed_dim, target)
        if chunks:
            return _add_in_chunks(xp, x, table, positions, chunks, work)
    if positions is None:
        return _add_rows(xp, x, table[None, :seq_len, :], work, native=native, fresh=False)
    return _add_rows(xp, x, take_rows(xp, table, positions), work, native=native, fresh=True)


def _add_rows(
    xp: ArrayNamespace, x: Array, rows: Array, work: DType, *, native: bool, fresh: bool
) -> Array:
    """``x + rows`` in at least ``work`` (float32), rounded once to ``x``'s dtype, with as few
    new full-size arrays and kernels as the inputs allow (performance.md: on a CPU each new
    array page-faults).

    ``native``: one native sum does that (rows of ``x``'s dtype, which is ``work``, or a
    lower precision that torch and NumPy sum in float32 and round once: ``_FAST_PATHS``).
    ``fresh``: ``rows`` is a new array (a gather), so when it has ``x``'s shape the sum is
    accumulated into it.
    """
    same = rows.dtype == x.dtype
    if native:
        if fresh and tuple(rows.shape) == tuple(x.shape):
            rows += x  # rows is ours to update
            return rows
        return x + rows
    rows = xp.astype(rows, work, copy=False)
    if x.dtype == work:
        # a gather, or a new array from the cast above: ours to update
        if (fresh or not same) and tuple(rows.shape) == tuple(x.shape):
            rows += x
            return rows
        return x + rows
    return xp.astype(xp.astype(x, work) + rows, x.dtype)


def _add_in_chunks(
    xp: ArrayNamespace,
    x: Array,
    table: Array,
    positions: Array | None,
    chunks: list[tuple[slice, slice]],
    work: DType,
) -> Array:
    """A lower-precision ``(batch, seq, D)`` ``x`` plus rows of a higher-precision table,
    summed in ``work`` chunk by chunk (rows looked up per chunk) into one new array, so no
    full-size ``work`` copy of ``x`` or of the rows is made. On torch each chunk is upcast
    into one reused buffer, the rows gathered into a second one, and the sum rounded to
    ``x``'s dtype in the copy into the output."""
    out = xp.empty(x.shape, dtype=x.dtype, device=device_of(x))
    # torch: reused buffers and out= kernels, unless a table that needs a gradient is read
    reuse = _FAST_PATHS and namespace_name(xp) == "torch" and torch_out_kernels_ok(table)
    gather_into = reuse and positions is not None and table.dtype == work
    scratch = Scratch(work, buffers=2 if gather_into else 1) if reuse else None
    per_item = positions is not None and positions.ndim == 2 and positions.shape[0] != 1
    for batch, columns in chunks:
        block = x[batch, columns, :]
        buffers = None if scratch is None else scratch.upcast(block)  # [block in work, spare]
        if positions is None:
            rows = table[None, columns, :]
        else:
            index = positions[batch, columns] if per_item else positions[..., columns]
            if gather_into:  # rows straight into the spare buffer, no allocation
                assert buffers is not None
                flat = buffers[1].view(-1, table.shape[1])[: math.prod(index.shape)]
                sys.modules["torch"].index_select(table, 0, index.reshape(-1), out=flat)
                rows = flat.view(*index.shape, table.shape[1])
            else:
                rows = take_rows(xp, table, index)
        if buffers is None:
            total = xp.astype(block, work) + xp.astype(rows, work, copy=False)
            out[batch, columns, :] = xp.astype(total, x.dtype)
        else:
            buffers[0] += rows
            out[batch, columns, :] = buffers[0]  # torch rounds to the output's dtype in the copy
    return out
