"""Rotary positional embeddings: olm's four RoPE classes on every array-API backend.

All classes share :class:`RotaryBase`: validate, pick the variant's frequencies once (on the
host, in float64), keep a lazily grown, bounded, thread-safe cos/sin table per (namespace,
device, dtype), and call :func:`olm_xp.apply_rope`. ``forward(x, seq_positions=None)`` takes
``x`` of shape ``(batch, seq, heads, head_dim)`` by default (``seq_axis``/``feature_axis``
change that) and positions as ``None``, an int or 0-D array offset (decoding), ``(seq,)`` or
``(batch, seq)``.
"""

from __future__ import annotations

import functools
import math
import sys
import weakref
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from olm_xp._angles import Decay, cos_sin
from olm_xp._cache import GRAPH_TABLE_ELEMENTS, GrowingTableCache, graph_table
from olm_xp._compat import (
    array_namespace,
    compute_dtype,
    device_key,
    device_of,
    dtype_name,
    graph_constant,
    has_float64,
    index_dtype,
    is_concrete,
    is_jax_tracer,
    is_torch_compiling,
    jax_lookup_or_compute,
    max_value,
    namespace_name,
    resolve_namespace,
)
from olm_xp._typing import Array, ArrayNamespace
from olm_xp._validation import check_positive_int, check_positive_number
from olm_xp.nn.embeddings.positional.base import PositionalEmbeddingBase
from olm_xp.rope import (
    SMALL,
    normalize_axis,
    resolve_positions,
    rotate,
    rotate_small,
    rows_to_half,
    table_rows,
)
from olm_xp.rope_frequencies import (
    DATA_DEPENDENT_TYPES,
    ROPE_TYPES,
    check_rope_type,
    dynamic_ntk_growth,
    host_inverse_frequencies,
)

__all__ = [
    "PartialRotaryPositionalEmbedding",
    "PartialScaledRotaryPositionalEmbedding",
    "RotaryBase",
    "RotaryPositionalEmbedding",
    "ScaledRotaryPositionalEmbedding",
]

Role = Literal["query", "key"]


def _xpos_decay(
    rotary_dim: int, xpos_scale_base: float | None, max_seq_len: int, role: Role
) -> Decay | None:
    """xPos amplitude: queries ``zeta**((n-c)/gamma)``, keys the inverse; ``c`` fixed."""
    if xpos_scale_base is None:
        return None
    zeta = (np.arange(0, rotary_dim, 2, dtype=np.float64) + 0.4 * rotary_dim) / (1.4 * rotary_dim)
    sign = 1.0 if role == "query" else -1.0
    return Decay(sign * np.log(zeta) / xpos_scale_base, center=max_seq_len // 2)


@graph_constant
def _table_constant(spec: tuple[Any, ...], device: Any, dtype: Any, role: Role) -> Array:
    """The cos and sin half tables of exactly ``max_seq_len`` positions, ``(1, max_seq_len, 2,
    rotary_dim/2)``, for a RoPE module's ``spec`` (``RotaryBase._graph_spec``: plain values
    only) on torch, for a forward under ``torch.compile``: a constant of the graph
    (:func:`graph_constant`) instead of cos/sin computed in the graph on every call (2-13x
    slower, benchmarks/README.md). Modules with one configuration share it (and one graph)."""
    frequencies, scale, rotary_dim, xpos_scale_base, max_seq_len = spec
    xp = resolve_namespace(sys.modules["torch"])

    def build() -> Array:
        cos, sin = cos_sin(
            max_seq_len, np.frombuffer(frequencies, dtype=np.float64), xp=xp, device=device,
            dtype=dtype, scale=scale,
            decay=_xpos_decay(rotary_dim, xpos_scale_base, max_seq_len, role),
        )  # fmt: skip
        # contiguous halves (Inductor's loop reads strided rows tables 1.2x slower), and a
        # leading unit axis taken off in the graph: several such constants in one graph then
        # pass AOT autograd (a constant sliced directly failed its unique-source check)
        return xp.stack((cos, sin), axis=1)[None, ...]

    return graph_table(("rope", spec, device_key(device), dtype_name(dtype), role), build)


_LEAN: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], list[Any]]]
_LEAN = weakref.WeakKeyDictionary()
"""Per module: the settings of decode steps already validated, by input signature."""
SCALING_TYPES = ("linear", "ntk", "dynamic_ntk", "yarn", "xpos")
"""olm's ``scaling_type`` names for the scaled classes."""
XPOS_DEFAULT_SCALE_BASE = 512
"""xPos's ``gamma`` when ``xpos_scale_base`` is None (Sun et al., and XT/RET/flash-attn)."""


