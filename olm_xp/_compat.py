"""The one module that talks to array-api-compat and sniffs backends.

Every other module gets its namespace (``xp``), device and dtype policy from here. Nothing in
this module imports a framework: a backend is recognised by looking in ``sys.modules``, so a
framework is only ever touched when the caller already handed us one of its arrays.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar

import array_api_compat
import numpy as np

from olm_xp._typing import Array, ArrayNamespace, Device, DType

__all__ = [
    "array_namespace",
    "can_write_in_chunks",
    "compute_dtype",
    "default_float_dtype",
    "device_key",
    "device_of",
    "dtype_name",
    "graph_constant",
    "has_float64",
    "index_dtype",
    "is_concrete",
    "is_floating",
    "is_integer",
    "is_torch_compiling",
    "jax_lookup_or_compute",
    "max_value",
    "min_value",
    "namespace_name",
    "namespace_of_device",
    "place",
    "resolve_namespace",
    "take_rows",
    "to_numpy",
    "torch_out_kernels_ok",
    "traced_on_jax",
]

F = TypeVar("F", bound=Callable[..., Any])

# Plain modules users hand us, mapped to the compat wrapper that makes them standard.
_WRAPPED = {
    "numpy": "array_api_compat.numpy",
    "torch": "array_api_compat.torch",
    "cupy": "array_api_compat.cupy",
    "dask.array": "array_api_compat.dask.array",
}


def _module_name(xp: ArrayNamespace) -> str:
    return getattr(xp, "__name__", type(xp).__name__)


def namespace_name(xp: ArrayNamespace) -> str:
    """Short, stable backend name: ``numpy``, ``torch``, ``jax``, ``cupy``, ``dask``,
    ``array_api_strict`` (or the module name for anything else)."""
    name = _module_name(xp)
    for short in ("numpy", "torch", "jax", "cupy", "dask", "array_api_strict"):
        if name == short or name.startswith((short + ".", "array_api_compat." + short)):
            return short
    return name


def resolve_namespace(xp: Any) -> ArrayNamespace:
    """Normalise a user-supplied namespace to a standard-conforming one.

    Accepts the plain module (``numpy``, ``torch``, ``jax.numpy``, ``cupy``, ``dask.array``,
    ``array_api_strict``) or its array-api-compat wrapper; ``None`` means NumPy.
    """
    if xp is None:
        xp = np
    if not isinstance(xp, types.ModuleType):
        raise TypeError(
            f"xp must be an array namespace module such as numpy, torch or jax.numpy; "
            f"got {type(xp).__name__} {xp!r}"
        )
    name = _module_name(xp)
    if name == "jax":  # `import jax; xp=jax` is a common slip: the namespace is jax.numpy
        return sys.modules["jax.numpy"]
    # Import statements for the hot backends: Dynamo traces those (not __import__).
    if name == "torch":
        import array_api_compat.torch as compat_torch

        return compat_torch
    if name == "numpy":
        import array_api_compat.numpy as compat_numpy

        return compat_numpy
    wrapped = _WRAPPED.get(name)
    if wrapped is not None:
        __import__(wrapped)
        return sys.modules[wrapped]
    if not hasattr(xp, "asarray") or not hasattr(xp, "float32"):
        raise TypeError(f"xp must be an array API namespace; {name!r} has no asarray/float32")
    return xp


def _array_kind(x: Any) -> str | None:
    """``"numpy"``, ``"torch"`` or ``"jax"`` for those arrays (the hot, compile-sensitive
    backends), else None. Plain ``isinstance`` checks on classes already in ``sys.modules``:
    no ``lru_cache`` for ``torch.compile`` to warn about, and cheaper on decode-sized calls."""
    if isinstance(x, np.ndarray):
        return "numpy"
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    if tensor is not None and isinstance(x, tensor):
        return "torch"
    jax_array = getattr(sys.modules.get("jax"), "Array", None)
    if jax_array is not None and isinstance(x, jax_array):
        return "jax"
    return None


def array_namespace(*arrays: Any) -> ArrayNamespace:
    """The standard namespace of ``arrays`` (``None`` and Python scalars are ignored).

    Raises a TypeError naming the types when the arrays come from different libraries or
    when an argument is not an array at all.
    """
    present = [a for a in arrays if a is not None]
    kinds = {_array_kind(a) for a in present}
    if len(kinds) == 1 and None not in kinds:
        (kind,) = kinds
        # Import statements (not __import__/importlib): Dynamo can trace those.
        if kind == "torch":
            import array_api_compat.torch as compat_torch

            return compat_torch
        if kind == "numpy":
            import array_api_compat.numpy as compat_numpy

            return compat_numpy
        return sys.modules["jax.numpy"]
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as err:
        kinds_text = ", ".join(
            sorted({f"{type(a).__module__}.{type(a).__name__}" for a in present})
        )
        raise TypeError(
            f"expected arrays from one array library; got {kinds_text} ({err})"
        ) from None


def device_of(x: Array) -> Device:
    """The device of ``x``; ``None`` where JAX places the arrays made for ``x``: a tracer
    inside ``jax.jit``, an uncommitted array, an array sharded across several devices."""
    kind = _array_kind(x)
    if kind == "torch":
        return x.device
    if kind == "numpy":
        return "cpu"
    device = array_api_compat.device(x)
    # A sharded array's `.device` is its Sharding, whose spec fits x's rank only (a table made
    # with it would be sharded wrongly); uncommitted tables follow x wherever it is.
    jax_placed = kind == "jax" and device is not None
    if jax_placed and not (isinstance(device, sys.modules["jax"].Device) and x.committed):
        return None
    return device


def device_key(device: Device) -> str:
    """A hashable, Dynamo-friendly cache key for a device."""
    return str(device)


def dtype_name(dtype: DType) -> str:
    """``"float32"`` for every backend's float32 dtype object (and likewise for the others)."""
    name = getattr(dtype, "name", None)  # NumPy, JAX and CuPy dtypes
    if isinstance(name, str):
        return name
    text = str(dtype).removeprefix("<class '").removeprefix("dtype('").rstrip("')>")
    return text.rsplit(".", 1)[-1]  # torch.float32, array_api_strict.float32


