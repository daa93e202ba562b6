"""olm_xp's positional embeddings as ``flax.nnx`` modules (``pip install 'olm-xp[flax]'``).

Each class has olm's name and constructor signature (plus ``rngs=``, Flax's way to pass
randomness) and holds one core object of :mod:`olm_xp.nn.embeddings.positional`
(``module.core``, a static attribute), which does the validation and the maths; the module
adds what Flax owns:

* learned tables are ``nnx.Param`` inside :class:`Embedding` children named as olm's
  state-dict keys (``pos_embedding.weight``; T5's ``relative_attention_bias.weight``):
  ``nnx.state(module)``, ``nnx.grad`` and optimisers see them, and
  :meth:`PositionalEmbeddingBase.state_dict` / :meth:`~PositionalEmbeddingBase.load_state_dict`
  exchange them with torch and olm;
* dropout is ``nnx.Dropout`` driven by ``nnx.Rngs`` (``train()``/``eval()``); a module in
  training mode with dropout > 0 and no RNG raises a ``TypeError`` saying how to give one;
* tables without parameters (sinusoidal rows, RoPE cos/sin) are the core's: computed in
  float64 and rounded once, cached as concrete arrays per device and dtype (never a tracer),
  constants under ``nnx.jit``.

Everything works eagerly, under ``nnx.jit`` and under ``nnx.grad`` (gradients reach the
tables and the inputs).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

try:
    from flax import nnx  # noqa: I001 (first: without Flax, fail before importing JAX)

    import jax
    import jax.numpy as jnp
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "olm_xp.layers.flax needs Flax and JAX: pip install 'olm-xp[flax]' "
        f"(importing them failed: {err})"
    ) from err

import numpy as np

from olm_xp._compat import to_numpy
from olm_xp._validation import check_probability
from olm_xp.layers._adapt import (
    PicklableTableCache,
    check_same_device,
    check_state_dict,
    configuration,
    core_signature,
    device_label,
    table_names,
)
from olm_xp.nn.embeddings import positional
from olm_xp.nn.embeddings.positional.base import Embedding as CoreEmbedding
from olm_xp.nn.embeddings.positional.base import PositionalEmbeddingBase as CoreModule

__all__ = [
    "ALiBiPositionalBias",
    "AbsolutePositionalEmbedding",
    "Embedding",
    "Llama3RotaryPositionalEmbedding",
    "PartialRotaryPositionalEmbedding",
    "PartialScaledRotaryPositionalEmbedding",
    "PositionalEmbeddingBase",
    "RotaryPositionalEmbedding",
    "ScaledRotaryPositionalEmbedding",
    "SinusoidalPositionalEmbedding",
    "T5RelativePositionBias",
]


class Embedding(nnx.Module):  # type: ignore[misc, unused-ignore]
    """A learned ``(num_embeddings, embedding_dim)`` table: ``weight``, an ``nnx.Param``."""

    def __init__(self, weight: jax.Array) -> None:
        self.weight = nnx.Param(weight)

    @property
    def num_embeddings(self) -> int:
        return int(self.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.weight.shape[1])


def _map_location_label(map_location: Any) -> str | None:
    """``"cpu"``, ``"cuda:0"``, ... for a device name or a JAX device."""
    if map_location is None:
        return None
    if isinstance(map_location, str):
        name = map_location.lower()
        return name if name == "cpu" or ":" in name else f"{name}:0"
    return device_label(jax.device_put(jnp.zeros(0), map_location))


class PositionalEmbeddingBase(nnx.Module):  # type: ignore[misc, unused-ignore]
    """Base of every olm_xp Flax module: one core object (``self.core``) plus Flax state.

    ``__call__`` calls the core with the current values of the learned tables (so they are
    traced under ``nnx.jit``/``nnx.grad``). The core's public configuration (``head_dim``,
    ``max_seq_len``, ...) is readable on the module. Subclasses call :meth:`_adopt`.
    """

    core: CoreModule
    _tables: tuple[str, ...]

    def _adopt(
        self,
        core_module: CoreModule,
        *,
        rngs: nnx.Rngs | None = None,
        dtype: Any = None,
        copy_tables: bool = False,
    ) -> None:
        """Wrap ``core_module``: its learned tables become :class:`Embedding` children,
        initialised N(0, 1) from ``rngs.params()`` or, with ``copy_tables``, to the core's
        seeded values."""
        for name, value in configuration(core_module).items():
            setattr(self, name, value)
        dtype = jnp.float32 if dtype is None else dtype
        self._tables = table_names(core_module)
        for name in self._tables:
            template = getattr(core_module, name)
            if copy_tables:
                weight = jnp.asarray(to_numpy(template.weight), dtype=dtype)
            elif rngs is None:
                raise TypeError(
                    f"{type(self).__name__} needs randomness to initialise {name}.weight: pass "
                    f"rngs=nnx.Rngs(params=0) (or seed=<int> for olm_xp's seeded values)"
                )
            else:
                weight = jax.random.normal(rngs.params(), template.weight.shape, dtype)
            setattr(self, name, Embedding(weight))
        if hasattr(core_module, "_cache"):  # copyable, so nnx.clone/deepcopy work
            core_module._cache = PicklableTableCache()
        self.core = core_module

    def _bound_core(self) -> CoreModule:
        """The core object reading this call's table values (a shallow copy when the module
        has tables: the shared core object never holds a tracer)."""
        if not self._tables:
            return self.core
        bound = copy.copy(self.core)
        for name in self._tables:
            setattr(bound, name, CoreEmbedding(getattr(self, name).weight[...]))
        return bound

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._bound_core()(*args, **kwargs)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, jax.Array]:
        """The learned tables by olm's keys (``pos_embedding.weight``); empty if none."""
        return {f"{name}.weight": getattr(self, name).weight[...] for name in self._tables}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, *, map_location: Any = None
    ) -> None:
        """Load tables from torch tensors, NumPy or JAX arrays (olm's keys).

        A missing or unexpected key (``strict=True``) or a wrong shape is a ``ValueError``, a
        non-floating value a ``TypeError``; values keep the parameter's dtype. Host arrays
        (NumPy, torch CPU, JAX CPU) load into a module on the host; an array on another device
        (a CUDA tensor into a CPU module) is a ``ValueError`` unless ``map_location`` names the
        module's device (``"cpu"``, ``"cuda:0"`` or a JAX device). Nothing changes on error.
        """
        owner = type(self).__name__
        own = self.state_dict()
        expected = {key: tuple(value.shape) for key, value in own.items()}
        values = check_state_dict(owner, expected, state_dict, strict)
        location = _map_location_label(map_location)
        placed = {}
        for key, value in values.items():
            target = own[key]
            check_same_device(owner, key, value, device_label(target), location)
            host = np.asarray(to_numpy(value))
            placed[key] = jax.device_put(jnp.asarray(host, dtype=target.dtype), target.device)
        for key, array in placed.items():
            getattr(self, key.removesuffix(".weight")).weight[...] = array