def _check_rotary_percentage(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"rotary_percentage must be a float in (0, 1]; got {value!r}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"rotary_percentage must be in (0, 1]; got {value}")
    return float(value)


def _partial_rotary_dim(head_dim: int, rotary_percentage: float) -> int:
    """olm's rule: ``int(head_dim * pct)`` rounded down to even; 0 is an error."""
    rotary_dim = int(head_dim * rotary_percentage)
    rotary_dim -= rotary_dim % 2
    if rotary_dim == 0:
        raise ValueError(
            f"rotary_percentage={rotary_percentage} gives rotary dim 0 for head_dim={head_dim}; "
            f"use a larger percentage"
        )
    return rotary_dim


class RotaryBase(PositionalEmbeddingBase):
    """The machinery every RoPE class shares; construct one of the public classes instead."""

    head_dim: int
    rotary_dim: int
    max_seq_len: int
    base: float
    rope_type: str
    rope_parameters: dict[str, Any]
    interleaved: bool
    seq_axis: int
    feature_axis: int
    xpos_scale_base: float | None

    def _configure(
        self,
        *,
        head_dim: int,
        rotary_dim: int,
        max_seq_len: int,
        base: float,
        rope_type: str,
        rope_parameters: Mapping[str, Any] | None,
        interleaved: bool,
        seq_axis: int,
        feature_axis: int,
        xpos_scale_base: float | None = None,
    ) -> None:
        self.head_dim = check_positive_int("head_dim", head_dim)
        self.rotary_dim = check_positive_int("rotary_dim", rotary_dim)
        if self.rotary_dim % 2:
            raise ValueError(
                f"rotary_dim must be even (features rotate in pairs); got {rotary_dim}"
            )
        if self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim must be <= head_dim={head_dim}; got {rotary_dim}")
        self.max_seq_len = check_positive_int("max_seq_len", max_seq_len)
        self.base = check_positive_number("base", base)
        self.rope_type = check_rope_type(rope_type)
        self.rope_parameters = dict(rope_parameters or {})
        for name, value in (("seq_axis", seq_axis), ("feature_axis", feature_axis)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
        if not isinstance(interleaved, bool):
            raise TypeError(f"interleaved must be a bool; got {type(interleaved).__name__}")
        self.interleaved, self.seq_axis, self.feature_axis = interleaved, seq_axis, feature_axis
        self.xpos_scale_base = (
            None
            if xpos_scale_base is None
            else check_positive_number("xpos_scale_base", xpos_scale_base)
        )
        # Validates the variant's parameters now; static variants keep their frequencies.
        self._inv_freq, self.attention_factor = host_inverse_frequencies(
            self.rotary_dim, self.rope_type, self.base, self.rope_parameters
        )
        self._cache = GrowingTableCache()
        # What the tables depend on, as plain values: under torch.compile the key of the
        # graph's constant table (_table_constant), so modules alike share one graph.
        self._graph_spec = (
            np.asarray(self._inv_freq, dtype=np.float64).tobytes(),
            float(self.attention_factor),
            self.rotary_dim,
            self.xpos_scale_base,
            self.max_seq_len,
        )

    # -- tables --------------------------------------------------------------------------------
    def _decay(self, role: Role) -> Decay | None:
        return _xpos_decay(self.rotary_dim, self.xpos_scale_base, self.max_seq_len, role)

    @staticmethod
    def _cacheable(positions: Any) -> bool:
        """Whether this call's tables can come from the cache: no positions or an int offset
        (under ``torch.compile`` too: the cached table is then a constant of the graph, see
        :func:`_table_constant`), or concrete positions outside ``torch.compile``."""
        if positions is None or isinstance(positions, int):
            return True
        return (
            hasattr(positions, "ndim")
            and positions.ndim > 0
            and is_concrete(positions)
            and not is_torch_compiling()
        )

    def _traced_cos_sin(
        self, xp: ArrayNamespace, x: Array, positions: Any, seq: int, role: Role, dtype: Any
    ) -> tuple[Array, Array]:
        """Half tables for positions whose values are unknown (traced, compiled), computed
        in-graph; under ``jax.jit`` with a 0-D offset (a decode step), looked up in the cached
        ``max_seq_len``-row table as native code does, inside a ``lax.cond`` whose other branch
        computes the rows exactly (any offset stays exact; 0.4x the time of computing them)."""
        device = device_of(x)
        p = resolve_positions(xp, x, positions, seq_axis=seq, index_dtype=index_dtype(xp, device))

        def computed(p: Array) -> tuple[Array, Array]:
            return cos_sin(
                p, self._inv_freq, xp=xp, device=device, dtype=dtype,
                scale=self.attention_factor, decay=self._decay(role),
            )  # fmt: skip

        offset = is_jax_tracer(positions) and getattr(positions, "ndim", None) == 0
        if not offset or not self._table_fits_graph():
            return computed(p)
        table = self._rows(xp, device, dtype, role, 0, self.max_seq_len)[0, ...]  # concrete
        length = table.shape[0]
        if length * self.rotary_dim > GRAPH_TABLE_ELEMENTS:  # grown by long eager calls
            return computed(p)
        cos_rows, sin_rows = rows_to_half(xp, table, self.interleaved)

        def gathered(p: Array) -> tuple[Array, Array]:
            return xp.take(cos_rows, p, axis=0), xp.take(sin_rows, p, axis=0)

        cos, sin = jax_lookup_or_compute(xp, p, length, gathered, computed)
        return cos, sin

    def _table_fits_graph(self) -> bool:
        """Whether the ``max_seq_len``-row table may be a constant of a compiled graph."""
        return self.max_seq_len * self.rotary_dim <= GRAPH_TABLE_ELEMENTS

    def _build_rows(
        self, xp: ArrayNamespace, device: Any, dtype: Any, role: Role, units: int, capacity: int
    ) -> Array:
        """:func:`olm_xp.rope.table_rows` of positions ``0..capacity-1``, shaped ``(1,
        capacity, *(1,) * units, *row)``: the ``units`` unit axes stand for x's axes between its
        sequence and feature axes, so an offset's rows broadcast against x's pair view as they
        are sliced (a decode step reshapes nothing)."""
        cos, sin = cos_sin(
            capacity, self._inv_freq, xp=xp, device=device, dtype=dtype,
            scale=self.attention_factor, decay=self._decay(role),
        )  # fmt: skip
        table = table_rows(xp, cos, sin, self.interleaved)
        return xp.reshape(table, (1, capacity, *(1,) * units, *table.shape[1:]))

    def _rows(
        self, xp: ArrayNamespace, device: Any, dtype: Any, role: Role, units: int, rows: int
    ) -> Array:
        """The cached :meth:`_build_rows` table with at least ``rows`` positions."""
        key = (namespace_name(xp), device_key(device), dtype_name(dtype), role, units)
        build = functools.partial(self._build_rows, xp, device, dtype, role, units)
        return self._cache.get(key, rows, build, axis=1)

    def _units(self, x: Array, seq: int, feature: int) -> int:
        return x.ndim - seq - 2 if feature == x.ndim - 1 else 0

    def _cached_cos_sin(
        self,
        xp: ArrayNamespace,
        x: Array,
        positions: Any,
        seq: int,
        feature: int,
        role: Role,
        dtype: Any,
    ) -> tuple[Array, Array]:
        """Half tables ``(seq, d/2)`` or ``(batch, seq, d/2)`` from the cache."""
        seq_len = x.shape[seq]
        p = None
        if positions is None or isinstance(positions, int):
            offset = 0 if positions is None else positions
            if offset < 0:
                raise ValueError(f"seq_positions offset must be >= 0; got {offset}")
            rows = offset + seq_len
        else:
            p = resolve_positions(xp, x, positions, seq_axis=seq, index_dtype=None)
            rows = max_value(p) + 1 if math.prod(p.shape) else 0
        units = self._units(x, seq, feature)
        if is_torch_compiling():  # the max_seq_len table, built on the host: a graph constant
            if not self._table_fits_graph() or rows > self.max_seq_len:  # a guard if symbolic
                return self._traced_cos_sin(xp, x, positions, seq, role, dtype)
            halves = _table_constant(self._graph_spec, device_of(x), dtype, role)[0, ...]
            # narrow: a slice with a symbolic start would specialise (recompile every step)
            picked = sys.modules["torch"].narrow(halves, 0, offset, seq_len)
            return picked[:, 0, :], picked[:, 1, :]
        table = self._rows(xp, device_of(x), dtype, role, units, rows)[0, ...]
        if p is None:
            picked = table[offset:rows, ...]
        else:
            picked = xp.take(table, xp.reshape(p, (-1,)), axis=0)
        half = self.rotary_dim // 2
        shape = (seq_len, half) if p is None else (*p.shape, half)
        cos, sin = rows_to_half(xp, picked, self.interleaved)
        return xp.reshape(cos, shape), xp.reshape(sin, shape)

    def _decode_step(
        self, xp: ArrayNamespace, x: Array, offset: int, seq: int, role: Role, dtype: Any
    ) -> Array:
        """A small input at an int offset, features last: cached rows, the fewest ops; and
        the call's validated settings remembered for :meth:`_lean_step`."""
        if offset < 0:
            raise ValueError(f"seq_positions offset must be >= 0; got {offset}")
        device = device_of(x)
        units = x.ndim - seq - 2
        table = self._rows(xp, device, dtype, role, units, offset + x.shape[seq])
        key = (namespace_name(xp), device_key(device), dtype_name(dtype), role, units)
        build = functools.partial(self._build_rows, xp, device, dtype, role, units)
        if is_concrete(x):  # never under a trace: the memo's rows would be a leaked tracer
            lean = _LEAN.setdefault(self, {})
            if len(lean) >= 16:  # a few signatures in practice; bounded regardless
                lean.clear()
            signature = (type(x), x.dtype, x.ndim, device, role)
            lean[signature] = [xp, seq, dtype, key, build, table[0, ...], namespace_name(xp), None]
        return rotate_small(
            xp, x, table[0, offset : offset + x.shape[seq], ...], self.interleaved, dtype
        )

    def _lean_step(self, x: Array, offset: Any, role: Role) -> Array | None:
        """The decode step again for an input like one already validated by
        :meth:`_decode_step` (same type, dtype, rank, device and role): only the checks that
        can change between such inputs, then the cached rows and :func:`rotate_small`. None
        when it does not apply (the full path then runs, and raises where it should)."""
        if is_torch_compiling() or not (offset is None or type(offset) is int):
            return None
        memo = _LEAN.get(self)
        try:
            lean = (
                None if memo is None else memo.get((type(x), x.dtype, x.ndim, device_of(x), role))
            )
        except (AttributeError, TypeError):  # not an array, or an unhashable dtype/device
            return None
        if lean is None:
            return None
        xp, seq, dtype, key, build, table, name, last = lean
        offset = offset or 0
        shape = x.shape
        if offset < 0 or shape[-1] != self.head_dim or math.prod(shape) >= SMALL:
            return None
        rows = offset + shape[seq]
        if last is None or last[0] != offset or last[1] != rows:
            # a new step; the same step again (every layer sharing the module) reuses the rows
            if table.shape[0] < rows:  # grown since: through the cache (which keeps it bounded)
                table = lean[5] = self._cache.get(key, rows, build, axis=1)[0, ...]
            last = lean[7] = (offset, rows, table[offset:rows, ...])
        return rotate_small(xp, x, last[2], self.interleaved, dtype, name)

    def _data_dependent_cos_sin(
        self, xp: ArrayNamespace, x: Array, positions: Any, seq: int, dtype: Any
    ) -> tuple[Array, Array]:
        """dynamic NTK and LongRoPE: frequencies follow ``seq_len = max(position) + 1``."""
        device = device_of(x)
        p = resolve_positions(xp, x, positions, seq_axis=seq, index_dtype=index_dtype(xp, device))
        original = self.rope_parameters["original_max_position_embeddings"]
        if is_concrete(p):
            length = max_value(p) + 1 if math.prod(p.shape) else 1
            params = {**self.rope_parameters, "seq_len": length}
            inv_freq, factor = host_inverse_frequencies(
                self.rotary_dim, self.rope_type, self.base, params
            )
            return cos_sin(p, inv_freq, xp=xp, device=device, dtype=dtype, scale=factor)
        length = xp.max(p) + 1
        if self.rope_type == "longrope":  # both tables, then pick: no host read of the length
            long_params = {**self.rope_parameters, "seq_len": original + 1}
            long_freq, _ = host_inverse_frequencies(
                self.rotary_dim, self.rope_type, self.base, long_params
            )
            scale = self.attention_factor
            short = cos_sin(p, self._inv_freq, xp=xp, device=device, dtype=dtype, scale=scale)
            long = cos_sin(p, long_freq, xp=xp, device=device, dtype=dtype, scale=scale)
            use_long = length > original
            return xp.where(use_long, long[0], short[0]), xp.where(use_long, long[1], short[1])
        return self._traced_dynamic_cos_sin(xp, p, length, original, dtype)

    def _traced_dynamic_cos_sin(
        self, xp: ArrayNamespace, p: Array, length: Array, original: int, dtype: Any
    ) -> tuple[Array, Array]:
        """Dynamic NTK with a traced length: frequencies computed in-graph (float64 where the
        device has it, else float32 -- then accurate to ``p * 2**-24`` rad, like HF's)."""
        device = device_of(p)
        work = xp.float64 if has_float64(xp, device) else xp.float32
        d = self.rotary_dim
        length_f = xp.astype(length, work)
        length_f = xp.where(length_f > original, length_f, xp.asarray(original, dtype=work))
        growth = dynamic_ntk_growth(self.rope_parameters["factor"], length_f, original)
        new_base = self.base * growth ** (d / (d - 2))
        exponents = xp.asarray(np.arange(0, d, 2) / d, dtype=work, device=device)
        inv_freq = xp.pow(new_base, -exponents)
        angles = xp.astype(p, work)[..., None] * inv_freq
        return xp.astype(xp.cos(angles), dtype), xp.astype(xp.sin(angles), dtype)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Array, seq_positions: Any = None, *, role: Role = "query") -> Array:
        """Rotate ``x`` by the angles of its positions.

        Parameters
        ----------
        x
            ``(batch, seq, heads, head_dim)`` by default (see ``seq_axis``/``feature_axis``),
            any floating dtype, namespace and device.
        seq_positions
            ``None`` (``0..seq-1``), an int or 0-D integer array offset (decoding: the tokens sit
            at ``offset..offset+seq-1``), or integer positions ``(seq,)`` / ``(batch, seq)``.
        role
            ``"query"`` or ``"key"``: xPos scales them inversely; other variants ignore it.

        Returns
        -------
        The rotated array, with ``x``'s namespace, device, dtype and shape.
        """
        lean = self._lean_step(x, seq_positions, role)
        if lean is not None:
            return lean
        if role not in ("query", "key"):
            raise ValueError(f"role must be 'query' or 'key'; got {role!r}")
        xp = array_namespace(x)
        if not hasattr(x, "ndim") or x.ndim < 2:
            raise ValueError(f"x must have a sequence and a feature axis; got {type(x).__name__}")
        seq = normalize_axis(self.seq_axis, x.ndim, "seq_axis")
        feature = normalize_axis(self.feature_axis, x.ndim, "feature_axis")
        if x.shape[feature] != self.head_dim:
            raise ValueError(
                f"x's head dim (axis {self.feature_axis}) must equal head_dim={self.head_dim}; "
                f"got {x.shape[feature]}"
            )
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"x must have a real floating dtype; got {dtype_name(x.dtype)}")
        dtype = compute_dtype(xp, x.dtype)
        if feature == seq:
            raise ValueError(f"seq_axis and feature_axis must differ; both are axis {seq}")
        static = self.rope_type not in DATA_DEPENDENT_TYPES
        offset = 0 if seq_positions is None else seq_positions
        if (
            static
            and type(offset) is int
            and feature == x.ndim - 1
            and self.rotary_dim == self.head_dim
            and math.prod(x.shape) < SMALL
            and not is_torch_compiling()
        ):
            return self._decode_step(xp, x, offset, seq, role, dtype)
        if not static:
            cos, sin = self._data_dependent_cos_sin(xp, x, seq_positions, seq, dtype)
        elif self._cacheable(seq_positions):
            cos, sin = self._cached_cos_sin(xp, x, seq_positions, seq, feature, role, dtype)
        else:
            cos, sin = self._traced_cos_sin(xp, x, seq_positions, seq, role, dtype)
        return rotate(xp, x, cos, sin, interleaved=self.interleaved, seq=seq, feature=feature)

    def extra_repr(self) -> str:
        parts = [f"head_dim={self.head_dim}"]
        if self.rotary_dim != self.head_dim:
            parts.append(f"rotary_dim={self.rotary_dim}")
        parts += [f"max_seq_len={self.max_seq_len}", f"base={self.base:g}"]
        if self.rope_type != "default":
            parts.append(f"rope_type={self.rope_type!r}")
        if self.xpos_scale_base is not None:
            parts.append(f"xpos_scale_base={self.xpos_scale_base:g}")
        parts.append(f"interleaved={self.interleaved}")
        return ", ".join(parts)