def is_floating(xp: ArrayNamespace, dtype: DType) -> bool:
    return bool(xp.isdtype(dtype, "real floating"))


def is_integer(xp: ArrayNamespace, dtype: DType) -> bool:
    return bool(xp.isdtype(dtype, "integral"))


def _info(xp: ArrayNamespace) -> Any:
    return xp.__array_namespace_info__()


def has_float64(xp: ArrayNamespace, device: Device) -> bool:
    """Whether ``xp`` can hold float64 on ``device`` (False for JAX without x64,
    array-api-strict's ``no_float64``/``no_x64`` devices, torch MPS)."""
    if namespace_name(xp) == "jax":
        import jax  # the caller already uses JAX

        enabled = jax.config.read("jax_enable_x64")  # type: ignore[no-untyped-call, unused-ignore]
        return bool(enabled)
    try:
        dtypes = _info(xp).dtypes(device=device, kind="real floating")
    except (TypeError, ValueError):  # devices some backends' info does not know (torch meta)
        dtypes = _info(xp).dtypes(kind="real floating")
    return "float64" in dtypes


def default_float_dtype(xp: ArrayNamespace, device: Device = None) -> DType:
    """The namespace's default real floating dtype on ``device``."""
    try:
        return _info(xp).default_dtypes(device=device)["real floating"]
    except (TypeError, ValueError):
        return _info(xp).default_dtypes()["real floating"]


def index_dtype(xp: ArrayNamespace, device: Device = None) -> DType:
    """The namespace's default indexing dtype on ``device`` (int32 for JAX without x64)."""
    try:
        return _info(xp).default_dtypes(device=device)["indexing"]
    except (TypeError, ValueError):
        return _info(xp).default_dtypes()["indexing"]


def compute_dtype(xp: ArrayNamespace, dtype: DType) -> DType:
    """The dtype arithmetic on ``dtype`` inputs happens in: at least float32.

    bfloat16/float16 inputs are computed in float32; float32 and float64 in themselves.
    """
    if dtype == xp.float32 or dtype == getattr(xp, "float64", None):
        return dtype
    return xp.float32


