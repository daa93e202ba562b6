"""The engine of ``olm-xp compare``: backends, the seeded schemes, running and collecting.

Every scheme solves one seeded problem (inputs drawn on the host in float64, rounded once to
the dtype under test) on every selected backend, device and dtype. Each result is checked
against :mod:`olm_xp.reference` -- the float64 transcription of the formulas, evaluated on the
inputs as rounded to the dtype -- never against olm_xp itself. The module imports no framework:
a backend's module is imported only by :func:`import_backend`, for the profiles a run uses.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from olm_xp import reference
from olm_xp._compat import (
    device_key,
    device_of,
    dtype_name,
    has_float64,
    index_dtype,
    namespace_name,
    resolve_namespace,
    to_numpy,
)
from olm_xp._profiles import BackendProfile
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp.nn.embeddings import positional

__all__ = [
    "SCHEMES",
    "TOLERANCE_EPS",
    "CompareResult",
    "CompareRow",
    "PairwiseRow",
    "compare",
    "import_backend",
]

Float64Array = np.ndarray[Any, np.dtype[np.float64]]

TOLERANCE_EPS = 2.0
"""The promised accuracy, in units of the output dtype's machine epsilon ``eps``.

For every scheme, backend, device and dtype, ``max(|out - ref| / scale) <= 2 eps``, where
``ref`` is the float64 reference (:mod:`olm_xp.reference`) evaluated on the inputs as rounded to
the dtype (and, for learned tables, on the table as stored), and ``scale`` is ``max(|ref|, 1)``
for tables and biases, and the magnitude of each rotated pair ``|(ref_a, ref_b)|`` for RoPE (a
rotation in float32 cannot be closer than a few roundings of its input's size). ``olm-xp
compare`` checks exactly this; it is the one place the number is written down. float64 results
of trigonometric schemes get :func:`olm_xp.reference.float64_allowance_eps` on top: there the
float64 reference is no more exact than the result.
"""

# The seeded problem every backend solves (inputs drawn on the host in float64).
SEED = 0
BATCH = 2
SEQ_LEN = 33
EMBED_DIM = 64
HEADS = 4
HEAD_DIM = 64
MAX_POSITION = 2**16 - 1
"""Largest explicit position of the ``*-positions`` and RoPE schemes (tables grow to it)."""
ABSOLUTE_MAX_SEQ_LEN = 1024
ROPE_MAX_POSITION = 2**13 - 1
"""Largest explicit position of the RoPE variant schemes: past their original context
:data:`ROPE_ORIGINAL`, so every extension is active, and cheap to tabulate for each class."""
DECODE_OFFSET = 10_000
"""The position of the one token of the ``rope-decode-*`` schemes (the decode path)."""
TIMED_CALLS = 5
"""Calls timed per row (after the checked warm-up call); the median is shown."""
TIME_BUDGET_S = 0.2
"""Timing stops early once a row's timed calls took this long (slow lazy backends)."""


# -- backends -------------------------------------------------------------------------------


def import_backend(profile: BackendProfile) -> ModuleType:
    """Import ``profile.module`` (the only place a framework is imported).

    Raises whatever the import raises (``ImportError`` when the package is not installed).
    """
    return importlib.import_module(profile.module)


def _framework(name: str) -> Any:
    """An already selected framework's top-level module (``torch``, ``jax``, ``cupy``, ...)."""
    return importlib.import_module(name)


def pip_command(profile: BackendProfile) -> str:
    return "pip install " + " ".join(shlex.quote(req) for req in profile.requirements)


def env_hint(profile: BackendProfile) -> str:
    """The profile's environment settings that this process does not have, if any."""
    missing = [f"{k}={v}" for k, v in profile.env.items() if os.environ.get(k) != v]
    return f" (the profile runs with {' '.join(missing)})" if missing else ""


def module_version(module_name: str) -> str:
    top = sys.modules.get(module_name.split(".")[0])
    return str(getattr(top, "__version__", "?")) if top is not None else "?"


def _device_label(device: Any) -> str:
    """``array_api_strict.Device('device1')`` -> ``device1``; other devices as ``str``."""
    text = str(device)
    match = re.fullmatch(r"[\w.]+\((['\"])(.*)\1\)", text)
    return match.group(2) if match else text


def _index(name: str) -> int:
    _, _, index = name.partition(":")
    return int(index) if index else 0


def visible_devices(xp: ArrayNamespace) -> list[str]:
    """Names of the devices ``xp`` can use on this machine (for ``info``)."""
    kind = namespace_name(xp)
    if kind == "jax":
        return [str(d) for d in _framework("jax").devices()]
    if kind == "torch":
        torch = _framework("torch")
        names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        mps = getattr(torch.backends, "mps", None)
        return names + (["mps"] if mps is not None and mps.is_available() else [])
    if kind == "cupy":
        return [f"cuda:{i}" for i in range(_framework("cupy").cuda.runtime.getDeviceCount())]
    return [_device_label(d) for d in xp.__array_namespace_info__().devices()]


def resolve_device(xp: ArrayNamespace, name: str) -> Device | None:
    """The device object for a profile's device ``name``, or None where it does not exist here.

    jax: ``"cpu:1"`` is ``jax.devices("cpu")[1]``; torch: the device string; array-api-strict:
    ``array_api_strict.Device(name)``; CuPy: ``cupy.cuda.Device(i)``; others: the entry of
    ``__array_namespace_info__().devices()`` with that name.
    """
    kind = namespace_name(xp)
    if kind == "jax":
        try:
            devices = _framework("jax").devices(name.partition(":")[0])
        except RuntimeError:  # "Unknown backend cuda": no such platform here
            return None
        return devices[_index(name)] if _index(name) < len(devices) else None
    if kind == "torch":
        torch = _framework("torch")
        device_type = torch.device(name).type
        if device_type == "cpu":
            return name
        if device_type == "cuda":
            present = torch.cuda.is_available() and _index(name) < torch.cuda.device_count()
        elif device_type == "mps":
            mps = getattr(torch.backends, "mps", None)
            present = mps is not None and mps.is_available()
        else:
            present = False
        # "cuda" -> "cuda:0": the name a result's device reports, so placements compare equal
        return str(torch.empty(0, device=name).device) if present else None
    if kind == "cupy":
        cupy = _framework("cupy")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # no driver or no GPU
            return None
        return cupy.cuda.Device(_index(name)) if _index(name) < count else None
    if kind == "array_api_strict":
        strict = _framework("array_api_strict")
        try:
            device = strict.Device(name)
        except ValueError:
            return None
        return device if device in xp.__array_namespace_info__().devices() else None
    for device in xp.__array_namespace_info__().devices():
        if _device_label(device) == name:
            return device
    return None


def resolve_dtype(
    xp: ArrayNamespace, module: ModuleType, name: str, device: Device
) -> DType | None:
    """The dtype ``name`` of ``xp`` usable on ``device`` here, or None.

    Non-standard dtypes (bfloat16) come from the plain module; float64 counts only where the
    backend can hold it (not JAX without ``jax_enable_x64``, not float64-less devices).
    """
    dtype = getattr(xp, name, None)
    if dtype is None:
        dtype = getattr(module, name, None)
    if dtype is None:
        return None
    if name == "float64" and not has_float64(xp, device):
        return None
    return dtype


def _synchronize(out: Array) -> None:
    """Wait until ``out`` is computed (JAX dispatch, CUDA streams, Dask graphs)."""
    if hasattr(out, "block_until_ready"):
        out.block_until_ready()
    elif array_api_compat.is_torch_array(out):
        if out.device.type == "cuda":
            _framework("torch").cuda.synchronize(out.device)
    elif array_api_compat.is_cupy_array(out):
        out.device.synchronize()
    elif array_api_compat.is_dask_array(out):
        out.compute()


# -- schemes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """One scheme, ready to run: ``call()`` computes on the backend, ``expected`` in float64.

    ``scale`` is the denominator of the error (default ``max(|expected|, 1)``); ``max_angle``
    the largest trigonometric argument, for the float64 allowance.
    """

    call: Callable[[], Array]
    expected: Float64Array
    scale: Float64Array | None = None
    max_angle: float = 0.0


@dataclass(frozen=True)
class Scheme:
    """A named scheme: what it runs (``summary``) and how (``prepare(xp, device, dtype)``)."""

    name: str
    family: str
    summary: str
    prepare: Callable[[ArrayNamespace, Device, DType], Prepared]


def _host64(x: Array) -> Float64Array:
    return np.asarray(to_numpy(x), dtype=np.float64)


_REFERENCE_CACHE: dict[tuple[Any, ...], Any] = {}
"""Reference results by (scheme, digest of the rounded inputs): every backend sees the same
rounded inputs in a dtype, so the float64 reference runs once per scheme and dtype."""


def _digest(*arrays: Any) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _memo(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    if key not in _REFERENCE_CACHE:
        if len(_REFERENCE_CACHE) >= 512:
            _REFERENCE_CACHE.clear()
        _REFERENCE_CACHE[key] = compute()
    return _REFERENCE_CACHE[key]


def _seeded_input(
    xp: ArrayNamespace, device: Device, dtype: DType, shape: tuple[int, ...], seed: int = SEED
) -> tuple[Array, Float64Array]:
    """A seeded standard-normal input on the device, and its values in float64.

    The draws are rounded to 8 significant bits first, so bfloat16, float16, float32 and
    float64 all hold them exactly: every backend and dtype sees the same numbers (a backend's
    own float64 -> float16 conversion may round differently, e.g. through float32), and the
    difference between backends measures their computations only.
    """
    mantissa, exponent = np.frexp(np.random.default_rng(seed).standard_normal(shape))
    host = np.ldexp(np.round(mantissa * 2.0**8) / 2.0**8, exponent)
    x = xp.asarray(host, dtype=dtype, device=device)
    return x, _host64(x)


def _seeded_positions(
    xp: ArrayNamespace, device: Device, high: int, seed: int = SEED + 1
) -> tuple[Array, np.ndarray[Any, Any]]:
    """Seeded ``(batch, seq)`` positions in ``[0, high]`` (``high`` included once)."""
    host = np.random.default_rng(seed).integers(0, high + 1, size=(BATCH, SEQ_LEN))
    host[0, -1] = high
    return xp.asarray(host, dtype=index_dtype(xp, device), device=device), host


def _sinusoidal_scheme(name: str, with_positions: bool) -> Scheme:
    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        x, x64 = _seeded_input(xp, device, dtype, (BATCH, SEQ_LEN, EMBED_DIM))
        module = positional.SinusoidalPositionalEmbedding(EMBED_DIM)
        module.eval()
        if not with_positions:
            table = _memo((name,), lambda: reference.sinusoidal_reference(SEQ_LEN, EMBED_DIM))
            return Prepared(lambda: module(x), x64 + table, max_angle=SEQ_LEN)
        pos, pos_host = _seeded_positions(xp, device, MAX_POSITION)
        table = _memo(
            (name, _digest(pos_host)),
            lambda: reference.sinusoidal_reference(pos_host, EMBED_DIM),
        )
        return Prepared(lambda: module(x, pos), x64 + table, max_angle=MAX_POSITION)

    what = f"positions up to {MAX_POSITION}" if with_positions else "positions 0..seq-1"
    return Scheme(name, "sinusoidal", f"SinusoidalPositionalEmbedding, {what}", prepare)


def _absolute_scheme(name: str, with_positions: bool) -> Scheme:
    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        x, x64 = _seeded_input(xp, device, dtype, (BATCH, SEQ_LEN, EMBED_DIM))
        module = positional.AbsolutePositionalEmbedding(
            ABSOLUTE_MAX_SEQ_LEN, EMBED_DIM, xp=xp, device=device, dtype=dtype, seed=SEED
        )
        module.eval()
        table64 = _host64(module.pos_embedding.weight)
        if not with_positions:
            expected = reference.absolute_reference(x64, table64)
            return Prepared(lambda: module(x), expected)
        pos, pos_host = _seeded_positions(xp, device, ABSOLUTE_MAX_SEQ_LEN - 1)
        expected = reference.absolute_reference(x64, table64, pos_host)
        return Prepared(lambda: module(x, pos), expected)

    what = "explicit positions" if with_positions else "positions 0..seq-1"
    return Scheme(name, "absolute", f"AbsolutePositionalEmbedding (seeded table), {what}", prepare)


ALIBI_HEADS = 12
"""Heads of the ALiBi schemes: not a power of two (8 geometric slopes, then 4 interleaved)."""
T5_HEADS = 8
DECODE_KEYS = 300
"""Cached keys of the ``*-causal-decode`` schemes (one query, the newest position): beyond T5's
``max_distance=128``, so every bucket is used."""


def _alibi_scheme(name: str, causal_decode: bool) -> Scheme:
    """olm's symmetric square bias, or one causal decode row (the newest query)."""

    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        module = positional.ALiBiPositionalBias(
            ALIBI_HEADS, causal=causal_decode, xp=xp, device=device, dtype=dtype
        )
        seq_len_q, seq_len_k = (1, DECODE_KEYS) if causal_decode else (SEQ_LEN, SEQ_LEN)

        def expected() -> Float64Array:
            slopes = reference.alibi_slopes_reference(ALIBI_HEADS)
            return reference.alibi_reference(slopes, seq_len_q, seq_len_k, causal=causal_decode)

        return Prepared(lambda: module(seq_len_q, seq_len_k), _memo((name,), expected))

    what = f"causal, 1 query x {DECODE_KEYS} keys" if causal_decode else "symmetric, square"
    return Scheme(name, "alibi", f"ALiBiPositionalBias, {ALIBI_HEADS} heads, {what}", prepare)


def _t5_scheme(name: str, causal_decode: bool) -> Scheme:
    """The bidirectional square bias, or one causal decode row, from a seeded table."""

    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        module = positional.T5RelativePositionBias(
            T5_HEADS, bidirectional=not causal_decode, xp=xp, device=device, dtype=dtype, seed=SEED
        )
        table64 = _host64(module.relative_attention_bias.weight)
        seq_len_q, seq_len_k = (1, DECODE_KEYS) if causal_decode else (SEQ_LEN, SEQ_LEN)
        expected = _memo(
            (name, _digest(table64)),
            lambda: reference.t5_bias_reference(
                table64, seq_len_q, seq_len_k, bidirectional=not causal_decode
            ),
        )
        return Prepared(lambda: module(seq_len_q, seq_len_k), expected)

    what = f"causal, 1 query x {DECODE_KEYS} keys" if causal_decode else "bidirectional, square"
    return Scheme(name, "t5-bias", f"T5RelativePositionBias (seeded table), {what}", prepare)


# -- RoPE -----------------------------------------------------------------------------------

ROPE_ORIGINAL = 4096
"""Original context ``L0`` of the scaled RoPE schemes (every position above it is extended)."""
XPOS_MAX_SEQ_LEN = 2048
"""xPos's ``max_seq_len`` (its scale centre is half of it): positions stay below it, where
``zeta**((n - c) / 512)`` is within ``zeta**±2``."""
XPOS_GAMMA = 512.0
LONGROPE_SHORT = [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)]
LONGROPE_LONG = [1.0 + 0.5 * i for i in range(HEAD_DIM // 2)]


@dataclass(frozen=True)
class _Rope:
    """One RoPE configuration: the class to build, and the same configuration written out for
    the reference (HF ``rope_type`` and parameters, independently of the class's own mapping)."""

    build: Callable[[bool], Any]  # interleaved -> module
    summary: str
    rotary_dim: int = HEAD_DIM
    rope_type: str = "default"
    base: float = 10000.0
    params: Mapping[str, Any] = field(default_factory=dict)
    positions: str = "explicit"  # "sequential" (None), "explicit" ((batch, seq)), "decode"
    max_position: int = ROPE_MAX_POSITION
    xpos: bool = False  # queries and keys both: stacked on a new leading axis


def _scaled(
    scaling: str, factor: float, *, partial: bool
) -> tuple[Callable[[bool], Any], str, dict[str, Any], int, int]:
    """olm's ``ScaledRotary...``/``PartialScaledRotary...`` with ``scaling`` and the
    reference's (rope_type, parameters, rotary_dim, max_position) for it."""
    max_seq_len = XPOS_MAX_SEQ_LEN if scaling == "xpos" else ROPE_ORIGINAL

    def build(interleaved: bool) -> Any:
        common: dict[str, Any] = {
            "max_seq_len": max_seq_len,
            "scaling_type": scaling,
            "scaling_factor": factor,
            "original_max_seq_len": ROPE_ORIGINAL if scaling != "xpos" else None,
            "interleaved": interleaved,
        }
        if partial:
            return positional.PartialScaledRotaryPositionalEmbedding(HEAD_DIM, 0.5, **common)
        return positional.ScaledRotaryPositionalEmbedding(HEAD_DIM, **common)

    params: dict[str, Any] = {"factor": factor}
    if scaling in ("dynamic_ntk", "yarn"):
        params["original_max_position_embeddings"] = ROPE_ORIGINAL
    if scaling == "yarn":
        params.update(beta_fast=32.0, beta_slow=1.0)
    rope_type = {"dynamic_ntk": "dynamic", "xpos": "default"}.get(scaling, scaling)
    if scaling == "xpos":
        params = {}
    rotary_dim = HEAD_DIM // 2 if partial else HEAD_DIM
    max_position = XPOS_MAX_SEQ_LEN - 1 if scaling == "xpos" else ROPE_MAX_POSITION
    return build, rope_type, params, rotary_dim, max_position


def _rope_cases() -> dict[str, _Rope]:
    """Every RoPE class of olm, and every scaling variant each takes."""

    def plain(**kwargs: Any) -> Callable[[bool], Any]:
        def build(interleaved: bool) -> Any:
            return positional.RotaryPositionalEmbedding(
                HEAD_DIM, ROPE_ORIGINAL, interleaved=interleaved, **kwargs
            )

        return build

    cases = {
        "rope": _Rope(
            plain(), "RotaryPositionalEmbedding, positions 0..seq-1", positions="sequential"
        ),
        "rope-positions": _Rope(
            plain(),
            f"RotaryPositionalEmbedding, positions up to {MAX_POSITION}",
            max_position=MAX_POSITION,
        ),
        "rope-decode": _Rope(
            plain(),
            f"RotaryPositionalEmbedding, one token at offset {DECODE_OFFSET} (decode path)",
            positions="decode",
        ),
        "rope-partial": _Rope(
            lambda i: positional.PartialRotaryPositionalEmbedding(HEAD_DIM, 0.5, interleaved=i),
            "PartialRotaryPositionalEmbedding, rotary_percentage=0.5",
            rotary_dim=HEAD_DIM // 2,
        ),
        "rope-longrope": _Rope(
            plain(
                rope_type="longrope",
                rope_parameters={
                    "short_factor": LONGROPE_SHORT,
                    "long_factor": LONGROPE_LONG,
                    "original_max_position_embeddings": ROPE_ORIGINAL,
                    "factor": 16.0,
                },
            ),
            "RotaryPositionalEmbedding(rope_type='longrope'), past L0: long factors",
            rope_type="longrope",
            params={
                "short_factor": LONGROPE_SHORT,
                "long_factor": LONGROPE_LONG,
                "original_max_position_embeddings": ROPE_ORIGINAL,
                "factor": 16.0,
            },
        ),
        "rope-llama3": _Rope(
            lambda i: positional.Llama3RotaryPositionalEmbedding(HEAD_DIM, interleaved=i),
            "Llama3RotaryPositionalEmbedding, Meta's Llama 3.1 defaults",
            rope_type="llama3",
            base=500000.0,
            params={
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
    }
    factors = {"linear": 4.0, "ntk": 4.0, "dynamic_ntk": 4.0, "yarn": 8.0, "xpos": 1.0}
    for partial in (False, True):
        for scaling, factor in factors.items():
            build, rope_type, params, rotary_dim, max_position = _scaled(
                scaling, factor, partial=partial
            )
            cls = "PartialScaled" if partial else "Scaled"
            what = "queries and keys" if scaling == "xpos" else f"factor {factor:g}"
            name = ("rope-partial-" if partial else "rope-") + scaling.replace("_ntk", "")
            cases[name] = _Rope(
                build,
                f"{cls}RotaryPositionalEmbedding(scaling_type='{scaling}'), {what}",
                rotary_dim=rotary_dim,
                rope_type=rope_type,
                params=params,
                max_position=max_position,
                xpos=scaling == "xpos",
            )
    return cases


def _pair_scale(expected: Float64Array, rotary_dim: int, interleaved: bool) -> Float64Array:
    """The error's denominator for a rotation: each rotated pair's magnitude, for both of its
    features; ``max(|ref|, 1)`` for the features that pass through."""
    scale = np.maximum(np.abs(expected), 1.0)
    half = rotary_dim // 2
    if interleaved:
        a, b = expected[..., 0:rotary_dim:2], expected[..., 1:rotary_dim:2]
        norm = np.hypot(a, b)
        scale[..., 0:rotary_dim:2], scale[..., 1:rotary_dim:2] = norm, norm
    else:
        a, b = expected[..., :half], expected[..., half:rotary_dim]
        norm = np.hypot(a, b)
        scale[..., :half], scale[..., half:rotary_dim] = norm, norm
    return np.maximum(scale, np.finfo(np.float64).tiny)


def _rope_scheme(name: str, case: _Rope, interleaved: bool) -> Scheme:
    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        seq = 1 if case.positions == "decode" else SEQ_LEN
        x, x64 = _seeded_input(xp, device, dtype, (BATCH, seq, HEADS, HEAD_DIM))
        module = case.build(interleaved)
        if case.positions == "sequential":
            arg: Any = None
            pos_host: np.ndarray[Any, Any] = np.arange(SEQ_LEN)
        elif case.positions == "decode":
            arg, pos_host = DECODE_OFFSET, np.array([DECODE_OFFSET])
        else:
            arg, pos_host = _seeded_positions(xp, device, case.max_position)
        params = dict(case.params)
        if case.rope_type in ("dynamic", "longrope"):  # the length follows the positions
            params["seq_len"] = int(pos_host.max()) + 1

        def expected() -> tuple[Float64Array, float]:
            inv_freq, factor = reference.rope_frequencies_reference(
                case.rotary_dim, case.rope_type, case.base, **params
            )
            max_angle = float(pos_host.max() * inv_freq.max())
            if not case.xpos:
                out = reference.rope_reference(
                    x64, pos_host, inv_freq, interleaved=interleaved, attention_factor=factor
                )
                return out, max_angle
            center = XPOS_MAX_SEQ_LEN // 2
            q, k = (
                reference.rope_reference(
                    x64,
                    pos_host,
                    inv_freq,
                    interleaved=interleaved,
                    attention_factor=factor,
                    xpos=(XPOS_GAMMA, center, sign),
                )
                for sign in (1, -1)
            )
            return np.stack([q, k]), max_angle

        ref, max_angle = _memo((name, _digest(x64, pos_host)), expected)
        if case.xpos:

            def call() -> Array:
                return xp.stack([module(x, arg, role="query"), module(x, arg, role="key")])

        else:

            def call() -> Array:
                return module(x, arg)

        scale = _pair_scale(ref, case.rotary_dim, interleaved)
        return Prepared(call, ref, scale=scale, max_angle=max_angle)

    layout = "interleaved pairs (x[2i], x[2i+1])" if interleaved else "half-split (x[i], x[i+d/2])"
    return Scheme(name, "rope", f"{case.summary}; {layout}", prepare)


def _all_schemes() -> dict[str, Scheme]:
    schemes = [
        _sinusoidal_scheme("sinusoidal", with_positions=False),
        _sinusoidal_scheme("sinusoidal-positions", with_positions=True),
        _absolute_scheme("absolute", with_positions=False),
        _absolute_scheme("absolute-positions", with_positions=True),
        _alibi_scheme("alibi", causal_decode=False),
        _alibi_scheme("alibi-causal-decode", causal_decode=True),
        _t5_scheme("t5-bias", causal_decode=False),
        _t5_scheme("t5-bias-causal-decode", causal_decode=True),
    ]
    for base_name, case in _rope_cases().items():
        for interleaved, layout in ((True, "interleaved"), (False, "half")):
            schemes.append(_rope_scheme(f"{base_name}-{layout}", case, interleaved))
    return {s.name: s for s in schemes}


SCHEMES: dict[str, Scheme] = _all_schemes()
"""Every scheme ``compare`` runs, by name: each class's ``forward`` with and without explicit
positions, every RoPE class and scaling variant in both layouts (``-interleaved``, ``-half``)."""


# -- one row --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareRow:
    """One result of ``olm-xp compare`` (the ``rows`` of the ``--json`` file)."""

    backend: str
    device: str
    dtype: str
    scheme: str
    max_error_eps: float | None
    tolerance_eps: float
    passed: bool
    seconds_per_call: float | None
    error: str | None = None


def _max_error_eps(
    out: np.ndarray[Any, Any], ref: np.ndarray[Any, Any], scale: np.ndarray[Any, Any], eps: float
) -> float:
    return float(np.max(np.abs(out - ref) / scale) / eps)


def _check_placement(
    out: Array, expected: np.ndarray[Any, Any], dtype: DType, device: Device
) -> str:
    """Why ``out`` has the wrong shape, dtype or device ("" if it has the right ones)."""
    if tuple(out.shape) != expected.shape:
        return f"result has shape {tuple(out.shape)}, expected {expected.shape}"
    if dtype_name(out.dtype) != dtype_name(dtype):
        return f"result has dtype {dtype_name(out.dtype)}, expected {dtype_name(dtype)}"
    got = device_of(out)
    if got is not None and device_key(got) != device_key(device):
        return f"result is on device {got}, expected {device}"
    return ""


@dataclass
class _Outcome:
    row: CompareRow
    out: Float64Array | None = None  # the checked result on the host, for the pairwise spread
    scale: Float64Array | None = None
    eps: float = 0.0


def run_scheme(
    backend: str,
    device_name: str,
    xp: ArrayNamespace,
    device: Device,
    dtype: DType,
    scheme: Scheme,
) -> _Outcome:
    """Run one scheme: a checked call, timed calls, and the last timed result checked too
    (it may take a cached or lean path the first call did not). Never raises."""
    tolerance = TOLERANCE_EPS

    def outcome(error_eps: float | None, seconds: float | None, error: str | None) -> _Outcome:
        passed = error is None and error_eps is not None and error_eps <= tolerance
        row = CompareRow(
            backend,
            device_name,
            dtype_name(dtype),
            scheme.name,
            error_eps,
            tolerance,
            passed,
            seconds,
            error,
        )
        return _Outcome(row)

    try:
        eps = float(xp.finfo(dtype).eps)
        case = scheme.prepare(xp, device, dtype)
        if dtype_name(dtype) == "float64":
            tolerance += reference.float64_allowance_eps(case.max_angle)
        scale = case.scale if case.scale is not None else np.maximum(np.abs(case.expected), 1.0)
        first = case.call()
        _synchronize(first)
        problem = _check_placement(first, case.expected, dtype, device)
        if problem:
            return outcome(None, None, problem)
        first64 = _host64(first)
        times: list[float] = []
        last = first
        while len(times) < TIMED_CALLS and sum(times) < TIME_BUDGET_S:
            start = time.perf_counter()
            last = case.call()
            _synchronize(last)
            times.append(time.perf_counter() - start)
        problem = _check_placement(last, case.expected, dtype, device)
        if problem:
            return outcome(None, None, f"repeated call: {problem}")
        errors = [_max_error_eps(first64, case.expected, scale, eps)]
        errors.append(_max_error_eps(_host64(last), case.expected, scale, eps))
        if not all(np.isfinite(errors)):
            return outcome(None, None, "result has NaN or infinite values")
    except Exception as err:  # a backend that fails to run is a failed row, not a crash
        return outcome(None, None, f"{type(err).__name__}: {err}".strip())
    result = outcome(max(errors), statistics.median(times), None)
    result.out, result.scale, result.eps = first64, scale, eps
    return result


# -- pairwise -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairwiseRow:
    """The largest difference between any two backends' results for one scheme and dtype."""

    scheme: str
    dtype: str
    results: int
    max_difference_eps: float | None
    between: tuple[str, ...]


@dataclass
class _Spread:
    """Element-wise highest and lowest result so far, and whose they were."""

    scale: Float64Array
    eps: float
    high: Float64Array
    low: Float64Array
    high_by: np.ndarray[Any, np.dtype[np.intp]]
    low_by: np.ndarray[Any, np.dtype[np.intp]]
    labels: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, out: Float64Array, scale: Float64Array, eps: float, label: str) -> _Spread:
        zeros = np.zeros(out.shape, dtype=np.intp)
        return cls(scale, eps, out.copy(), out.copy(), zeros, zeros.copy(), [label])

    def add(self, out: Float64Array, label: str) -> None:
        index = len(self.labels)
        self.labels.append(label)
        higher, lower = out > self.high, out < self.low
        self.high = np.where(higher, out, self.high)
        self.low = np.where(lower, out, self.low)
        self.high_by = np.where(higher, index, self.high_by)
        self.low_by = np.where(lower, index, self.low_by)

    def row(self, scheme: str, dtype: str) -> PairwiseRow:
        if len(self.labels) < 2:
            return PairwiseRow(scheme, dtype, len(self.labels), None, ())
        spread = (self.high - self.low) / self.scale
        worst = np.unravel_index(int(np.argmax(spread)), spread.shape)
        value = float(spread[worst]) / self.eps
        between: tuple[str, ...] = ()
        if value > 0:
            between = (self.labels[int(self.high_by[worst])], self.labels[int(self.low_by[worst])])
        return PairwiseRow(scheme, dtype, len(self.labels), value, between)


# -- planning -------------------------------------------------------------------------------


@dataclass
class Target:
    """One device of one framework to compare on, with the profile its rows are reported as."""

    profile: BackendProfile
    device_name: str
    device: Device
    dtypes: list[tuple[str, DType]]


@dataclass
class Plan:
    targets: list[tuple[ArrayNamespace, Target]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # profile id -> reason and remedy
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # profile id -> module version

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _plan_module(
    plan: Plan,
    profiles: list[BackendProfile],
    module: ModuleType,
    dtype_filter: set[str] | None,
    device_filter: set[str] | None,
) -> None:
    """Add the devices and dtypes of profiles that share one module (e.g. jax.numpy) to ``plan``.

    A device listed by several profiles is compared once, reported as the profile whose dtypes
    this configuration supports best (for JAX: ``jax-cpu`` with x64 on, ``jax-cpu-x32`` off).
    """
    xp = resolve_namespace(module)
    candidates: dict[str, list[BackendProfile]] = {}
    devices: dict[str, Device] = {}
    for profile in profiles:
        for name in profile.devices:
            if device_filter is not None and name not in device_filter:
                continue
            if name in profile.shape_only_devices:
                plan.note(f"{profile.id}: device {name} holds no data (shape only); not compared")
                continue
            if name not in devices:
                devices[name] = resolve_device(xp, name)
            if devices[name] is not None:
                candidates.setdefault(name, []).append(profile)
    for profile in profiles:
        wanted = [
            d
            for d in profile.devices
            if d not in profile.shape_only_devices and (device_filter is None or d in device_filter)
        ]
        if not wanted:
            plan.skipped[profile.id] = "none of its devices was selected by --devices"
            continue
        missing = [d for d in wanted if devices[d] is None]
        if missing and len(missing) == len(wanted):
            remedy = "needs a GPU" if profile.is_gpu else "needs that device"
            plan.skipped[profile.id] = (
                f"none of its devices ({', '.join(wanted)}) is available here; {remedy}"
                f"{env_hint(profile)}"
            )
        elif missing:
            plan.note(
                f"{profile.id}: device {', '.join(missing)} not available here{env_hint(profile)}"
            )
    for name, group in candidates.items():
        device = devices[name]
        usable: dict[str, list[tuple[str, DType]]] = {}
        unusable: dict[str, list[str]] = {}
        for profile in group:
            usable[profile.id], unusable[profile.id] = [], []
            for dtype_id in (*profile.dtypes, *profile.low_precision_dtypes):
                dtype = resolve_dtype(xp, module, dtype_id, device)
                if dtype is None:
                    unusable[profile.id].append(dtype_id)
                else:
                    usable[profile.id].append((dtype_id, dtype))
        best = min(group, key=lambda p: (len(unusable[p.id]), -len(usable[p.id])))
        dtypes: dict[str, DType] = {}
        for profile in group:
            for dtype_id in unusable[profile.id]:
                if dtype_filter is not None and dtype_id not in dtype_filter:
                    continue
                plan.note(
                    f"{profile.id}: {dtype_id} is not available on {name} here{env_hint(profile)}"
                )
            dtypes.update(usable[profile.id])
            if profile is not best:
                plan.note(f"{profile.id}: {name} compared once, reported as {best.id}")
        if dtype_filter is not None:
            dtypes = {k: v for k, v in dtypes.items() if k in dtype_filter}
        if dtypes:
            plan.targets.append((xp, Target(best, name, device, list(dtypes.items()))))
            plan.versions[best.id] = module_version(best.module)


def plan_compare(
    profiles: Iterable[BackendProfile],
    dtype_filter: set[str] | None = None,
    device_filter: set[str] | None = None,
) -> Plan:
    """Import the selected profiles' modules and work out every (device, dtype) to compare."""
    plan = Plan()
    by_module: dict[str, list[BackendProfile]] = {}
    modules: dict[str, ModuleType] = {}
    for profile in profiles:
        try:
            modules[profile.module] = import_backend(profile)
        except ImportError as err:
            plan.skipped[profile.id] = f"not installed ({err}); add it: {pip_command(profile)}"
            continue
        except Exception as err:  # a broken install must not stop the other backends
            plan.skipped[profile.id] = (
                f"import failed ({type(err).__name__}: {err}); reinstall: {pip_command(profile)}"
            )
            continue
        by_module.setdefault(profile.module, []).append(profile)
    for module_name, group in by_module.items():
        try:
            _plan_module(plan, group, modules[module_name], dtype_filter, device_filter)
        except Exception as err:
            for profile in group:
                plan.skipped[profile.id] = f"setup failed ({type(err).__name__}: {err})"
    return plan


# -- the run --------------------------------------------------------------------------------


@dataclass
class CompareResult:
    rows: list[CompareRow]
    pairwise: list[PairwiseRow]
    plan: Plan
    seconds: float

    @property
    def failed(self) -> list[CompareRow]:
        return [r for r in self.rows if not r.passed]


Progress = Callable[[int, int, str], None]
"""``progress(done, total, label)``: called before each row runs and once at the end."""


def compare(
    profiles: Sequence[BackendProfile],
    *,
    dtype_filter: set[str] | None = None,
    device_filter: set[str] | None = None,
    schemes: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> CompareResult:
    """Run the selected schemes on every selected backend, device and dtype."""
    start = time.perf_counter()
    plan = plan_compare(profiles, dtype_filter, device_filter)
    selected = [SCHEMES[s] for s in (SCHEMES if schemes is None else schemes)]
    total = sum(len(t.dtypes) for _, t in plan.targets) * len(selected)
    rows: list[CompareRow] = []
    spreads: dict[tuple[str, str], _Spread] = {}
    for xp, target in plan.targets:
        for dtype_id, dtype in target.dtypes:
            for scheme in selected:
                label = f"{target.profile.id} {target.device_name} {dtype_id} {scheme.name}"
                if progress is not None:
                    progress(len(rows), total, label)
                result = run_scheme(
                    target.profile.id, target.device_name, xp, target.device, dtype, scheme
                )
                rows.append(result.row)
                if result.out is None or result.scale is None:
                    continue
                who = f"{target.profile.id} {target.device_name}"
                key = (scheme.name, dtype_id)
                spread = spreads.get(key)
                if spread is None:
                    spreads[key] = _Spread.start(result.out, result.scale, result.eps, who)
                elif spread.high.shape == result.out.shape:
                    spread.add(result.out, who)
    if progress is not None:
        progress(len(rows), total, "done")
    order = {name: i for i, name in enumerate(SCHEMES)}
    pairwise = [
        spreads[key].row(*key) for key in sorted(spreads, key=lambda k: (order[k[0]], k[1]))
    ]
    return CompareResult(rows, pairwise, plan, time.perf_counter() - start)