class RotaryPositionalEmbedding(RotaryBase):
    """Rotary positional embedding (RoFormer, Su et al. 2021), olm's signature.

    Parameters
    ----------
    head_dim
        Features per head (even).
    max_seq_len
        olm's table length; here a hint: tables grow lazily to the largest position used.
    base
        ``rope_theta``.
    interleaved
        ``True`` (olm, Meta): pairs ``(x[2i], x[2i+1])``; ``False`` (HF): ``(x[i], x[i+d/2])``.
    seq_axis, feature_axis
        Where the sequence and the head features are in ``x`` (default ``(B, S, H, D)``).
    rotary_dim
        Rotate only the first ``rotary_dim`` features (default all).
    rope_type, rope_parameters
        A scaling variant of :data:`olm_xp.ROPE_TYPES` and its HF-named parameters (see
        :func:`olm_xp.rope_inverse_frequencies`); :meth:`from_hf` fills them from a config.
    """

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        base: float = 10000,
        *,
        interleaved: bool = True,
        seq_axis: int = 1,
        feature_axis: int = -1,
        rotary_dim: int | None = None,
        rope_type: str = "default",
        rope_parameters: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        head_dim = check_positive_int("head_dim", head_dim)
        if rotary_dim is None and head_dim % 2:
            raise ValueError(f"head_dim must be even (features rotate in pairs); got {head_dim}")
        self._configure(
            head_dim=head_dim,
            rotary_dim=head_dim if rotary_dim is None else rotary_dim,
            max_seq_len=max_seq_len,
            base=base,
            rope_type=rope_type,
            rope_parameters=rope_parameters,
            interleaved=interleaved,
            seq_axis=seq_axis,
            feature_axis=feature_axis,
        )

    @classmethod
    def from_hf(
        cls,
        rope_parameters: Mapping[str, Any],
        *,
        head_dim: int,
        max_position_embeddings: int,
        seq_axis: int = 1,
        feature_axis: int = -1,
    ) -> RotaryPositionalEmbedding:
        """The rotation of a Hugging Face model from its ``rope_parameters``/``rope_scaling``.

        ``rope_parameters`` is the config's dict (``rope_type`` or legacy ``type``,
        ``rope_theta``, ``factor``, ``partial_rotary_factor``, ...). The module uses HF's
        half-split layout and applies the attention factor to cos and sin as HF does, so
        rotating q and k with it equals HF's ``apply_rotary_pos_emb``. For HF's ``(B, H, S, D)``
        q/k pass ``seq_axis=2``.
        """
        if not isinstance(rope_parameters, Mapping):
            raise TypeError(
                f"rope_parameters must be a mapping; got {type(rope_parameters).__name__}"
            )
        params = dict(rope_parameters)
        rope_type = params.pop("rope_type", params.pop("type", "default"))
        if rope_type not in ROPE_TYPES or rope_type == "ntk":
            valid = [t for t in ROPE_TYPES if t != "ntk"]
            raise ValueError(f"HF rope_type must be one of {valid}; got {rope_type!r}")
        base = params.pop("rope_theta", 10000.0)
        head_dim = check_positive_int("head_dim", head_dim)
        max_position_embeddings = check_positive_int(
            "max_position_embeddings", max_position_embeddings
        )
        rotary_dim = int(head_dim * params.pop("partial_rotary_factor", 1.0))
        if rope_type == "dynamic":  # HF's dynamic NTK grows from max_position_embeddings
            params.pop("original_max_position_embeddings", None)
            params["original_max_position_embeddings"] = max_position_embeddings
        elif rope_type in ("yarn", "longrope", "llama3"):  # HF's fallback for a missing L0
            params.setdefault("original_max_position_embeddings", max_position_embeddings)
        if rope_type in ("yarn", "longrope") and params.get("factor") is None:
            params["factor"] = max_position_embeddings / params["original_max_position_embeddings"]
        if rope_type == "llama3":  # HF requires these: a config has no Meta defaults
            missing = [
                k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in params
            ]
            if missing:
                raise ValueError(f"rope_parameters for llama3 must set {missing}")
        if rope_type == "yarn":  # HF treats a missing, None or 0 beta as its default
            for name, default in (("beta_fast", 32.0), ("beta_slow", 1.0)):
                if not params.get(name):
                    params[name] = default
        return cls(
            head_dim,
            max_position_embeddings,
            base,
            interleaved=False,
            seq_axis=seq_axis,
            feature_axis=feature_axis,
            rotary_dim=rotary_dim,
            rope_type=rope_type,
            rope_parameters=params,
        )


