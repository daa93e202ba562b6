"""olm_xp's positional embeddings as ``torch.nn.Module`` classes (``pip install 'olm-xp[torch]'``).

Each class has olm's name and constructor signature and holds one core object of
:mod:`olm_xp.nn.embeddings.positional` (``module.core``), which does the validation and the
maths; the module adds what torch owns:

* learned tables are ``nn.Parameter`` inside ``nn.Embedding`` children under olm's keys
  (``pos_embedding.weight``; T5's ``relative_attention_bias.weight``), so
  ``load_state_dict(olm_module.state_dict())`` works, and the core reads the live parameter
  on every call (``torch.func.functional_call`` works too);
* ALiBi keeps its ``slopes`` in a non-persistent buffer, so its bias follows ``.to()``;
* dropout is ``nn.Dropout`` (torch's RNG, ``train()``/``eval()``);
* table caches (sinusoidal rows, RoPE cos/sin) are non-persistent buffers (``pe``,
  ``cos_sin``; ``cos_sin_key`` for xPos keys): built lazily in eager mode on the input's
  device in the compute dtype (float32 for bf16/fp16/fp32 inputs, float64 for float64), grown
  to the largest position used, absent from ``state_dict()``, moved by ``.to(device)`` and
  rebuilt from the exact float64 maths if ``.to(dtype)`` (or ``.half()``) recast them. Under
  ``torch.compile`` the table of ``max_seq_len`` rows is a constant of the graph (built on the
  host while Dynamo traces, where no buffer is written), or, for tensor positions, the rows are
  computed in-graph; no recompile per decoding step. ``torch.autocast`` never makes a table
  bfloat16: the arithmetic runs in float32 and the result comes back in the input's dtype.

``load_state_dict`` checks keys, shapes and dtypes with clear ``ValueError``/``TypeError``
messages, accepts NumPy and JAX arrays as well as tensors, and never moves weights across
devices silently: a tensor on another device than the module's parameters is an error unless
``map_location=`` names the module's device (inside a larger model, whose ``load_state_dict``
has no such keyword, move the tensors first, e.g. ``torch.load(..., map_location=...)``).
"""

from __future__ import annotations

import copy
import importlib
import threading
import types
from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar, NamedTuple

try:
    import torch
    from torch import Tensor, nn
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "olm_xp.layers.torch needs PyTorch: pip install 'olm-xp[torch]' "
        f"(importing torch failed: {err})"
    ) from err

import numpy as np

from olm_xp._cache import _MIN_ROWS
from olm_xp._compat import device_key, dtype_name, is_concrete, to_numpy
from olm_xp._validation import check_probability
from olm_xp.layers._adapt import (
    check_same_device,
    check_state_dict,
    configuration,
    core_signature,
    device_label,
    strip_placement,
    table_names,
)
from olm_xp.nn.embeddings import positional
from olm_xp.nn.embeddings.positional.base import Embedding as CoreEmbedding
from olm_xp.nn.embeddings.positional.base import PositionalEmbeddingBase as CoreModule

__all__ = [
    "ALiBiPositionalBias",
    "AbsolutePositionalEmbedding",
    "Llama3RotaryPositionalEmbedding",
    "PartialRotaryPositionalEmbedding",
    "PartialScaledRotaryPositionalEmbedding",
    "PositionalEmbeddingBase",
    "RotaryPositionalEmbedding",
    "ScaledRotaryPositionalEmbedding",
    "SinusoidalPositionalEmbedding",
    "T5RelativePositionBias",
]


class _LiveTable(CoreEmbedding):
    """Stands in for a core object's learned table: ``weight`` is the torch module's current
    parameter, looked up on every access (after ``.to()``, ``load_state_dict(assign=True)``
    or inside ``torch.func.functional_call``)."""

    def __init__(self, owner: nn.Module, name: str) -> None:
        self._owner = owner
        self._name = name

    @property
    def weight(self) -> Any:
        return getattr(self._owner, self._name).weight

    @weight.setter
    def weight(self, value: Any) -> None:
        raise AttributeError(
            f"set {self._name}.weight through the torch module (load_state_dict or "
            f"module.{self._name}.weight.data.copy_(...))"
        )