def is_torch_compiling() -> bool:
    """True while ``torch.compile`` (Dynamo) traces the current call."""
    compiler = getattr(sys.modules.get("torch"), "compiler", None)
    return compiler is not None and bool(compiler.is_compiling())


def graph_constant(fn: F) -> F:
    """Mark ``fn`` as ``torch.compiler.assume_constant_result`` does, without importing torch:
    called while Dynamo traces (its arguments must be constants), its result is a constant of
    the graph. For the classes' cached tables under ``torch.compile``."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


def is_jax_tracer(x: Any) -> bool:
    """Whether ``x`` is a JAX tracer (inside ``jax.jit``, ``grad``, ``vmap``, ...)."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.core.Tracer)


def jax_lookup_or_compute(
    xp: ArrayNamespace,
    positions: Array,
    rows: int,
    lookup: Callable[[Array], Any],
    compute: Callable[[Array], Any],
) -> Any:
    """Under ``jax.jit``, for traced ``positions``: ``lookup(positions)`` (rows of a cached
    table of ``rows`` rows, as native code reads them) when every position is below ``rows``,
    else ``compute(positions)`` (exact rows in-graph). One ``lax.cond``: only one branch runs,
    and any position stays exact; positions sharded across devices cost one scalar
    all-reduce for their maximum."""
    cond = sys.modules["jax"].lax.cond
    return cond(
        xp.max(positions) < rows, lambda p: lookup(xp.clip(p, 0, rows - 1)), compute, positions
    )


def is_concrete(x: Array) -> bool:
    """Whether reading ``x``'s values is possible and cheap right now.

    False for JAX tracers and multi-host JAX arrays, arrays seen while ``torch.compile``
    traces, torch ``meta`` and fake tensors, and Dask arrays (reading them would compute the
    graph).
    """
    kind = _array_kind(x)
    if kind == "numpy":
        return True
    if kind == "jax":  # a multi-host array's values are not all on this process
        if is_jax_tracer(x):
            return False
        jax = sys.modules["jax"]
        return jax.process_count() == 1 or bool(x.is_fully_addressable)
    if kind == "torch":
        torch = sys.modules["torch"]
        if is_torch_compiling() or x.device.type == "meta":
            return False
        return not isinstance(x, torch._subclasses.fake_tensor.FakeTensor)
    return not array_api_compat.is_dask_array(x)


def max_value(x: Array) -> int:
    """The largest entry of a concrete integer array, read on the host.

    Read through :func:`to_numpy` rather than ``xp.max``: a concrete JAX array closed over
    inside ``jax.jit`` would otherwise be reduced by a traced op.
    """
    return int(to_numpy(x).max())


def min_value(x: Array) -> int:
    """The smallest entry of a concrete integer array, read on the host."""
    return int(to_numpy(x).min())


def to_numpy(x: Any) -> np.ndarray[Any, Any]:
    """A host NumPy copy of an array from any backend and device (detached from autograd)."""
    kind = _array_kind(x)
    if kind == "numpy":
        return x  # type: ignore[no-any-return]
    if kind == "torch":
        torch = sys.modules["torch"]
        host = x.detach().to("cpu")
        if host.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            host = host.to(torch.float32)
        return host.numpy()  # type: ignore[no-any-return]
    if array_api_compat.is_cupy_array(x):
        return x.get()  # type: ignore[no-any-return]
    if array_api_compat.is_dask_array(x):
        return np.asarray(x.compute())
    try:
        return np.asarray(x)
    except (TypeError, RuntimeError, ValueError):
        return np.from_dlpack(x)


def place(x: Any, xp: ArrayNamespace, device: Device, dtype: DType) -> Array:
    """``x`` (an array of any backend and device) as an array of ``xp`` on ``device`` in ``dtype``.

    Within one namespace the data moves with ``to_device``/``astype``; across namespaces it goes
    through a host NumPy copy (exact: every backend's float dtypes fit in float64).
    """
    try:
        same = namespace_name(array_namespace(x)) == namespace_name(xp)
    except TypeError:
        same = False
    if same:
        moved = x if device is None else array_api_compat.to_device(x, device)
        return xp.astype(moved, dtype, copy=False)
    return xp.asarray(to_numpy(x), dtype=dtype, device=device)


