"""Backend fixtures built from ``backends/*.toml`` (the only list of backends).

``OLM_XP_BACKENDS`` picks the profiles: a comma list of profile ids, ``all``, or unset/``cpu``
for every CPU profile whose module imports here. Each nox session sets it to one profile; a
plain ``pytest`` runs every importable CPU profile.

A test asks for one of these fixtures and is parametrised accordingly:

* ``case``: profile x device x dtype (including bfloat16/float16) x mode. For JAX profiles
  every public function runs under ``jax.jit`` on the default device and eagerly on the
  second one (``mode`` ``jit``/``eager``).
* ``float_case``: the same without the low-precision dtypes.
* ``lowp_case``: only the low-precision dtypes.
* ``placement``: profile x device (dtype float32), for tests about errors and state.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Two host CPU devices for JAX, so that tests can use a non-default device; must be set
# before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import numpy as np
import pytest

from olm_xp._compat import namespace_name, resolve_namespace, to_numpy
from olm_xp._profiles import BackendProfile, load_profiles
from olm_xp.reference import float64_allowance_eps

PROFILES = load_profiles()


def _selected_profiles() -> list[BackendProfile]:
    wanted = os.environ.get("OLM_XP_BACKENDS", "cpu").strip()
    if wanted in ("", "cpu"):
        return [p for p in PROFILES.values() if not p.is_gpu]
    if wanted == "all":
        return list(PROFILES.values())
    ids = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = sorted(set(ids) - set(PROFILES))
    if unknown:
        raise pytest.UsageError(
            f"OLM_XP_BACKENDS names unknown profiles {unknown}; valid: {sorted(PROFILES)}"
        )
    return [PROFILES[i] for i in ids]


SELECTED = _selected_profiles()


def _gpu_available(profile: BackendProfile) -> bool:
    try:
        if profile.module == "torch":
            import torch

            return bool(torch.cuda.is_available())
        if profile.module == "jax.numpy":
            import jax

            return bool(jax.devices("cuda"))
        if profile.module == "cupy":
            import cupy

            return bool(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return False
    return False


@functools.cache
def _import_module(profile_id: str) -> Any:
    profile = PROFILES[profile_id]
    try:
        module = importlib.import_module(profile.module)
    except ImportError as err:
        pytest.skip(f"{profile.id}: {profile.module} is not installed ({err})")
    if profile.is_gpu and not _gpu_available(profile):
        pytest.skip(f"{profile.id}: no GPU visible")
    return module


def _activate(profile: BackendProfile) -> Any:
    """Import the profile's module and apply its run-time settings (JAX x64)."""
    module = _import_module(profile.id)
    if profile.module == "jax.numpy":
        import jax

        jax.config.update("jax_enable_x64", profile.env.get("JAX_ENABLE_X64", "0") == "1")
    return resolve_namespace(module)


def _device(xp: Any, profile: BackendProfile, name: str) -> Any:
    kind = namespace_name(xp)
    if kind == "array_api_strict":
        return xp.Device(name)
    if kind == "torch":
        import torch

        return torch.device(name)
    if kind == "jax":
        import jax

        platform, _, index = name.partition(":")
        return jax.devices(platform)[int(index or 0)]
    if kind == "cupy":
        import cupy

        return cupy.cuda.Device(int(name.partition(":")[2] or 0))
    return name


