"""Run-time type aliases that name no framework (importing them stays free)."""

from types import ModuleType
from typing import Any, TypeAlias

Array: TypeAlias = Any
"""An array of any array-API library (NumPy, torch, JAX, CuPy, Dask, array-api-strict)."""
ArrayNamespace: TypeAlias = ModuleType
Device: TypeAlias = Any
DType: TypeAlias = Any

__all__ = ["Array", "ArrayNamespace", "DType", "Device"]