class _BufferCache:
    """The core's table cache, stored in non-persistent buffers of the torch module.

    ``get(key, rows, build, axis=0)`` follows the core's ``GrowingTableCache`` protocol (key:
    namespace, device, dtype [, role]; rows counted along ``axis``). A buffer is reused while
    it is on the requested device, in the requested dtype *as built* (a table recast by
    ``.to(dtype)`` is rebuilt from the float64 maths) and long enough; otherwise it is rebuilt
    with a power-of-two number of rows. Only concrete torch tensors are stored (never ``meta``
    or fake tensors).
    """

    def __init__(self, owner: nn.Module, name: str, *, separate_key_table: bool) -> None:
        self._owner = owner
        self._name = name
        self._separate_key_table = separate_key_table
        self._built: dict[str, str] = {}  # buffer name -> dtype name it was built in
        self._lock = threading.Lock()

    def buffer_names(self) -> tuple[str, ...]:
        return (self._name, f"{self._name}_key") if self._separate_key_table else (self._name,)

    def _buffer_name(self, key: tuple[Any, ...]) -> str:
        role = key[3] if len(key) > 3 else "query"
        return f"{self._name}_key" if self._separate_key_table and role == "key" else self._name

    def get(self, key: Hashable, rows: int, build: Callable[[int], Any], *, axis: int = 0) -> Any:
        assert isinstance(key, tuple)
        namespace, device, dtype = key[:3]
        name = self._buffer_name(key)
        with self._lock:
            table = self._owner._buffers.get(name)
            if (
                table is not None
                and namespace == "torch"
                and device_key(table.device) == device
                and dtype_name(table.dtype) == dtype == self._built.get(name)
                and table.shape[axis] >= rows
            ):
                return table
        capacity = max(_MIN_ROWS, 1 << max(rows - 1, 0).bit_length())
        table = build(capacity)
        if namespace == "torch" and is_concrete(table):
            with self._lock:
                self._owner._buffers[name] = table
                self._built[name] = dtype
        return table

    def clear(self) -> None:
        with self._lock:
            for name in self.buffer_names():
                self._owner._buffers[name] = None
            self._built.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if key != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()


class _ModuleName(NamedTuple):
    name: str


def _map_location_label(map_location: Any) -> str | None:
    if map_location is None:
        return None
    return device_label(torch.empty(0, device=map_location))


