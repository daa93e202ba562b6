"""Sinusoidal positional embedding (olm's ``SinusoidalPositionalEmbedding``)."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from olm_xp._cache import GRAPH_TABLE_ELEMENTS, GrowingTableCache, graph_table
from olm_xp._compat import (
    array_namespace,
    compute_dtype,
    device_key,
    device_of,
    dtype_name,
    graph_constant,
    is_concrete,
    is_jax_tracer,
    is_torch_compiling,
    jax_lookup_or_compute,
    max_value,
    namespace_name,
    resolve_namespace,
)
from olm_xp._typing import Array, ArrayNamespace
from olm_xp._validation import (
    check_feature_size,
    check_floating_input,
    check_positions,
    check_positive_int,
    check_positive_number,
)
from olm_xp.absolute import add_position_embeddings
from olm_xp.dropout import RandomKey
from olm_xp.nn.embeddings.positional.base import Dropout, PositionalEmbeddingBase
from olm_xp.sinusoidal import sinusoidal_table

__all__ = ["SinusoidalPositionalEmbedding"]


@graph_constant
def _table_constant(embed_dim: int, base: float, rows: int, device: Any, dtype: Any) -> Array:
    """The ``(1, rows, embed_dim)`` sinusoidal table on torch, for a forward under
    ``torch.compile``: a constant of the graph (:func:`graph_constant`; plain-value arguments,
    shared by modules alike) instead of rows computed in the graph on every call."""
    xp = resolve_namespace(sys.modules["torch"])
    key = ("sinusoidal", embed_dim, base, rows, device_key(device), dtype_name(dtype))

    def build() -> Array:
        # a leading unit axis, taken off in the graph: several such constants in one graph
        # then pass AOT autograd (a constant sliced directly failed its unique-source check)
        table = sinusoidal_table(rows, embed_dim, base=base, xp=xp, device=device, dtype=dtype)
        return table[None, ...]

    return graph_table(key, build)


class SinusoidalPositionalEmbedding(PositionalEmbeddingBase):
    """Sinusoidal positional embedding (Vaswani et al. 2017), olm's numbers.

    ``PE(p, 2i) = sin(p / base**(2i/D))``, ``PE(p, 2i+1) = cos(p / base**(2i/D))``; odd ``D``
    ends with a sine column. Tables are built lazily per (namespace, device, dtype), in float64
    and rounded once, grow to the largest position used (``max_seq_len`` is a hint, not a
    limit), are bounded and thread-safe, and never hold a JAX tracer.

    Parameters
    ----------
    embed_dim
        Feature size ``D``.
    max_seq_len
        Kept for olm compatibility; positions beyond it extend the table.
    base
        Wavelength base.
    dropout
        Dropout probability in [0, 1) applied to ``x + pe`` in training mode.
    seed
        Seeds the dropout stream.
    """

    def __init__(
        self,
        embed_dim: int,
        max_seq_len: int = 5000,
        base: float = 10000,
        dropout: float = 0.0,
        *,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.max_seq_len = check_positive_int("max_seq_len", max_seq_len)
        self.base = check_positive_number("base", base)
        self.dropout = Dropout(dropout, seed=seed)
        self._cache = GrowingTableCache()

    def forward(
        self, x: Array, seq_positions: Array | None = None, *, key: RandomKey = None
    ) -> Array:
        """Add the sinusoidal encoding of each position to ``x``.

        Parameters
        ----------
        x
            ``(batch, seq, embed_dim)`` floating array, any namespace and device.
        seq_positions
            Optional integer positions ``(batch, seq)`` or ``(seq,)`` (any non-negative value);
            default ``0..seq-1``.
        key
            Optional randomness for this call's dropout; default: the module's seeded stream.

        Returns
        -------
        ``x + pe`` (then dropout), with ``x``'s namespace, device, dtype and shape.
        """
        xp = array_namespace(x)
        check_floating_input(xp, x, name="x", ndim=3)
        batch, seq_len, embed_dim = x.shape
        check_feature_size("x", embed_dim, self.embed_dim, what="embed_dim")
        dtype = compute_dtype(xp, x.dtype)
        device = device_of(x)
        if seq_positions is not None:
            array_namespace(x, seq_positions)
            check_positions(xp, seq_positions, batch=batch, seq_len=seq_len, device=device)
        elif is_torch_compiling():
            small = self.max_seq_len * self.embed_dim <= GRAPH_TABLE_ELEMENTS
            if small and seq_len <= self.max_seq_len:  # a guard if Dynamo made seq_len symbolic
                # narrow: a slice with a symbolic end would specialise (recompile per length)
                table = _table_constant(self.embed_dim, self.base, self.max_seq_len, device, dtype)
                rows = sys.modules["torch"].narrow(table[0], 0, 0, seq_len)
                out = add_position_embeddings(x, rows)
                return self.dropout(out, training=self.training, key=key)
            seq_positions = xp.arange(seq_len, device=device)  # rows computed in-graph
        if seq_positions is not None and not is_concrete(seq_positions):
            out = self._add_traced_rows(xp, x, seq_positions, dtype)
            return self.dropout(out, training=self.training, key=key)
        if seq_positions is None:
            rows = seq_len
        else:  # concrete: grow the table to the largest position (empty positions need none)
            rows = max_value(seq_positions) + 1 if seq_positions.shape[-1] else 0
        out = add_position_embeddings(x, self._table(xp, device, dtype, rows), seq_positions)
        return self.dropout(out, training=self.training, key=key)

    def _table(self, xp: ArrayNamespace, device: Any, dtype: Any, rows: int) -> Array:
        """The cached table, at least ``rows`` positions (built on the host, concrete)."""
        return self._cache.get(
            (namespace_name(xp), device_key(device), dtype_name(dtype)),
            rows,
            lambda capacity: sinusoidal_table(
                capacity, self.embed_dim, base=self.base, xp=xp, device=device, dtype=dtype
            ),
        )

    def _add_traced_rows(self, xp: ArrayNamespace, x: Array, positions: Array, dtype: Any) -> Array:
        """``x`` plus the rows of positions whose values are unknown (``jax.jit``,
        ``torch.compile``, Dask), in ``dtype``, rounded once to ``x``'s dtype.

        Under ``jax.jit`` the rows are gathered from the cached ``max_seq_len``-row table (what
        native code does) when every position is below ``max_seq_len``, else computed in-graph
        (:func:`~olm_xp._compat.jax_lookup_or_compute`; each branch fuses its add).
        Elsewhere, and for tables above :data:`~olm_xp._cache.GRAPH_TABLE_ELEMENTS`, they are
        computed in-graph.
        """

        def add(rows: Array) -> Array:
            return xp.astype(xp.astype(x, dtype, copy=False) + rows, x.dtype, copy=False)

        def computed(p: Array) -> Array:
            return add(sinusoidal_table(p, self.embed_dim, base=self.base, dtype=dtype))

        too_big = self.max_seq_len * self.embed_dim > GRAPH_TABLE_ELEMENTS
        if not is_jax_tracer(positions) or too_big or not math.prod(positions.shape):
            return computed(positions)
        table = self._table(xp, device_of(positions), dtype, self.max_seq_len)
        rows = table.shape[0]
        if rows * self.embed_dim > GRAPH_TABLE_ELEMENTS:  # grown by long eager calls
            return computed(positions)

        def gathered(p: Array) -> Array:
            # jnp indexing by a (batch, seq) array: no reshape merging sharded axes (XLA
            # would all-gather the positions for it)
            return add(table[p])

        return jax_lookup_or_compute(xp, positions, rows, gathered, computed)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, max_seq_len={self.max_seq_len}, base={self.base:g}"