def namespace_of_device(device: Device) -> ArrayNamespace | None:
    """The namespace a framework device object belongs to (``torch.device`` -> torch,
    a JAX ``Device`` -> jax.numpy), or None for strings, None and other devices."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(device, torch.device):
        import array_api_compat.torch as compat_torch

        return compat_torch
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(device, jax.Device):
        return sys.modules["jax.numpy"]
    return None


def take_rows(xp: ArrayNamespace, table: Array, indices: Array) -> Array:
    """``table[indices]``: rows of a 2-D ``table`` for integer ``indices`` of any shape ``I``,
    shape ``(*I, table.shape[1])``.

    A flat ``take`` elsewhere (the fastest on NumPy/torch). For JAX, N-D indices are not
    flattened: flattening ``(batch, seq)`` indices sharded along ``seq`` makes XLA all-gather
    them and gather every row on every device; ``take_along_axis`` keeps their sharding.
    """
    if namespace_name(xp) != "jax" or indices.ndim == 0:
        shape = (*indices.shape, table.shape[-1])
        return xp.reshape(xp.take(table, xp.reshape(indices, (-1,)), axis=0), shape)
    if indices.ndim == 1:
        return xp.take(table, indices, axis=0)
    lead = (1,) * (indices.ndim - 1)
    rows = xp.reshape(table, (*lead, *table.shape))
    return xp.take_along_axis(rows, indices[..., None], axis=indices.ndim - 1)


def can_write_in_chunks(x: Array) -> bool:
    """Whether a new array like ``x`` can be filled chunk by chunk with ``__setitem__`` here,
    and whether that pays (performance.md: on a CPU, chunk temporaries stay in cache and
    malloc recycles them instead of page-faulting fresh full-size temporaries).

    True for NumPy, torch CPU tensors outside ``torch.compile`` and autograd recording, and
    other eager, writeable CPU arrays (array-api-strict). False for JAX (immutable), lazy
    arrays (Dask), GPU arrays (fewer, larger kernels win there) and torch ``meta`` tensors.
    """
    kind = _array_kind(x)
    if kind == "numpy":
        return True
    if kind == "jax":
        return False
    if kind == "torch":
        return bool(x.device.type == "cpu") and torch_out_kernels_ok(x)
    # array-api-strict is NumPy underneath; CuPy (GPU), Dask (lazy) and the unknown: no.
    return type(x).__module__.startswith("array_api_strict")


def torch_out_kernels_ok(*tensors: Any) -> bool:
    """Whether torch ``out=`` and in-place kernels may compute from ``tensors`` (non-tensors
    are ignored): not under ``torch.compile``, no tensor wrapped by a functorch transform
    (``vmap``/``grad``), none that needs a gradient while autograd records (``out=`` kernels
    do not support autograd)."""
    if is_torch_compiling():
        return False
    torch = sys.modules["torch"]
    recording = torch.is_grad_enabled()
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if torch._C._functorch.is_functorch_wrapped_tensor(t) or (recording and t.requires_grad):
            return False
    return True


_JAX_JITTED: dict[tuple[Any, tuple[str, ...]], Any] = {}


def traced_on_jax(fn: Any, xp: ArrayNamespace, *arrays: Any, **static: Any) -> Any:
    """``fn(*arrays, xp=xp, **static)``; on JAX outside a trace, through one ``jax.jit`` of
    ``fn`` with the keywords static (hashable: ints, bools, dtypes, devices, tuples).

    Eager JAX compiles every primitive on its own for each new shape -- a dozen small compiles
    for one bias -- where one jit of the whole function compiles once per configuration
    (performance.md: "the library should jax.jit its JAX path"). Arrays may be None. Inside
    ``jax.jit`` (any array a tracer) and on every other backend ``fn`` is called directly.
    """
    if namespace_name(xp) != "jax":
        return fn(*arrays, xp=xp, **static)
    if any(is_jax_tracer(a) for a in arrays):
        return fn(*arrays, xp=xp, **static)
    jax = sys.modules["jax"]
    key = (fn, tuple(sorted(static)))
    jitted = _JAX_JITTED.get(key)
    if jitted is None:
        jitted = jax.jit(fn, static_argnames=("xp", *key[1]))
        _JAX_JITTED[key] = jitted
    return jitted(*arrays, xp=xp, **static)