class PositionalEmbeddingBase(nn.Module):  # type: ignore[misc, unused-ignore]
    """Base of every olm_xp torch module: one core object (``self.core``) plus torch state.

    ``forward`` calls the core; the core's public configuration (``head_dim``,
    ``max_seq_len``, ...) is readable on the module. Subclasses call :meth:`_adopt` from
    their constructor.
    """

    core: CoreModule

    def _adopt(
        self,
        core_module: CoreModule,
        *,
        device: Any = None,
        dtype: Any = None,
        copy_tables: bool = False,
        cache: str | None = None,
    ) -> None:
        """Wrap ``core_module``: its learned tables become ``nn.Embedding`` children (torch's
        N(0, 1) initialisation, or the core's seeded values with ``copy_tables``) that the
        core reads live, and its table cache (if ``cache`` names one) becomes buffers."""
        for name, value in configuration(core_module).items():
            setattr(self, name, value)
        for name in table_names(core_module):
            template = getattr(core_module, name)
            table = nn.Embedding(
                template.num_embeddings, template.embedding_dim, device=device, dtype=dtype
            )
            if copy_tables:
                with torch.no_grad():
                    table.weight.copy_(torch.as_tensor(to_numpy(template.weight)))
            self.add_module(name, table)
            setattr(core_module, name, _LiveTable(self, name))
        if cache is not None:
            separate = getattr(core_module, "xpos_scale_base", None) is not None
            buffers = _BufferCache(self, cache, separate_key_table=separate)
            for buffer_name in buffers.buffer_names():
                self.register_buffer(buffer_name, None, persistent=False)
            core_module._cache = buffers  # type: ignore[attr-defined, unused-ignore]
        self.core = core_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.core(*args, **kwargs)

    def extra_repr(self) -> str:
        return strip_placement(self.core.extra_repr())

    # -- copy.deepcopy and pickle --------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # The core may hold its array namespace (a module object, which neither deepcopy nor
        # pickle can copy): store it by name.
        state = dict(self.__dict__)
        state["core"] = shallow = copy.copy(state["core"])
        for name, value in vars(shallow).items():
            if isinstance(value, types.ModuleType):
                setattr(shallow, name, _ModuleName(value.__name__))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in vars(state["core"]).items():
            if isinstance(value, _ModuleName):
                setattr(state["core"], name, importlib.import_module(value.name))
        super().__setstate__(state)  # type: ignore[no-untyped-call, unused-ignore]

    # -- loading -------------------------------------------------------------------------------
    def load_state_dict(  # type: ignore[override, unused-ignore]
        self,
        state_dict: Mapping[str, Any],
        strict: bool = True,
        assign: bool = False,
        *,
        map_location: Any = None,
    ) -> Any:
        """torch's ``load_state_dict`` with olm_xp's checks and conversions.

        Parameters
        ----------
        state_dict
            olm's keys (``pos_embedding.weight``) to tensors, NumPy arrays or JAX arrays
            (e.g. from ``safetensors.numpy.load_file``).
        strict, assign
            As in torch. With ``strict=True`` a missing or unexpected key is a ``ValueError``
            naming the expected keys; a wrong shape always is, and a non-floating value is a
            ``TypeError``.
        map_location
            Needed only to copy weights from another device: it must name the module's
            device (``"cpu"``, ``"cuda:0"``). Without it a tensor on another device than the
            module's parameters is a ``ValueError`` (host arrays of NumPy and JAX count as
            ``cpu``).
        """
        owner = type(self).__name__
        targets = self.state_dict(keep_vars=True)
        expected = {key: tuple(value.shape) for key, value in targets.items()}
        values = check_state_dict(owner, expected, state_dict, strict)
        location = _map_location_label(map_location)
        tensors = {}
        for key, value in values.items():
            target = targets[key]
            check_same_device(owner, key, value, device_label(target), location)
            if not isinstance(value, torch.Tensor):
                value = torch.from_numpy(np.array(to_numpy(value)))
            tensors[key] = value.to(device=target.device)
        return super().load_state_dict(tensors, strict=strict, assign=assign)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Also inside a larger model's load_state_dict: no silent move across devices.
        owner = type(self).__name__
        for key, target in self.state_dict(keep_vars=True).items():
            value = state_dict.get(prefix + key)
            if isinstance(value, torch.Tensor):
                check_same_device(owner, prefix + key, value, device_label(target), None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class AbsolutePositionalEmbedding(PositionalEmbeddingBase):
    """Learned absolute positional embedding (olm's class), a ``torch.nn.Module``.

    ``pos_embedding`` is an ``nn.Embedding(max_seq_len, embed_dim)`` (state-dict key
    ``pos_embedding.weight``, as olm). ``forward(x, seq_positions=None)`` returns
    ``dropout(x + pe)`` for ``x`` of shape ``(batch, seq, embed_dim)`` on the table's device.

    Parameters
    ----------
    max_seq_len, embed_dim, dropout
        olm's parameters.
    device, dtype
        Where the table lives (torch's factory keywords; default torch's defaults).
    seed
        ``None``: torch's N(0, 1) initialisation from its global RNG (olm's). An int: the
        values of olm_xp's seeded initialisation, identical to the core class and the Flax
        layer with the same seed on every backend.
    """

    pos_embedding: nn.Embedding

    def __init__(
        self,
        max_seq_len: int,
        embed_dim: int,
        dropout: float = 0.0,
        *,
        device: Any = None,
        dtype: Any = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(check_probability("dropout", dropout))
        self._adopt(
            positional.AbsolutePositionalEmbedding(max_seq_len, embed_dim, seed=seed),
            device=device,
            dtype=dtype,
            copy_tables=seed is not None,
        )

    def forward(self, x: Tensor, seq_positions: Tensor | None = None) -> Tensor:
        """``dropout(x + pos_embedding.weight[positions])``; see the core class's ``forward``."""
        return self.dropout(self.core(x, seq_positions))  # type: ignore[no-any-return, unused-ignore]


class SinusoidalPositionalEmbedding(PositionalEmbeddingBase):
    """Sinusoidal positional embedding (olm's class), a ``torch.nn.Module``.

    Rows are cached in the non-persistent buffer ``pe`` (lazily, float64-exact, grown to the
    largest position used: ``max_seq_len`` is a hint). ``forward(x, seq_positions=None)``
    returns ``dropout(x + pe)`` in ``x``'s dtype.
    """

    def __init__(
        self,
        embed_dim: int,
        max_seq_len: int = 5000,
        base: float = 10000,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(check_probability("dropout", dropout))
        self._adopt(
            positional.SinusoidalPositionalEmbedding(embed_dim, max_seq_len, base), cache="pe"
        )

    def forward(self, x: Tensor, seq_positions: Tensor | None = None) -> Tensor:
        """``dropout(x + pe[positions])``; see the core class's ``forward``."""
        return self.dropout(self.core(x, seq_positions))  # type: ignore[no-any-return, unused-ignore]


class _Rotary(PositionalEmbeddingBase):
    """RoPE modules: the core class's constructor, cos/sin cached in ``cos_sin`` buffers."""

    _core_class: ClassVar[type[CoreModule]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._adopt(self._core_class(*args, **kwargs), cache="cos_sin")

    def forward(self, x: Tensor, seq_positions: Any = None, *, role: str = "query") -> Tensor:
        """Rotate ``x`` (``(batch, seq, heads, head_dim)`` by default); ``seq_positions``:
        ``None``, an int or 0-D tensor offset, ``(seq,)`` or ``(batch, seq)``; ``role``:
        ``"query"``/``"key"`` (xPos only)."""
        return self.core(x, seq_positions, role=role)  # type: ignore[no-any-return, unused-ignore]


@core_signature
class RotaryPositionalEmbedding(_Rotary):
    """Rotary positional embedding (olm's class), a ``torch.nn.Module``;
    ``RotaryPositionalEmbedding.from_hf(...)`` builds one from a Hugging Face config."""

    _core_class = positional.RotaryPositionalEmbedding
    from_hf: ClassVar[Any] = classmethod(
        vars(positional.RotaryPositionalEmbedding)["from_hf"].__func__
    )


@core_signature
class PartialRotaryPositionalEmbedding(_Rotary):
    """Partial rotary positional embedding (olm's class), a ``torch.nn.Module``."""

    _core_class = positional.PartialRotaryPositionalEmbedding


@core_signature
class ScaledRotaryPositionalEmbedding(_Rotary):
    """Scaled rotary positional embedding (olm's class), a ``torch.nn.Module``."""

    _core_class = positional.ScaledRotaryPositionalEmbedding


@core_signature
class PartialScaledRotaryPositionalEmbedding(_Rotary):
    """Partial scaled rotary positional embedding (olm's class), a ``torch.nn.Module``."""

    _core_class = positional.PartialScaledRotaryPositionalEmbedding


@core_signature
class Llama3RotaryPositionalEmbedding(_Rotary):
    """Llama 3.1 rotary positional embedding (olm's class), a ``torch.nn.Module``."""

    _core_class = positional.Llama3RotaryPositionalEmbedding


class ALiBiPositionalBias(PositionalEmbeddingBase):
    """ALiBi attention bias (olm's class), a ``torch.nn.Module``.

    ``slopes`` is a non-persistent ``(num_heads,)`` buffer (as olm's), so the bias follows
    ``.to(device, dtype)``; olm's ``(heads, max_seq_len, max_seq_len)`` bias buffer is not built
    (each call computes its own rows). ``forward(seq_len_q, seq_len_k, device=None)`` returns
    ``(1, num_heads, seq_len_q, seq_len_k)`` on ``device`` (default: the buffer's); see the core
    class for ``causal``, positions and ``broadcastable``.
    """

    slopes: Tensor

    def __init__(
        self,
        num_heads: int,
        max_seq_len: int = 2048,
        *,
        causal: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        bias = positional.ALiBiPositionalBias(
            num_heads, max_seq_len, causal=causal, xp=torch, device=device, dtype=dtype
        )
        self._adopt(bias)
        self.register_buffer("slopes", bias.slopes, persistent=False)

    def forward(
        self,
        seq_len_q: int,
        seq_len_k: int,
        device: Any = None,
        *,
        dtype: Any = None,
        query_positions: Tensor | None = None,
        key_positions: Tensor | None = None,
        broadcastable: bool = False,
    ) -> Tensor:
        if query_positions is None and key_positions is None and device is None:
            device = self.slopes.device
        return self.core(  # type: ignore[no-any-return, unused-ignore]
            seq_len_q,
            seq_len_k,
            device,
            xp=torch,
            dtype=self.slopes.dtype if dtype is None else dtype,
            query_positions=query_positions,
            key_positions=key_positions,
            broadcastable=broadcastable,
        )


class T5RelativePositionBias(PositionalEmbeddingBase):
    """T5's learned relative position bias, a ``torch.nn.Module``.

    ``relative_attention_bias`` is an ``nn.Embedding(num_buckets, num_heads)`` (Hugging Face
    T5's key ``relative_attention_bias.weight``, so a T5 checkpoint's table loads);
    ``forward(seq_len_q, seq_len_k)`` returns ``(1, num_heads, seq_len_q, seq_len_k)`` on the
    table's device. ``seed``, ``device``, ``dtype`` as in :class:`AbsolutePositionalEmbedding`.
    """

    relative_attention_bias: nn.Embedding

    def __init__(
        self,
        num_heads: int,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
        *,
        device: Any = None,
        dtype: Any = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self._adopt(
            positional.T5RelativePositionBias(
                num_heads, num_buckets, max_distance, bidirectional, seed=seed
            ),
            device=device,
            dtype=dtype,
            copy_tables=seed is not None,
        )

    def forward(
        self,
        seq_len_q: int,
        seq_len_k: int,
        *,
        query_positions: Tensor | None = None,
        key_positions: Tensor | None = None,
    ) -> Tensor:
        return self.core(  # type: ignore[no-any-return, unused-ignore]
            seq_len_q, seq_len_k, query_positions=query_positions, key_positions=key_positions
        )
