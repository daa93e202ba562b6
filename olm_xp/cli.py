"""The ``olm-xp`` command (also ``python -m olm_xp``).

``olm-xp info``
    Versions, and for every backend profile (``backends/*.toml``) whether its module imports,
    its version and its devices.
``olm-xp compare``
    Runs every implemented scheme on every importable backend, device and dtype against the
    float64 reference of :mod:`olm_xp.reference` and prints the error in units of the dtype's
    machine epsilon, pass/fail against :data:`TOLERANCE_EPS` and the time per call.
``olm-xp support-table``
    The README's Markdown backend support table, generated from the profiles.

The profiles from :func:`olm_xp._profiles.load_profiles` are the only list of backends. This
module imports no framework (torch, JAX, CuPy, Dask) when it is imported: a backend's module is
imported only by :func:`import_backend`, for the profiles a command actually uses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, TextIO

import array_api_compat
import numpy as np

import olm_xp
from olm_xp import reference
from olm_xp._compat import (
    device_key,
    device_of,
    dtype_name,
    has_float64,
    namespace_name,
    resolve_namespace,
    to_numpy,
)
from olm_xp._profiles import BackendProfile, load_profiles
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp.nn.embeddings import positional

__all__ = ["TOLERANCE_EPS", "CompareRow", "import_backend", "main"]

TOLERANCE_EPS = 2.0
"""The promised accuracy, in units of the output dtype's machine epsilon ``eps``.

For every scheme, backend, device and dtype, ``max(|out - ref| / max(|ref|, 1)) <= 2 eps``,
where ``ref`` is the float64 reference (:mod:`olm_xp.reference`) evaluated on the inputs as
rounded to the dtype (and, for learned tables, on the table as stored). ``olm-xp compare``
checks exactly this; it is the one place the number is written down. float64 results of
trigonometric schemes get :func:`olm_xp.reference.float64_allowance_eps` on top: there the float64
reference is no more exact than the result.
"""

# The seeded problem every backend solves (inputs drawn on the host in float64).
SEED = 0
BATCH = 2
SEQ_LEN = 33
EMBED_DIM = 64
MAX_POSITION = 2**16 - 1
"""Largest explicit position in the ``*-positions`` schemes (the sinusoidal table grows to it)."""
ABSOLUTE_MAX_SEQ_LEN = 1024
TIMED_CALLS = 5
"""Calls timed per row (after the warm-up call whose result is checked); the median is shown."""


# -- backends -------------------------------------------------------------------------------


def import_backend(profile: BackendProfile) -> ModuleType:
    """Import ``profile.module`` (the only place a framework is imported).

    Raises whatever the import raises (``ImportError`` when the package is not installed).
    """
    return importlib.import_module(profile.module)


def _framework(name: str) -> Any:
    """An already selected framework's top-level module (``torch``, ``jax``, ``cupy``, ...)."""
    return importlib.import_module(name)


def _pip_command(profile: BackendProfile) -> str:
    return "pip install " + " ".join(shlex.quote(req) for req in profile.requirements)


def _env_hint(profile: BackendProfile) -> str:
    """The profile's environment settings that this process does not have, if any."""
    missing = [f"{k}={v}" for k, v in profile.env.items() if os.environ.get(k) != v]
    return f" (the profile runs with {' '.join(missing)})" if missing else ""


def _module_version(module_name: str) -> str:
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


def _index_dtype(xp: ArrayNamespace, device: Device) -> DType:
    info = xp.__array_namespace_info__()
    try:
        return info.default_dtypes(device=device)["indexing"]
    except (TypeError, ValueError):
        return info.default_dtypes()["indexing"]


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
    """One scheme, ready to run: ``call()`` computes on the backend, ``expected`` in float64."""

    call: Callable[[], Array]
    expected: np.ndarray[Any, np.dtype[np.float64]]
    max_angle: float = 0.0  # largest trigonometric argument, for the float64 allowance


Scheme = Callable[[ArrayNamespace, Device, DType], Prepared]


def _host64(x: Array) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(to_numpy(x), dtype=np.float64)


def _seeded_x(
    xp: ArrayNamespace, device: Device, dtype: DType, rng: np.random.Generator
) -> tuple[Array, np.ndarray[Any, np.dtype[np.float64]]]:
    """Seeded ``(batch, seq, dim)`` input on the device, and its rounded values in float64."""
    host = rng.standard_normal((BATCH, SEQ_LEN, EMBED_DIM))
    x = xp.asarray(host, dtype=dtype, device=device)
    return x, _host64(x)