def _dropout_layer(owner: nnx.Module, rate: float, rngs: nnx.Rngs | None) -> nnx.Dropout:
    """``nnx.Dropout(rate)`` with a fork of ``rngs``'s ``dropout`` (or ``default``) stream
    when the rate is > 0."""
    rate = check_probability("dropout", rate)
    if rate == 0.0 or rngs is None:
        return nnx.Dropout(rate)
    try:
        return nnx.Dropout(rate, rngs=rngs)
    except KeyError:
        raise TypeError(
            f"{type(owner).__name__} has dropout={rate}: its rngs need a 'dropout' (or "
            f"'default') stream, e.g. nnx.Rngs(params=0, dropout=1)"
        ) from None


def _own_signature(cls: type[nnx.Module]) -> type[nnx.Module]:
    """Show the constructor's parameters (Flax's metaclass hides them from ``inspect``)."""
    signature = inspect.signature(cls.__init__)
    parameters = list(signature.parameters.values())[1:]  # without self
    cls.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined, unused-ignore]
    return cls


class _WithDropout(PositionalEmbeddingBase):
    """Embeddings added to the input, then ``nnx.Dropout``."""

    dropout: nnx.Dropout

    def __call__(
        self,
        x: jax.Array,
        seq_positions: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """``dropout(x + pe)`` for ``x`` of shape ``(batch, seq, embed_dim)``.

        ``rngs``: randomness for this call's dropout (an ``nnx.Rngs``, a stream or a key);
        default the ``rngs`` given at construction. ``deterministic``: override the mode
        (``True``: no dropout) for this call.
        """
        out = self._bound_core()(x, seq_positions)
        layer = self.dropout
        active = not (layer.deterministic if deterministic is None else deterministic)
        if active and layer.rate > 0.0 and rngs is None and layer.rngs is None:
            raise TypeError(
                f"{type(self).__name__} has dropout={layer.rate} and is in training mode, so "
                f"it needs randomness: construct it with rngs=nnx.Rngs(dropout=0), pass rngs= "
                f"to this call, or switch dropout off with .eval() or deterministic=True"
            )
        return layer(out, deterministic=deterministic, rngs=rngs)  # type: ignore[no-any-return, unused-ignore]


@_own_signature
class AbsolutePositionalEmbedding(_WithDropout):
    """Learned absolute positional embedding (olm's class), a ``flax.nnx.Module``.

    Parameters
    ----------
    max_seq_len, embed_dim, dropout
        olm's parameters; the table is ``pos_embedding.weight`` (an ``nnx.Param``).
    rngs
        ``nnx.Rngs``: ``params`` initialises the table N(0, 1), ``dropout`` drives dropout.
    dtype
        The table's dtype (default float32).
    seed
        An int: olm_xp's seeded initialisation instead of ``rngs.params()``, identical to the
        core class and the torch layer with the same seed.
    """

    pos_embedding: Embedding

    def __init__(
        self,
        max_seq_len: int,
        embed_dim: int,
        dropout: float = 0.0,
        *,
        rngs: nnx.Rngs | None = None,
        dtype: Any = None,
        seed: int | None = None,
    ) -> None:
        self.dropout = _dropout_layer(self, dropout, rngs)
        self._adopt(
            positional.AbsolutePositionalEmbedding(max_seq_len, embed_dim, seed=seed),
            rngs=rngs,
            dtype=dtype,
            copy_tables=seed is not None,
        )


@_own_signature
class SinusoidalPositionalEmbedding(_WithDropout):
    """Sinusoidal positional embedding (olm's class), a ``flax.nnx.Module``; ``rngs`` drives
    dropout."""

    def __init__(
        self,
        embed_dim: int,
        max_seq_len: int = 5000,
        base: float = 10000,
        dropout: float = 0.0,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        self.dropout = _dropout_layer(self, dropout, rngs)
        self._adopt(positional.SinusoidalPositionalEmbedding(embed_dim, max_seq_len, base))


class _Rotary(PositionalEmbeddingBase):
    """RoPE modules: the core class's constructor; no parameters, no randomness."""

    _core_class: ClassVar[type[CoreModule]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._adopt(self._core_class(*args, **kwargs))

    def __call__(self, x: jax.Array, seq_positions: Any = None, *, role: str = "query") -> Any:
        """Rotate ``x`` (``(batch, seq, heads, head_dim)`` by default); ``seq_positions``:
        ``None``, an int or 0-D array offset, ``(seq,)`` or ``(batch, seq)``; ``role``:
        ``"query"``/``"key"`` (xPos only)."""
        return self.core(x, seq_positions, role=role)


@core_signature
class RotaryPositionalEmbedding(_Rotary):
    """Rotary positional embedding (olm's class), a ``flax.nnx.Module``;
    ``RotaryPositionalEmbedding.from_hf(...)`` builds one from a Hugging Face config."""

    _core_class = positional.RotaryPositionalEmbedding
    from_hf: ClassVar[Any] = classmethod(
        vars(positional.RotaryPositionalEmbedding)["from_hf"].__func__
    )


@core_signature
class PartialRotaryPositionalEmbedding(_Rotary):
    """Partial rotary positional embedding (olm's class), a ``flax.nnx.Module``."""

    _core_class = positional.PartialRotaryPositionalEmbedding


@core_signature
class ScaledRotaryPositionalEmbedding(_Rotary):
    """Scaled rotary positional embedding (olm's class), a ``flax.nnx.Module``."""

    _core_class = positional.ScaledRotaryPositionalEmbedding


@core_signature
class PartialScaledRotaryPositionalEmbedding(_Rotary):
    """Partial scaled rotary positional embedding (olm's class), a ``flax.nnx.Module``."""

    _core_class = positional.PartialScaledRotaryPositionalEmbedding


@core_signature
class Llama3RotaryPositionalEmbedding(_Rotary):
    """Llama 3.1 rotary positional embedding (olm's class), a ``flax.nnx.Module``."""

    _core_class = positional.Llama3RotaryPositionalEmbedding


@_own_signature
class ALiBiPositionalBias(PositionalEmbeddingBase):
    """ALiBi attention bias (olm's class), a ``flax.nnx.Module`` without parameters.

    ``module(seq_len_q, seq_len_k)`` returns ``(1, num_heads, seq_len_q, seq_len_k)`` as a JAX
    array in ``dtype`` (default float32); see the core class for ``causal``, positions and
    ``broadcastable``.
    """

    def __init__(
        self, num_heads: int, max_seq_len: int = 2048, *, causal: bool = False, dtype: Any = None
    ) -> None:
        dtype = jnp.float32 if dtype is None else dtype
        self._adopt(
            positional.ALiBiPositionalBias(
                num_heads, max_seq_len, causal=causal, xp=jnp, dtype=dtype
            )
        )

    def __call__(
        self,
        seq_len_q: int,
        seq_len_k: int,
        *,
        dtype: Any = None,
        query_positions: jax.Array | None = None,
        key_positions: jax.Array | None = None,
        broadcastable: bool = False,
    ) -> jax.Array:
        return self.core(  # type: ignore[no-any-return, unused-ignore]
            seq_len_q,
            seq_len_k,
            xp=jnp,
            dtype=dtype,
            query_positions=query_positions,
            key_positions=key_positions,
            broadcastable=broadcastable,
        )


@_own_signature
class T5RelativePositionBias(PositionalEmbeddingBase):
    """T5's learned relative position bias, a ``flax.nnx.Module``.

    ``relative_attention_bias.weight`` is an ``(num_buckets, num_heads)`` ``nnx.Param``
    (Hugging Face T5's key); ``module(seq_len_q, seq_len_k)`` returns ``(1, num_heads,
    seq_len_q, seq_len_k)``. ``rngs``, ``dtype``, ``seed`` as in
    :class:`AbsolutePositionalEmbedding`.
    """

    relative_attention_bias: Embedding

    def __init__(
        self,
        num_heads: int,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
        dtype: Any = None,
        seed: int | None = None,
    ) -> None:
        self._adopt(
            positional.T5RelativePositionBias(
                num_heads, num_buckets, max_distance, bidirectional, seed=seed
            ),
            rngs=rngs,
            dtype=dtype,
            copy_tables=seed is not None,
        )

    def __call__(
        self,
        seq_len_q: int,
        seq_len_k: int,
        *,
        query_positions: jax.Array | None = None,
        key_positions: jax.Array | None = None,
    ) -> jax.Array:
        return self._bound_core()(  # type: ignore[no-any-return, unused-ignore]
            seq_len_q, seq_len_k, query_positions=query_positions, key_positions=key_positions
        )
