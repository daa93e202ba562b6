"""The base class of every positional embedding, and its two small parts.

``PositionalEmbeddingBase`` gives olm's module surface without torch: ``forward``/``__call__``,
``extra_repr`` and a torch-like ``repr``, ``state_dict``/``load_state_dict``, ``train``/``eval``
and ``to``. Learned arrays live in :class:`Embedding` children (so olm's state-dict keys such as
``pos_embedding.weight`` fall out of the attribute names) and randomness in :class:`Dropout`.
"""

from __future__ import annotations

import copy
import importlib
import types
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from olm_xp._compat import (
    default_float_dtype,
    device_of,
    dtype_name,
    has_float64,
    is_torch_compiling,
    place,
    resolve_namespace,
)
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp._validation import check_probability, check_state_dict
from olm_xp.dropout import RandomKey, dropout

__all__ = ["Dropout", "Embedding", "PositionalEmbeddingBase"]


class Embedding:
    """A learned ``(num_embeddings, embedding_dim)`` table, ``weight``, as in ``nn.Embedding``."""

    def __init__(self, weight: Array) -> None:
        self.weight = weight

    @property
    def num_embeddings(self) -> int:
        return int(self.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.weight.shape[1])

    def __repr__(self) -> str:
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"


class Dropout:
    """Inverted dropout with probability ``p`` and its own seeded random stream.

    Each training-mode call without an explicit ``key`` draws a fresh seed from the stream, so
    a module built with ``seed=s`` drops the same elements in the same calls on every run.
    Under ``torch.compile`` the mask comes from torch's global generator instead (a host seed
    would be frozen into the graph).
    """

    def __init__(self, p: float = 0.0, *, seed: int | np.random.Generator | None = None) -> None:
        self.p = check_probability("dropout", p)
        self._rng = np.random.default_rng(seed)

    def __call__(self, x: Array, *, training: bool, key: RandomKey = None) -> Array:
        if not training or self.p == 0.0:
            return x
        if key is None and not is_torch_compiling():  # compiled: torch's global generator
            key = int(self._rng.integers(0, 2**31 - 1))
        return dropout(x, self.p, key=key)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})" if self.p > 0.0 else "Identity()"


class PositionalEmbeddingBase(ABC):
    """Abstract base class for all positional embedding implementations.

    Positional embeddings add information about token positions: learned (absolute) and
    sinusoidal ones add to the token embeddings, RoPE rotates queries and keys, ALiBi returns a
    bias for the attention scores. Subclasses implement :meth:`forward`.

    A module starts in training mode, as a torch module does; dropout acts only there.
    """

    def __init__(self) -> None:
        self.training = True

    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Apply positional information to input array(s)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        """One-line configuration shown by ``repr``; subclasses override it."""
        return ""

    def _children(self) -> Iterator[tuple[str, Embedding | Dropout]]:
        for name, value in vars(self).items():
            if isinstance(value, Embedding | Dropout):
                yield name, value

    def __repr__(self) -> str:
        lines = [f"({name}): {child!r}" for name, child in self._children()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "".join(f"\n  {line}" for line in ([extra] if extra else []) + lines)
        return f"{type(self).__name__}({body}\n)"

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PositionalEmbeddingBase:
        """Set training mode (dropout active) and return ``self``."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be a bool; got {type(mode).__name__} {mode!r}")
        self.training = mode
        return self

    def eval(self) -> PositionalEmbeddingBase:
        """Set evaluation mode (dropout is the identity) and return ``self``."""
        return self.train(False)

    # -- learned state -----------------------------------------------------------------------
    def _tables(self) -> dict[str, Embedding]:
        return {name: child for name, child in self._children() if isinstance(child, Embedding)}

    def state_dict(self) -> dict[str, Array]:
        """The learned arrays by olm's keys (e.g. ``pos_embedding.weight``); empty if none."""
        return {f"{name}.weight": table.weight for name, table in self._tables().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Load learned arrays from any backend into this module's namespace, device and dtype.

        Raises ``ValueError`` for a missing or unexpected key (``strict=True``) or a wrong shape
        and ``TypeError`` for a value that is not a real floating array; on any error the module
        is left unchanged.
        """
        own = self.state_dict()
        expected = {key: tuple(value.shape) for key, value in own.items()}
        values = check_state_dict(type(self).__name__, expected, state_dict, strict)
        assert self.xp is not None
        placed = {key: place(v, self.xp, self.device, self.dtype) for key, v in values.items()}
        tables = self._tables()
        for key, array in placed.items():
            tables[key.removesuffix(".weight")].weight = array

    # -- copying -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Modules pickle and deep-copy: the namespace module is stored by name."""
        state = dict(vars(self))
        if isinstance(state.get("xp"), types.ModuleType):
            state["xp"] = state["xp"].__name__
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("xp"), str):
            state["xp"] = importlib.import_module(state["xp"])
        vars(self).update(state)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        """A copy with its own arrays; the namespace and device objects are shared."""
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for name, value in vars(self).items():
            shared = name in ("xp", "device")
            vars(clone)[name] = value if shared else copy.deepcopy(value, memo)
        return clone

    # -- placement ---------------------------------------------------------------------------
    # Modules without learned arrays (sinusoidal, RoPE) follow their input and keep these None.
    xp: ArrayNamespace | None = None
    device: Device = None
    dtype: DType = None

    def _set_placement(self, xp: Any, device: Device, dtype: DType) -> None:
        self.xp = resolve_namespace(xp)
        self.dtype = default_float_dtype(self.xp, device) if dtype is None else dtype
        if not self.xp.isdtype(self.dtype, "real floating"):
            raise TypeError(f"dtype must be a real floating dtype; got {dtype_name(self.dtype)}")
        self.device = device

    def to(self, *, xp: Any = None, device: Device = None, dtype: DType = None) -> Any:
        """Move the learned arrays to another namespace, device and/or dtype; return ``self``.

        Unspecified parts stay as they are (a new ``xp`` alone moves to its default device).
        A module without learned arrays follows its input and is returned unchanged.
        """
        if self.xp is None:
            return self
        new_xp = self.xp if xp is None else resolve_namespace(xp)
        same_xp = new_xp is self.xp
        new_device = device if device is not None or not same_xp else self.device
        new_dtype = dtype
        if new_dtype is None and same_xp:
            new_dtype = self.dtype
        elif new_dtype is None:  # same dtype by name where the new device has it
            name = dtype_name(self.dtype)
            if name == "float64" and not has_float64(new_xp, new_device):
                name = "float32"
            new_dtype = getattr(new_xp, name)
        moved = {
            name: place(table.weight, new_xp, new_device, new_dtype)
            for name, table in self._tables().items()
        }
        self._set_placement(new_xp, new_device, new_dtype)
        for name, weight in moved.items():
            self._tables()[name].weight = weight
            self.device = device_of(weight)
        return self