def _seeded_positions(
    xp: ArrayNamespace, device: Device, rng: np.random.Generator, high: int
) -> tuple[Array, np.ndarray[Any, Any]]:
    """Seeded ``(batch, seq)`` positions in ``[0, high]`` (``high`` included once)."""
    host = rng.integers(0, high + 1, size=(BATCH, SEQ_LEN))
    host[0, -1] = high
    return xp.asarray(host, dtype=_index_dtype(xp, device), device=device), host


def _sinusoidal_scheme(with_positions: bool) -> Scheme:
    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        rng = np.random.default_rng(SEED)
        x, x64 = _seeded_x(xp, device, dtype, rng)
        module = positional.SinusoidalPositionalEmbedding(EMBED_DIM)
        module.eval()
        if not with_positions:
            expected = x64 + reference.sinusoidal_reference(SEQ_LEN, EMBED_DIM)
            return Prepared(lambda: module(x), expected, max_angle=SEQ_LEN)
        pos, pos_host = _seeded_positions(xp, device, rng, MAX_POSITION)
        expected = x64 + reference.sinusoidal_reference(pos_host, EMBED_DIM)
        return Prepared(lambda: module(x, pos), expected, max_angle=MAX_POSITION)

    return prepare


def _absolute_scheme(with_positions: bool) -> Scheme:
    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        rng = np.random.default_rng(SEED)
        x, x64 = _seeded_x(xp, device, dtype, rng)
        module = positional.AbsolutePositionalEmbedding(
            ABSOLUTE_MAX_SEQ_LEN, EMBED_DIM, xp=xp, device=device, dtype=dtype, seed=SEED
        )
        module.eval()
        table64 = _host64(module.pos_embedding.weight)
        if not with_positions:
            expected = reference.absolute_reference(x64, table64)
            return Prepared(lambda: module(x), expected)
        pos, pos_host = _seeded_positions(xp, device, rng, ABSOLUTE_MAX_SEQ_LEN - 1)
        expected = reference.absolute_reference(x64, table64, pos_host)
        return Prepared(lambda: module(x, pos), expected)

    return prepare


ALIBI_HEADS = 12
"""Heads of the ALiBi schemes: not a power of two (8 geometric slopes, then 4 interleaved)."""
T5_HEADS = 8
DECODE_KEYS = 300
"""Cached keys of the ``*-causal-decode`` schemes (one query, the newest position): beyond T5's
``max_distance=128``, so every bucket is used."""


def _alibi_scheme(causal_decode: bool) -> Scheme:
    """olm's symmetric square bias, or one causal decode row (the newest query)."""

    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        module = positional.ALiBiPositionalBias(
            ALIBI_HEADS, causal=causal_decode, xp=xp, device=device, dtype=dtype
        )
        seq_len_q, seq_len_k = (1, DECODE_KEYS) if causal_decode else (SEQ_LEN, SEQ_LEN)
        slopes = reference.alibi_slopes_reference(ALIBI_HEADS)
        expected = reference.alibi_reference(slopes, seq_len_q, seq_len_k, causal=causal_decode)
        return Prepared(lambda: module(seq_len_q, seq_len_k), expected)

    return prepare


def _t5_scheme(causal_decode: bool) -> Scheme:
    """The bidirectional square bias, or one causal decode row, from a seeded table."""

    def prepare(xp: ArrayNamespace, device: Device, dtype: DType) -> Prepared:
        module = positional.T5RelativePositionBias(
            T5_HEADS, bidirectional=not causal_decode, xp=xp, device=device, dtype=dtype, seed=SEED
        )
        table64 = _host64(module.relative_attention_bias.weight)
        seq_len_q, seq_len_k = (1, DECODE_KEYS) if causal_decode else (SEQ_LEN, SEQ_LEN)
        expected = reference.t5_bias_reference(
            table64, seq_len_q, seq_len_k, bidirectional=not causal_decode
        )
        return Prepared(lambda: module(seq_len_q, seq_len_k), expected)

    return prepare


