"""``import olm_xp`` (and every module of it) imports no framework."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import olm_xp

FRAMEWORKS = ("torch", "jax", "cupy", "dask", "flax")


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def _framework_modules(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if m.split(".")[0] in FRAMEWORKS)


def test_import_olm_xp_imports_no_framework():
    assert _framework_modules(_modules_after("import olm_xp")) == []


def test_every_submodule_and_a_numpy_call_import_no_framework():
    names = [m.name for m in pkgutil.walk_packages(olm_xp.__path__, "olm_xp.")]
    names.remove("olm_xp.__main__")  # runs the command when imported
    # The framework adapters import their framework by design (tested below).
    names = [n for n in names if n not in ("olm_xp.layers.torch", "olm_xp.layers.flax")]
    code = "\n".join(f"import {name}" for name in names) + (
        "\nimport numpy as np"
        "\nfrom olm_xp.nn.embeddings.positional import SinusoidalPositionalEmbedding"
        "\nSinusoidalPositionalEmbedding(4)(np.zeros((1, 2, 4)))"
    )
    assert _framework_modules(_modules_after(code)) == []


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("olm_xp.layers.torch", "torch", "olm-xp[torch]"),
        ("olm_xp.layers.flax", "flax", "olm-xp[flax]"),
    ],
)
def test_layers_without_their_framework_name_the_extra(module, blocked, extra):
    """With the framework missing, importing its layers says which extra to install."""
    script = (
        f"import sys\nsys.modules[{blocked!r}] = None\n"
        f"try:\n    import {module}\nexcept ImportError as err:\n    print(err)\n"
        f"else:\n    print('imported')"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    assert f"pip install '{extra}'" in out, out


def test_public_api_is_complete():
    """Everything public in the topic modules is exported, and every export exists."""
    exported = set(olm_xp.__all__)
    for name in olm_xp.__all__:
        assert hasattr(olm_xp, name), name
    for module_name in ("olm_xp.absolute", "olm_xp.sinusoidal", "olm_xp.dropout"):
        module = importlib.import_module(module_name)
        assert set(module.__all__) <= exported, module_name