@dataclass
class Case:
    """One backend x device x dtype x mode, with helpers to move data and compare."""

    profile: BackendProfile
    device_name: str
    dtype_name: str
    mode: str  # "eager" or "jit"

    @property
    def id(self) -> str:
        suffix = "" if self.mode == "eager" else "-jit"
        return f"{self.profile.id}-{self.device_name}-{self.dtype_name}{suffix}"

    # The namespace, device and dtype are resolved lazily so that collection imports nothing.
    @functools.cached_property
    def xp(self) -> Any:
        return _activate(self.profile)

    @functools.cached_property
    def device(self) -> Any:
        return self.device_named(self.device_name)

    def device_named(self, name: str) -> Any:
        """The device object for one of the profile's device names."""
        return _device(self.xp, self.profile, name)

    @functools.cached_property
    def dtype(self) -> Any:
        return getattr(self.xp, self.dtype_name)

    @property
    def shape_only(self) -> bool:
        return self.device_name in self.profile.shape_only_devices

    @property
    def is_low_precision(self) -> bool:
        return self.dtype_name in self.profile.low_precision_dtypes

    @property
    def eps(self) -> float:
        return {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-7}.get(
            self.dtype_name, 2.0**-10
        )

    @property
    def index_dtype(self) -> Any:
        return self.xp.int64 if self.has_float64 else self.xp.int32

    @property
    def has_float64(self) -> bool:
        from olm_xp._compat import has_float64

        return has_float64(self.xp, self.device)

    def asarray(self, values: Any, dtype: Any = None) -> Any:
        """Host values as an array of this case (``dtype`` default: the case's dtype)."""
        dtype = self.dtype if dtype is None else dtype
        if self.shape_only:  # meta tensors hold no data
            return self.xp.empty(np.shape(values), dtype=dtype, device=self.device)
        out = self.xp.asarray(np.asarray(values), dtype=dtype, device=self.device)
        if namespace_name(self.xp) == "dask" and out.ndim:  # chunked along batch and sequence
            halves = [max(1, -(-n // 2)) for n in out.shape]
            out = out.rechunk((1, *halves[1:2], *out.shape[2:]) if out.ndim > 1 else halves)
        return out

    def positions(self, values: Any) -> Any:
        return self.asarray(np.asarray(values), dtype=self.index_dtype)

    def rounded(self, values: Any) -> np.ndarray:
        """``values`` rounded to this case's dtype, back in float64 (for references)."""
        if self.shape_only:
            return np.asarray(values, dtype=np.float64)
        return to_numpy(self.asarray(values)).astype(np.float64)

    def call(self, fn: Callable[..., Any], *arrays: Any, **static: Any) -> Any:
        """``fn(*arrays, **static)``, under ``jax.jit`` (arrays traced) in jit mode."""
        if self.mode == "jit":
            import jax

            return jax.jit(functools.partial(fn, **static))(*arrays)
        return fn(*arrays, **static)

    def check_placement(self, out: Any, shape: tuple[int, ...], dtype: Any = None) -> None:
        """``out`` is an array of this case's namespace, on its device, with shape and dtype."""
        from olm_xp._compat import array_namespace, device_of

        assert namespace_name(array_namespace(out)) == namespace_name(self.xp)
        assert tuple(out.shape) == shape
        assert out.dtype == (self.dtype if dtype is None else dtype)
        assert str(device_of(out)) == str(self.device)

    def error_eps(self, out: Any, expected: np.ndarray) -> float:
        """max |out - expected| / max(|expected|, 1), in units of this dtype's eps."""
        got = to_numpy(out).astype(np.float64)
        scale = np.maximum(np.abs(expected), 1.0)
        return float(np.max(np.abs(got - expected) / scale, initial=0.0)) / self.eps

    def assert_close(
        self, out: Any, expected: np.ndarray, *, tol_eps: float = 1.0, max_angle: float = 0.0
    ) -> None:
        """Placement plus values within ``tol_eps`` eps of the float64 reference.

        For float64 results the tolerance grows by ``float64_allowance_eps(max_angle)``: the
        float64 reference is no more exact than a float64 result at large angles.
        """
        self.check_placement(out, tuple(expected.shape))
        if self.shape_only:
            return
        if self.dtype_name == "float64":
            tol_eps += float64_allowance_eps(max_angle)
        error = self.error_eps(out, expected)
        assert error <= tol_eps, f"error {error:.3g} eps > {tol_eps} eps ({self.id})"


def _cases(kind: str) -> list[Case]:
    cases = []
    for profile in SELECTED:
        dtypes = {
            "case": profile.dtypes + profile.low_precision_dtypes,
            "float_case": profile.dtypes,
            "lowp_case": profile.low_precision_dtypes,
            "placement": ("float32",),
        }[kind]
        for index, device in enumerate(profile.devices):
            modes: tuple[str, ...] = ("eager",)
            if profile.jit == "jax" and kind != "placement":
                # jit on the default device, eager on the others (a forgotten device= shows
                # there); a profile with one device runs both.
                both = len(profile.devices) == 1
                modes = ("eager", "jit") if both else ("jit",) if index == 0 else ("eager",)
            for dtype in dtypes:
                cases.extend(Case(profile, device, dtype, mode) for mode in modes)
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for kind in ("case", "float_case", "lowp_case", "placement"):
        if kind in metafunc.fixturenames:
            cases = _cases(kind)
            metafunc.parametrize(kind, cases, ids=[c.id for c in cases])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Apply each profile's known xfails (strict, with their reason)."""
    for item in items:
        for profile in SELECTED:
            for known in profile.xfail:
                if profile.id in item.nodeid and known["test"] in item.nodeid:
                    item.add_marker(pytest.mark.xfail(reason=known["reason"], strict=True))


def pytest_report_header(config: pytest.Config) -> str:
    return "olm_xp profiles: " + ", ".join(p.id for p in SELECTED)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