SCHEMES: dict[str, Scheme] = {
    "sinusoidal": _sinusoidal_scheme(with_positions=False),
    "sinusoidal-positions": _sinusoidal_scheme(with_positions=True),
    "absolute": _absolute_scheme(with_positions=False),
    "absolute-positions": _absolute_scheme(with_positions=True),
    "alibi": _alibi_scheme(causal_decode=False),
    "alibi-causal-decode": _alibi_scheme(causal_decode=True),
    "t5-bias": _t5_scheme(causal_decode=False),
    "t5-bias-causal-decode": _t5_scheme(causal_decode=True),
}
"""Every implemented scheme: the class ``forward`` without and with explicit positions."""


# -- compare --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareRow:
    """One result of ``olm-xp compare`` (the ``--json`` file is a list of these)."""

    backend: str
    device: str
    dtype: str
    scheme: str
    max_error_eps: float | None
    tolerance_eps: float
    passed: bool
    seconds_per_call: float | None
    error: str | None = None


def _max_error_eps(out: np.ndarray[Any, Any], ref: np.ndarray[Any, Any], eps: float) -> float:
    return float(np.max(np.abs(out - ref) / np.maximum(np.abs(ref), 1.0)) / eps)


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


def run_scheme(
    backend: str,
    device_name: str,
    xp: ArrayNamespace,
    device: Device,
    dtype: DType,
    scheme: str,
    prepare: Scheme,
) -> CompareRow:
    """Run one scheme once (checked) and :data:`TIMED_CALLS` times (timed); never raises."""

    tolerance = TOLERANCE_EPS

    def row(error_eps: float | None, seconds: float | None, error: str | None) -> CompareRow:
        passed = error is None and error_eps is not None and error_eps <= tolerance
        return CompareRow(
            backend,
            device_name,
            dtype_name(dtype),
            scheme,
            error_eps,
            tolerance,
            passed,
            seconds,
            error,
        )

    try:
        eps = float(xp.finfo(dtype).eps)
        case = prepare(xp, device, dtype)
        if dtype_name(dtype) == "float64":
            tolerance += reference.float64_allowance_eps(case.max_angle)
        out = case.call()
        _synchronize(out)
        problem = _check_placement(out, case.expected, dtype, device)
        if problem:
            return row(None, None, problem)
        error_eps = _max_error_eps(_host64(out), case.expected, eps)
        if not np.isfinite(error_eps):
            return row(None, None, "result has NaN or infinite values")
        times = []
        for _ in range(TIMED_CALLS):
            start = time.perf_counter()
            _synchronize(case.call())
            times.append(time.perf_counter() - start)
    except Exception as err:  # a backend that fails to run is a failed row, not a crash
        return row(None, None, f"{type(err).__name__}: {err}".strip())
    return row(error_eps, statistics.median(times), None)


@dataclass
class _Target:
    """One device of one framework to compare on, with the profile its rows are reported as."""

    profile: BackendProfile
    device_name: str
    device: Device
    dtypes: list[tuple[str, DType]]