def _scaled_variant(
    scaling_type: Any,
    scaling_factor: Any,
    original_max_seq_len: int | None,
    max_seq_len: int,
    yarn_alpha: float,
    yarn_beta: float,
) -> tuple[str, dict[str, Any], bool]:
    """olm's scaling options as (rope_type, HF parameters, uses xPos)."""
    if scaling_type not in SCALING_TYPES:
        raise ValueError(f"scaling_type must be one of {list(SCALING_TYPES)}; got {scaling_type!r}")
    factor = check_positive_number("scaling_factor", scaling_factor)
    original = max_seq_len if original_max_seq_len is None else original_max_seq_len
    original = check_positive_int("original_max_seq_len", original)
    if scaling_type in ("dynamic_ntk", "yarn") and factor < 1.0:
        raise ValueError(f"scaling_factor must be >= 1 for {scaling_type}; got {scaling_factor}")
    if scaling_type == "linear":
        return "linear", {"factor": factor}, False
    if scaling_type == "ntk":
        return "ntk", {"factor": factor}, False
    if scaling_type == "dynamic_ntk":
        return "dynamic", {"factor": factor, "original_max_position_embeddings": original}, False
    if scaling_type == "yarn":  # the paper's alpha/beta are HF's beta_slow/beta_fast
        params = {
            "factor": factor,
            "original_max_position_embeddings": original,
            "beta_fast": yarn_beta,
            "beta_slow": yarn_alpha,
        }
        return "yarn", params, False
    return "default", {}, True


