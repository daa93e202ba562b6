"""The one module that talks to array-api-compat and sniffs backends.

Every other module gets its namespace (``xp``), device and dtype policy from here. Nothing in
this module imports a framework: a backend is recognised by looking in ``sys.modules``, so a
framework is only ever touched when the caller already handed us one of its arrays.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import array_api_compat
import numpy as np

from olm_xp._typing import Array, ArrayNamespace, Device, DType

__all__ = [
    "array_namespace",
    "compute_dtype",
    "default_float_dtype",
    "device_key",
    "device_of",
    "dtype_name",
    "has_float64",
    "index_dtype",
    "is_concrete",
    "is_floating",
    "is_integer",
    "is_torch_compiling",
    "namespace_name",
    "place",
    "resolve_namespace",
    "to_numpy",
]

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
    """The device of ``x`` (``None`` for a JAX tracer inside ``jax.jit``)."""
    kind = _array_kind(x)
    if kind == "torch":
        return x.device
    if kind == "numpy":
        return "cpu"
    return array_api_compat.device(x)


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


def is_concrete(x: Array) -> bool:
    """Whether reading ``x``'s values is possible and cheap right now.

    False for JAX tracers, arrays seen while ``torch.compile`` traces, torch ``meta`` and
    fake tensors, and Dask arrays (reading them would compute the graph).
    """
    kind = _array_kind(x)
    if kind == "numpy":
        return True
    if kind == "jax":
        return not isinstance(x, sys.modules["jax"].core.Tracer)
    if kind == "torch":
        torch = sys.modules["torch"]
        if is_torch_compiling() or x.device.type == "meta":
            return False
        return not isinstance(x, torch._subclasses.fake_tensor.FakeTensor)
    return not array_api_compat.is_dask_array(x)


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
