"""A small bounded, thread-safe cache of concrete tables (never a JAX tracer)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from olm_xp._compat import is_concrete
from olm_xp._typing import Array

_MIN_ROWS = 64
GRAPH_TABLE_ELEMENTS = 1 << 24
"""Largest cached table (elements: 64 MiB of float32) that a compiled graph holds as a constant
(``torch.compile``) or gathers rows from (``jax.jit``); above it the rows are computed in-graph."""


class GrowingTableCache:
    """Tables keyed by plain values (namespace name, device string, dtype name, ...).

    ``get(key, rows, build)`` returns a table with at least ``rows`` rows (along ``axis``,
    default 0): the cached one if it is long enough, else ``build(capacity)`` with
    ``capacity`` the next power of two, so a table grows to the largest position actually used
    in O(log n) rebuilds. Only concrete arrays are stored (a table built while ``jax.jit``
    traces is used once and dropped); at most ``max_entries`` keys are kept, least recently
    used first out.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._tables: OrderedDict[Hashable, Array] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, key: Hashable, rows: int, build: Callable[[int], Array], *, axis: int = 0
    ) -> Array:
        with self._lock:
            table = self._tables.get(key)
            if table is not None and table.shape[axis] >= rows:
                self._tables.move_to_end(key)
                return table
        capacity = max(_MIN_ROWS, 1 << max(rows - 1, 0).bit_length())
        table = build(capacity)
        if is_concrete(table):
            with self._lock:
                self._tables[key] = table
                self._tables.move_to_end(key)
                while len(self._tables) > self.max_entries:
                    self._tables.popitem(last=False)
        return table

    def __getstate__(self) -> dict[str, int]:
        """Copies and pickles start empty: tables are a memo, and locks do not pickle."""
        return {"max_entries": self.max_entries}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["max_entries"])  # type: ignore[misc]

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()

    def __len__(self) -> int:
        return len(self._tables)


_GRAPH_TABLES: OrderedDict[Hashable, Any] = OrderedDict()
_GRAPH_LOCK = threading.Lock()


def graph_table(key: Hashable, build: Callable[[], Array], *, max_entries: int = 16) -> Array:
    """The table a compiled graph holds as a constant (see :func:`olm_xp._compat.graph_constant`),
    built once per ``key`` of plain values and shared by every module with that configuration:
    the same object for every call in one graph, so Dynamo registers it once. Bounded, least
    recently used out; thread-safe."""
    with _GRAPH_LOCK:
        table = _GRAPH_TABLES.get(key)
        if table is not None:
            _GRAPH_TABLES.move_to_end(key)
            return table
    table = build()
    with _GRAPH_LOCK:
        table = _GRAPH_TABLES.setdefault(key, table)
        _GRAPH_TABLES.move_to_end(key)
        while len(_GRAPH_TABLES) > max_entries:
            _GRAPH_TABLES.popitem(last=False)
    return table