class ScaledRotaryPositionalEmbedding(RotaryBase):
    """RoPE with a context-extension variant, olm's signature; the paper's/HF's maths.

    ``scaling_type``: ``linear`` (position interpolation), ``ntk`` (static NTK-aware base),
    ``dynamic_ntk`` (HF's dynamic NTK, using ``scaling_factor``), ``yarn`` (YaRN with ramp and
    attention factor; ``yarn_alpha``/``yarn_beta`` are the paper's ramp bounds, HF's
    ``beta_slow``/``beta_fast``), ``xpos`` (xPos: queries and keys scaled inversely with
    ``xpos_scale_base``, default 512 -- say which you rotate with ``forward(..., role=)``).
    ``original_max_seq_len`` defaults to ``max_seq_len``. Keyword-only extras as in
    :class:`RotaryPositionalEmbedding`.
    """

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int = 2048,
        base: float = 10000,
        scaling_type: str = "linear",
        scaling_factor: float = 1.0,
        original_max_seq_len: int | None = None,
        yarn_alpha: float = 1.0,
        yarn_beta: float = 32.0,
        xpos_scale_base: float | None = None,
        *,
        interleaved: bool = True,
        seq_axis: int = 1,
        feature_axis: int = -1,
    ) -> None:
        super().__init__()
        head_dim = check_positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (features rotate in pairs); got {head_dim}")
        self._init_scaled(
            head_dim,
            head_dim,
            max_seq_len,
            base,
            scaling_type,
            scaling_factor,
            original_max_seq_len,
            yarn_alpha,
            yarn_beta,
            xpos_scale_base,
            interleaved,
            seq_axis,
            feature_axis,
        )

    def _init_scaled(
        self,
        head_dim: int,
        rotary_dim: int,
        max_seq_len: int,
        base: float,
        scaling_type: str,
        scaling_factor: float,
        original_max_seq_len: int | None,
        yarn_alpha: float,
        yarn_beta: float,
        xpos_scale_base: float | None,
        interleaved: bool,
        seq_axis: int,
        feature_axis: int,
    ) -> None:
        max_seq_len = check_positive_int("max_seq_len", max_seq_len)
        rope_type, params, xpos = _scaled_variant(
            scaling_type, scaling_factor, original_max_seq_len, max_seq_len, yarn_alpha, yarn_beta
        )
        self.scaling_type = scaling_type
        self.scaling_factor = float(scaling_factor)
        self.original_max_seq_len = original_max_seq_len or max_seq_len
        self.yarn_alpha, self.yarn_beta = yarn_alpha, yarn_beta
        gamma = None
        if xpos:
            gamma = XPOS_DEFAULT_SCALE_BASE if xpos_scale_base is None else xpos_scale_base
        self._configure(
            head_dim=head_dim,
            rotary_dim=rotary_dim,
            max_seq_len=max_seq_len,
            base=base,
            rope_type=rope_type,
            rope_parameters=params,
            interleaved=interleaved,
            seq_axis=seq_axis,
            feature_axis=feature_axis,
            xpos_scale_base=gamma,
        )


