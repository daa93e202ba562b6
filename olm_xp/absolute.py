"""Learned absolute position embeddings: the table initialiser and the lookup-and-add.

``add_position_embeddings`` is the one lookup-and-add used by both the learned
(:class:`~olm_xp.nn.embeddings.positional.AbsolutePositionalEmbedding`) and the sinusoidal
embedding classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from olm_xp._compat import (
    array_namespace,
    compute_dtype,
    default_float_dtype,
    device_of,
    resolve_namespace,
)
from olm_xp._typing import Array, Device, DType
from olm_xp._validation import (
    check_feature_size,
    check_floating_input,
    check_positions,
    check_positive_int,
)

__all__ = ["add_position_embeddings", "normal_table"]


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
        rows = table[None, :seq_len, :]
    else:
        check_positions(
            xp, positions, batch=batch, seq_len=seq_len, device=device_of(x), limit=num_positions
        )
        flat = xp.take(table, xp.reshape(positions, (-1,)), axis=0)
        rows = xp.reshape(flat, (*positions.shape, embed_dim))
    work_dtype = compute_dtype(xp, x.dtype)
    total = xp.astype(x, work_dtype, copy=False) + xp.astype(rows, work_dtype, copy=False)
    return xp.astype(total, x.dtype, copy=False)