@dataclass
class _Plan:
    targets: list[tuple[ArrayNamespace, _Target]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # profile id -> reason and remedy
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _plan_module(
    plan: _Plan,
    profiles: list[BackendProfile],
    module: ModuleType,
    dtype_filter: set[str] | None,
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
            if name in profile.shape_only_devices:
                plan.note(f"{profile.id}: device {name} holds no data (shape only); not compared")
                continue
            if name not in devices:
                devices[name] = resolve_device(xp, name)
            if devices[name] is not None:
                candidates.setdefault(name, []).append(profile)
    for profile in profiles:
        wanted = [d for d in profile.devices if d not in profile.shape_only_devices]
        missing = [d for d in wanted if devices[d] is None]
        if missing and len(missing) == len(wanted):
            remedy = "needs a GPU" if profile.is_gpu else "needs that device"
            plan.skipped[profile.id] = (
                f"none of its devices ({', '.join(wanted)}) is available here; {remedy}"
                f"{_env_hint(profile)}"
            )
        elif missing:
            plan.note(
                f"{profile.id}: device {', '.join(missing)} not available here{_env_hint(profile)}"
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
                    f"{profile.id}: {dtype_id} is not available on {name} here{_env_hint(profile)}"
                )
            dtypes.update(usable[profile.id])
            if profile is not best:
                plan.note(f"{profile.id}: {name} compared once, reported as {best.id}")
        if dtype_filter is not None:
            dtypes = {k: v for k, v in dtypes.items() if k in dtype_filter}
        plan.targets.append((xp, _Target(best, name, device, list(dtypes.items()))))


def plan_compare(profiles: Iterable[BackendProfile], dtype_filter: set[str] | None) -> _Plan:
    """Import the selected profiles' modules and work out every (device, dtype) to compare."""
    plan = _Plan()
    by_module: dict[str, list[BackendProfile]] = {}
    modules: dict[str, ModuleType] = {}
    for profile in profiles:
        try:
            modules[profile.module] = import_backend(profile)
        except ImportError as err:
            plan.skipped[profile.id] = f"not installed ({err}); add it: {_pip_command(profile)}"
            continue
        except Exception as err:  # a broken install must not stop the other backends
            plan.skipped[profile.id] = (
                f"import failed ({type(err).__name__}: {err}); reinstall: {_pip_command(profile)}"
            )
            continue
        by_module.setdefault(profile.module, []).append(profile)
    for module_name, group in by_module.items():
        try:
            _plan_module(plan, group, modules[module_name], dtype_filter)
        except Exception as err:
            for profile in group:
                plan.skipped[profile.id] = f"setup failed ({type(err).__name__}: {err})"
    return plan


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with columns aligned to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _result_label(row: CompareRow) -> str:
    if row.error is not None:
        return "ERROR"
    return "pass" if row.passed else "FAIL"


def _print_rows(rows: Sequence[CompareRow], out: TextIO) -> None:
    headers = [
        "backend",
        "device",
        "dtype",
        "scheme",
        "max err/eps",
        "tol/eps",
        "result",
        "time/call",
    ]
    cells = [
        [
            r.backend,
            r.device,
            r.dtype,
            r.scheme,
            "-" if r.max_error_eps is None else f"{r.max_error_eps:.3g}",
            f"{r.tolerance_eps:g}",
            _result_label(r),
            _format_seconds(r.seconds_per_call),
        ]
        for r in rows
    ]
    print(format_table(headers, cells), file=out)


def compare(
    profiles: Sequence[BackendProfile],
    *,
    dtype_filter: set[str] | None = None,
    out: TextIO | None = None,
) -> tuple[list[CompareRow], _Plan]:
    """Run every scheme on every selected backend, device and dtype; print the table."""
    out = sys.stdout if out is None else out
    plan = plan_compare(profiles, dtype_filter)
    rows: list[CompareRow] = []
    for xp, target in plan.targets:
        for _dtype_name, dtype in target.dtypes:
            for scheme, prepare in SCHEMES.items():
                rows.append(
                    run_scheme(
                        target.profile.id,
                        target.device_name,
                        xp,
                        target.device,
                        dtype,
                        scheme,
                        prepare,
                    )
                )
    print(
        f"olm-xp compare: error = max(|out - ref| / max(|ref|, 1)) in units of the dtype's eps, "
        f"against the float64 reference; tolerance {TOLERANCE_EPS:g} eps",
        file=out,
    )
    if rows:
        _print_rows(rows, out)
    else:
        print("(nothing ran: no selected backend is usable here)", file=out)
    errors = [r for r in rows if r.error is not None]
    if errors:
        print("\nerrors:", file=out)
        for r in errors:
            print(f"  {r.backend} {r.device} {r.dtype} {r.scheme}: {r.error}", file=out)
    if plan.notes:
        print("\nnotes:", file=out)
        for note in plan.notes:
            print(f"  {note}", file=out)
    if plan.skipped:
        print("\nskipped backends:", file=out)
        for profile_id, reason in plan.skipped.items():
            print(f"  {profile_id}: {reason}", file=out)
    passed = sum(r.passed for r in rows)
    skipped = f"; skipped: {', '.join(plan.skipped)}" if plan.skipped else ""
    print(f"\ncompare: {passed} passed, {len(rows) - passed} failed{skipped}", file=out)
    return rows, plan


# -- info -----------------------------------------------------------------------------------


def _info(out: TextIO) -> int:
    print(f"olm_xp {olm_xp.__version__}", file=out)
    print(f"Python {platform.python_version()} ({sys.executable})", file=out)
    print(f"numpy {np.__version__}", file=out)
    print(f"array-api-compat {array_api_compat.__version__}", file=out)
    print("\nbackend profiles:", file=out)
    cells = []
    for profile in load_profiles().values():
        try:
            module = import_backend(profile)
        except Exception as err:
            status = "not installed" if isinstance(err, ImportError) else "import failed"
            detail = f"{type(err).__name__}: {err}; {_pip_command(profile)}"
            cells.append([profile.id, profile.module, status, "-", "-", detail])
            continue
        version = _module_version(profile.module)
        try:
            xp = resolve_namespace(module)
            devices = visible_devices(xp)
            missing = [
                d
                for d in profile.devices
                if d not in profile.shape_only_devices and resolve_device(xp, d) is None
            ]
            first = resolve_device(xp, profile.devices[0])
            float64 = "-" if first is None else ("yes" if has_float64(xp, first) else "no")
        except Exception as err:
            cells.append(
                [profile.id, profile.module, "error", version, "-", f"{type(err).__name__}: {err}"]
            )
            continue
        if not missing:
            status = "ok"
        elif len(missing) == len(profile.devices) - len(profile.shape_only_devices):
            status = "no GPU here" if profile.is_gpu else "no device here"
        else:
            status = f"ok ({', '.join(missing)} not here)"
        cells.append([profile.id, profile.module, status, version, float64, ", ".join(devices)])
    headers = ["profile", "module", "status", "version", "float64", "devices / how to add"]
    print(format_table(headers, cells), file=out)
    return 0


# -- support table --------------------------------------------------------------------------


def support_table(profiles: Iterable[BackendProfile]) -> str:
    """The README's Markdown backend support table, one row per profile."""
    headers = [
        "profile",
        "title",
        "kind",
        "devices tested",
        "dtypes",
        "low-precision dtypes",
        "jit",
        "install requirement",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for p in profiles:
        devices = ", ".join(
            f"{d} (shape only)" if d in p.shape_only_devices else d for d in p.devices
        )
        cells = [
            f"`{p.id}`",
            p.title,
            p.kind,
            devices,
            ", ".join(p.dtypes),
            ", ".join(p.low_precision_dtypes) or "-",
            p.jit or "-",
            ", ".join(f"`{r}`" for r in p.requirements),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olm-xp", description="olm_xp: olm's positional embeddings on every array-API backend"
    )
    parser.add_argument("--version", action="version", version=f"olm_xp {olm_xp.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="versions, and which backends and devices are usable here")
    cmp = commands.add_parser(
        "compare",
        help="run every scheme on every backend, device and dtype against the float64 reference",
        description=f"Exit status: 0 if every row is within {TOLERANCE_EPS:g} eps, 1 if any "
        "row fails, 2 for a usage error.",
    )
    cmp.add_argument("--backends", metavar="IDS", help="comma-separated profile ids (default: all)")
    cmp.add_argument("--dtypes", metavar="NAMES", help="comma-separated dtypes (default: all)")
    cmp.add_argument("--json", metavar="FILE", help="also write every row as JSON to FILE")
    commands.add_parser("support-table", help="print the README's Markdown backend support table")
    return parser


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _compare_command(args: argparse.Namespace) -> int:
    profiles = load_profiles()
    selected = list(profiles.values())
    if args.backends is not None:
        names = _split(args.backends)
        unknown = [n for n in names if n not in profiles]
        if unknown or not names:
            print(
                f"olm-xp compare: unknown backend(s) {', '.join(map(repr, unknown)) or '(none)'}; "
                f"valid profile ids: {', '.join(profiles)}",
                file=sys.stderr,
            )
            return 2
        selected = [profiles[n] for n in dict.fromkeys(names)]
    dtype_filter = None
    if args.dtypes is not None:
        known = {d for p in profiles.values() for d in (*p.dtypes, *p.low_precision_dtypes)}
        dtype_filter = set(_split(args.dtypes))
        if not dtype_filter or not dtype_filter <= known:
            bad = ", ".join(sorted(dtype_filter - known)) or "(none)"
            print(
                f"olm-xp compare: unknown dtype(s) {bad}; valid: {', '.join(sorted(known))}",
                file=sys.stderr,
            )
            return 2
    json_file = None
    if args.json is not None:
        try:
            json_file = open(args.json, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as err:
            print(
                f"olm-xp compare: cannot write --json {args.json}: {err.strerror or err}",
                file=sys.stderr,
            )
            return 2
    try:
        rows, _ = compare(selected, dtype_filter=dtype_filter)
        if json_file is not None:
            json.dump([asdict(r) for r in rows], json_file, indent=2)
            json_file.write("\n")
    finally:
        if json_file is not None:
            json_file.close()
    return 0 if all(r.passed for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    """Run ``olm-xp``; return the exit status (0 ok, 1 a comparison failed, 2 usage error)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command == "info":
        return _info(sys.stdout)
    if args.command == "support-table":
        print(support_table(load_profiles().values()))
        return 0
    return _compare_command(args)