class PartialRotaryPositionalEmbedding(RotaryBase):
    """RoPE on the first ``int(head_dim * rotary_percentage)`` (rounded down to even) features;
    the rest pass through unchanged. olm's signature; keyword-only extras as in
    :class:`RotaryPositionalEmbedding`."""

    def __init__(
        self,
        head_dim: int,
        rotary_percentage: float = 0.5,
        base: float = 10000,
        max_seq_len: int = 2048,
        *,
        interleaved: bool = True,
        seq_axis: int = 1,
        feature_axis: int = -1,
    ) -> None:
        super().__init__()
        head_dim = check_positive_int("head_dim", head_dim)
        self.rotary_percentage = _check_rotary_percentage(rotary_percentage)
        self._configure(
            head_dim=head_dim,
            rotary_dim=_partial_rotary_dim(head_dim, self.rotary_percentage),
            max_seq_len=max_seq_len,
            base=base,
            rope_type="default",
            rope_parameters=None,
            interleaved=interleaved,
            seq_axis=seq_axis,
            feature_axis=feature_axis,
        )


class PartialScaledRotaryPositionalEmbedding(ScaledRotaryPositionalEmbedding):
    """Partial RoPE with a scaling variant (frequencies over the rotary dim), olm's signature."""

    def __init__(
        self,
        head_dim: int,
        rotary_percentage: float = 0.5,
        max_seq_len: int = 2048,
        base: float = 10000,
        scaling_type: str = "linear",
        scaling_factor: float = 1.0,
        original_max_seq_len: int | None = None,
        yarn_alpha: float = 1.0,
        yarn_beta: float = 32.0,
        xpos_scale_base: float | None = None,
        *,
        interleaved: bool = True,
        seq_axis: int = 1,
        feature_axis: int = -1,
    ) -> None:
        RotaryBase.__init__(self)
        head_dim = check_positive_int("head_dim", head_dim)
        self.rotary_percentage = _check_rotary_percentage(rotary_percentage)
        self._init_scaled(
            head_dim,
            _partial_rotary_dim(head_dim, self.rotary_percentage),
            max_seq_len,
            base,
            scaling_type,
            scaling_factor,
            original_max_seq_len,
            yarn_alpha,
            yarn_beta,
            xpos_scale_base,
            interleaved,
            seq_axis,
            feature_axis,
        )
