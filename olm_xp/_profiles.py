"""Read the backend profiles (``backends/*.toml``): the one list of backends.

In a source checkout the files are read from ``backends/``; an installed wheel carries the same
files as package data (``olm_xp/_profiles/``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["BackendProfile", "load_profiles"]

_SOURCE_DIR = Path(__file__).resolve().parent.parent / "backends"


@dataclass(frozen=True)
class BackendProfile:
    """One backend profile: what to import and install, where and in which dtypes to test."""

    id: str
    title: str
    module: str
    kind: str
    requirements: tuple[str, ...]
    env: dict[str, str]
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    low_precision_dtypes: tuple[str, ...] = ()
    shape_only_devices: tuple[str, ...] = ()
    jit: str | None = None
    xfail: tuple[dict[str, str], ...] = field(default=())

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"


def _from_toml(profile_id: str, data: dict[str, Any]) -> BackendProfile:
    return BackendProfile(
        id=profile_id,
        title=data["title"],
        module=data["module"],
        kind=data["kind"],
        requirements=tuple(data["requirements"]),
        env={k: str(v) for k, v in data.get("env", {}).items()},
        devices=tuple(data["devices"]),
        dtypes=tuple(data["dtypes"]),
        low_precision_dtypes=tuple(data.get("low_precision_dtypes", ())),
        shape_only_devices=tuple(data.get("shape_only_devices", ())),
        jit=data.get("jit"),
        xfail=tuple(data.get("xfail", ())),
    )


def load_profiles() -> dict[str, BackendProfile]:
    """All profiles by id, CPU profiles first, each group in file-name order."""
    if _SOURCE_DIR.is_dir():
        files = {p.stem: p.read_text() for p in _SOURCE_DIR.glob("*.toml")}
    else:
        root = resources.files("olm_xp") / "_profiles"
        files = {
            p.name.removesuffix(".toml"): p.read_text()
            for p in root.iterdir()
            if p.name.endswith(".toml")
        }
    profiles = [_from_toml(pid, tomllib.loads(text)) for pid, text in files.items()]
    order = ["numpy", "array_api_strict", "torch-cpu", "jax-cpu", "jax-cpu-x32"]
    profiles.sort(key=lambda p: (p.is_gpu, order.index(p.id) if p.id in order else 99, p.id))
    return {p.id: p for p in profiles}
