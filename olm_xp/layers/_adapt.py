"""What the torch and Flax adapters share; imports no framework.

* :func:`check_state_dict` -- the key, shape and dtype checks of ``load_state_dict``;
* :func:`device_label` and :func:`check_same_device` -- the "nothing moves across devices
  without saying so" rule of ``load_state_dict``;
* :func:`configuration` -- the core object's public configuration, copied onto the adapter
  (``module.head_dim``, ``module.max_seq_len``, ...);
* :class:`PicklableTableCache` -- the core's table cache, but copyable (``copy.deepcopy``).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from olm_xp._cache import GrowingTableCache
from olm_xp._compat import array_namespace, device_of, namespace_name
from olm_xp._validation import check_state_dict
from olm_xp.nn.embeddings.positional.base import (
    Dropout,
    Embedding,
    PositionalEmbeddingBase,
)

__all__ = [
    "PicklableTableCache",
    "check_same_device",
    "check_state_dict",
    "configuration",
    "core_signature",
    "device_label",
    "strip_placement",
    "table_names",
]

_NOT_CONFIGURATION = {"training", "xp", "device", "dtype"}


def table_names(core: PositionalEmbeddingBase) -> tuple[str, ...]:
    """The attribute names of the core object's learned tables (``("pos_embedding",)``)."""
    return tuple(name for name, child in vars(core).items() if isinstance(child, Embedding))


def configuration(core: PositionalEmbeddingBase) -> dict[str, Any]:
    """The core object's public configuration attributes (no tables, dropout or placement)."""
    return {
        name: value
        for name, value in vars(core).items()
        if not name.startswith("_")
        and name not in _NOT_CONFIGURATION
        and not isinstance(value, Embedding | Dropout)
    }


def strip_placement(extra_repr: str) -> str:
    """The core's ``extra_repr`` without its ``dtype=``/``device=`` items (the framework's
    module shows its parameters itself)."""
    items = [item for item in extra_repr.split(", ") if item]
    kept = [item for item in items if not re.match(r"(dtype|device)=", item)]
    return ", ".join(kept)


def device_label(x: Any) -> str:
    """A device name comparable across libraries: ``"cpu"`` for host memory of any library
    (NumPy, torch CPU, every JAX CPU device), else ``"<platform>:<index>"`` (``"cuda:0"``)
    or the library's own name (``"meta"``); devices of a sharded JAX array joined by commas."""
    kind = namespace_name(array_namespace(x))
    if kind == "numpy":
        return "cpu"
    if kind == "torch":
        return "cpu" if x.device.type == "cpu" else str(x.device)
    if kind == "jax":
        labels = {"cpu" if d.platform == "cpu" else f"{d.platform}:{d.id}" for d in x.devices()}
        return ",".join(sorted(labels))
    return str(device_of(x))


def core_signature(cls: Any) -> Any:
    """Class decorator: the adapter shows its core class's (``cls._core_class``) constructor
    signature and parameter docs."""
    cls.__signature__ = inspect.signature(cls._core_class)
    doc = inspect.getdoc(cls._core_class) or ""
    cls.__doc__ = f"{cls.__doc__}\n\n{doc}"
    return cls


def check_same_device(
    owner: str, key: str, value: Any, target: str, map_location: str | None
) -> None:
    """``value`` may be loaded into a parameter on device ``target``.

    Host arrays of any library load into a host module (NumPy, torch CPU and JAX CPU are one
    memory). Anything else that would cross devices (a CUDA tensor into a CPU module, CPU
    weights into a CUDA module) needs ``map_location=`` naming the module's device; a
    ``map_location`` that names another device is an error too (move the module first).
    """
    source = device_label(value)
    if map_location is not None:
        if map_location != target:
            raise ValueError(
                f"load_state_dict for {owner}: map_location={map_location!r} but the module's "
                f"parameters are on {target!r}; map_location names where the weights go, so "
                f"pass map_location={target!r}, or move the module first with "
                f".to({map_location!r})"
            )
        return
    if source != target:
        raise ValueError(
            f"load_state_dict for {owner}: {key} is on device {source!r} but the module's "
            f"parameters are on {target!r}, and weights are not moved across devices "
            f"silently: pass map_location={target!r} to copy them there, or move the module "
            f"to {source!r} first"
        )


class PicklableTableCache(GrowingTableCache):
    """The core's bounded table cache that ``copy.deepcopy`` and pickle can copy (the copy
    starts empty: caches are rebuilt on demand)."""

    def __getstate__(self) -> dict[str, Any]:
        return {"max_entries": self.max_entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_entries"])  # type: ignore[misc]
