"""nox sessions: one conformance run per backend profile, plus lint, typecheck, parity, bare.

The backend matrix comes from ``backends/*.toml`` (read here with ``tomllib``, importing no
framework). Plain ``nox`` runs every CPU profile and the checks; GPU profiles run with
``nox -s tests-torch-cuda`` (etc.) and skip cleanly where no GPU is visible.

Every session installs with pip (``venv_backend="virtualenv"``): the torch CPU wheel that the
project's machines carry is found only by pip with the exact pin from ``backends/torch-cpu.toml``.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PROFILES = {
    p.stem: tomllib.loads(p.read_text()) for p in sorted((ROOT / "backends").glob("*.toml"))
}

nox.options.default_venv_backend = "virtualenv"
nox.options.error_on_missing_interpreters = True


def _install_test_environment(session: nox.Session, *requirements: str) -> None:
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "test"), *requirements)


def _gpu_visible() -> bool:
    return shutil.which("nvidia-smi") is not None


def _make_tests_session(profile_id: str, profile: dict) -> None:
    is_gpu = profile["kind"] == "gpu"

    @nox.session(name=f"tests-{profile_id}", default=not is_gpu, tags=["tests", profile["kind"]])
    def tests(session: nox.Session) -> None:
        if is_gpu and not _gpu_visible():
            session.skip(f"{profile_id}: no GPU visible on this machine")
        _install_test_environment(session, *profile["requirements"])
        env = {**profile.get("env", {}), "OLM_XP_BACKENDS": profile_id}
        session.run("pytest", "-m", "not parity", *session.posargs, env=env)

    tests.__doc__ = f"Conformance suite on {profile['title']} ({profile_id})."


for _id, _profile in PROFILES.items():
    _make_tests_session(_id, _profile)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check (no framework installed)."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on olm_xp/ (no framework installed)."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "typecheck"))
    session.run("mypy")


@nox.session
def parity(session: nox.Session) -> None:
    """Compare against the real olm (``openlanguagemodel`` on PyPI)."""
    _install_test_environment(session, *PROFILES["torch-cpu"]["requirements"], "openlanguagemodel")
    session.run("pytest", "-m", "parity", "tests/parity", *session.posargs)


@nox.session
def bare(session: nox.Session) -> None:
    """The main job on a bare install (NumPy only): ``olm-xp compare`` must run and pass."""
    session.install(".")
    session.run("python", "-c", "import olm_xp, sys; assert 'torch' not in sys.modules")
    session.run("olm-xp", "compare")
