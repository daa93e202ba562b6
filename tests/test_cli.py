"""The ``olm-xp`` command: ``info``, ``compare`` and ``support-table``.

Comparisons run on NumPy (and array-api-strict) only, so the file stays fast; the full matrix is
``olm-xp compare`` itself.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import olm_xp
import olm_xp.reference
from olm_xp import cli
from olm_xp._profiles import BackendProfile, load_profiles
from olm_xp.nn.embeddings.positional import (
    AbsolutePositionalEmbedding,
    SinusoidalPositionalEmbedding,
)

PROFILES = load_profiles()
ROW_KEYS = {
    "backend",
    "device",
    "dtype",
    "scheme",
    "max_error_eps",
    "tolerance_eps",
    "passed",
    "seconds_per_call",
}
FRAMEWORKS = ("torch", "jax", "jaxlib", "cupy", "dask")
# NumPy in the dtypes it meets the promise in today (float64 sinusoidal does not: see below).
FAST = ["--backends", "numpy", "--dtypes", "float32,float16"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = json.loads(path.read_text())
    assert isinstance(rows, list)
    return rows


def pip_command(profile: BackendProfile) -> str:
    return "pip install " + " ".join(shlex.quote(r) for r in profile.requirements)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


# -- compare --------------------------------------------------------------------------------


def test_compare_numpy_writes_passing_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "rows.json"
    code, out, err = run(capsys, "compare", *FAST, "--json", str(path))
    assert (code, err) == (0, "")
    rows = read_rows(path)
    assert {(r["dtype"], r["scheme"]) for r in rows} == {
        (dtype, scheme) for dtype in ("float32", "float16") for scheme in cli.SCHEMES
    }
    assert len(rows) == 2 * len(cli.SCHEMES)
    for row in rows:
        assert set(row) >= ROW_KEYS
        assert (row["backend"], row["device"]) == ("numpy", "cpu")
        assert row["tolerance_eps"] == cli.TOLERANCE_EPS
        assert row["passed"] is True
        assert 0 <= row["max_error_eps"] <= row["tolerance_eps"]
        assert row["seconds_per_call"] > 0
    assert out.rstrip().splitlines()[-1] == f"compare: {len(rows)} passed, 0 failed"
    assert "sinusoidal-positions" in out


def test_compare_numpy_every_dtype_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "rows.json"
    code, _, _ = run(capsys, "compare", "--backends", "numpy", "--json", str(path))
    rows = read_rows(path)
    failed = [(r["dtype"], r["scheme"], r["max_error_eps"]) for r in rows if not r["passed"]]
    assert failed == []
    assert code == 0


def test_python_m_olm_xp_compare(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    args = ["compare", "--backends", "numpy,array_api_strict", "--dtypes", "float32"]
    result = subprocess.run(
        [sys.executable, "-m", "olm_xp", *args, "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_rows(path)
    assert {(r["backend"], r["device"]) for r in rows} >= {
        ("numpy", "cpu"),
        ("array_api_strict", "CPU_DEVICE"),
        ("array_api_strict", "device1"),
    }
    assert all(r["passed"] for r in rows)
    assert f"compare: {len(rows)} passed, 0 failed" in result.stdout


def test_importing_cli_and_comparing_numpy_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "import olm_xp.cli\n"
        f"frameworks = {FRAMEWORKS!r}\n"
        "def loaded(): return sorted(m for m in sys.modules if m.split('.')[0] in frameworks)\n"
        "assert not loaded(), loaded()\n"
        "rc = olm_xp.cli.main(['compare', '--backends', 'numpy', '--dtypes', 'float32'])\n"
        "assert not loaded(), loaded()\n"
        "raise SystemExit(rc)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stdout + result.stderr


BARE_INSTALL = """
import sys

class Uninstalled:  # as if only numpy and array-api-compat were installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "jax", "jaxlib", "cupy", "dask", "array_api_strict"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Uninstalled())
from olm_xp.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_bare_install_compares_numpy_alone_and_lists_the_rest() -> None:
    result = run_python(BARE_INSTALL, "compare", "--dtypes", "float32")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    others = [p for p in PROFILES.values() if p.id != "numpy"]
    last = result.stdout.rstrip().splitlines()[-1]
    assert last.startswith(f"compare: {len(cli.SCHEMES)} passed, 0 failed; skipped: ")
    for profile in others:
        assert profile.id in last
        assert f"{profile.id}: not installed" in result.stdout
        assert pip_command(profile) in result.stdout


def test_bare_install_info_reports_not_installed() -> None:
    result = run_python(BARE_INSTALL, "info")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for profile in PROFILES.values():
        if profile.id != "numpy":
            assert pip_command(profile) in result.stdout
    assert result.stdout.count("not installed") == len(PROFILES) - 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ImportError("No module named 'array_api_strict'"), "not installed"),
        (RuntimeError("broken build"), "import failed"),
    ],
)
def test_backend_failing_to_import_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    error: Exception,
    status: str,
) -> None:
    real_import = cli.import_backend

    def import_backend(profile: BackendProfile) -> Any:
        if profile.id == "array_api_strict":
            raise error
        return real_import(profile)

    monkeypatch.setattr(cli, "import_backend", import_backend)
    path = tmp_path / "rows.json"
    code, out, _ = run(
        capsys,
        "compare",
        "--backends",
        "numpy,array_api_strict",
        "--dtypes",
        "float32",
        "--json",
        str(path),
    )
    assert code == 0
    assert {r["backend"] for r in read_rows(path)} == {"numpy"}
    assert f"array_api_strict: {status}" in out
    assert str(error) in out
    assert pip_command(PROFILES["array_api_strict"]) in out
    assert out.rstrip().splitlines()[-1].endswith("; skipped: array_api_strict")


def _add_1e_3(function: Any) -> Any:
    def planted(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs) + 1e-3

    return planted


@pytest.mark.parametrize("plant", ["reference", "forward"])
def test_planted_wrong_result_fails(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    plant: str,
) -> None:
    if plant == "reference":
        wrong = _add_1e_3(olm_xp.reference.sinusoidal_reference)
        monkeypatch.setattr(olm_xp.reference, "sinusoidal_reference", wrong)
    else:
        wrong = _add_1e_3(SinusoidalPositionalEmbedding.forward)
        monkeypatch.setattr(SinusoidalPositionalEmbedding, "forward", wrong)
    path = tmp_path / "rows.json"
    args = ["--backends", "numpy", "--dtypes", "float32", "--json", str(path)]
    code, out, _ = run(capsys, "compare", *args)
    assert code == 1
    rows = read_rows(path)
    for row in rows:
        sinusoidal = row["scheme"].startswith("sinusoidal")
        assert row["passed"] is not sinusoidal
        if sinusoidal:  # 1e-3 is ~8000 float32 eps
            assert row["max_error_eps"] > 1000 * row["tolerance_eps"]
    assert "FAIL" in out
    assert out.rstrip().splitlines()[-1] == f"compare: {len(cli.SCHEMES) - 2} passed, 2 failed"


def test_scheme_that_raises_is_a_failed_row(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("planted failure")

    monkeypatch.setattr(AbsolutePositionalEmbedding, "forward", broken)
    path = tmp_path / "rows.json"
    args = ["--backends", "numpy", "--dtypes", "float32", "--json", str(path)]
    code, out, _ = run(capsys, "compare", *args)
    assert code == 1
    for row in read_rows(path):
        if row["scheme"].startswith("absolute"):
            assert row["passed"] is False
            assert row["max_error_eps"] is None
            assert row["error"] == "RuntimeError: planted failure"
        else:
            assert row["passed"] is True
    assert "ERROR" in out
    assert "numpy cpu float32 absolute: RuntimeError: planted failure" in out


def test_unknown_backend_exits_2_listing_valid_ids(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compare", "--backends", "numpy,nosuch")
    assert code == 2
    assert out == ""
    assert "nosuch" in err
    for profile_id in PROFILES:
        assert profile_id in err


def test_unknown_dtype_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compare", "--backends", "numpy", "--dtypes", "float8")
    assert (code, out) == (2, "")
    assert "float8" in err
    assert "float32" in err


@pytest.mark.parametrize("where", ["/nonexistent/dir/x.json", "missing-dir/x.json"])
def test_unwritable_json_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str
) -> None:
    path = where if where.startswith("/") else str(tmp_path / where)
    code, out, err = run(capsys, "compare", *FAST, "--json", path)
    assert (code, out) == (2, "")
    assert f"cannot write --json {path}" in err
    assert "Traceback" not in err


def test_jax_profiles_share_one_comparison(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    jax = pytest.importorskip("jax")
    path = tmp_path / "rows.json"
    args = ["--backends", "jax-cpu,jax-cpu-x32", "--dtypes", "float32,float64"]
    run(capsys, "compare", *args, "--json", str(path))
    rows = read_rows(path)
    keys = [(r["device"], r["dtype"], r["scheme"]) for r in rows]
    assert len(keys) == len(set(keys))  # one module, compared once per device
    x64 = bool(jax.config.read("jax_enable_x64"))
    assert ("float64" in {r["dtype"] for r in rows}) is x64
    assert {r["backend"] for r in rows} == {"jax-cpu" if x64 else "jax-cpu-x32"}
    assert all(r["passed"] for r in rows if r["dtype"] == "float32")


# -- info, support-table, usage -------------------------------------------------------------


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "info")
    assert (code, err) == (0, "")
    assert f"olm_xp {olm_xp.__version__}" in out
    assert "numpy" in out
    assert "array-api-compat" in out
    for profile_id in PROFILES:
        assert profile_id in out


def test_support_table_lists_every_profile(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "support-table")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == (
        "| profile | title | kind | devices tested | dtypes | low-precision dtypes | jit "
        "| install requirement |"
    )
    assert len(lines) == 2 + len(PROFILES)
    for line, profile in zip(lines[2:], PROFILES.values(), strict=True):
        assert line.startswith(f"| `{profile.id}` | {profile.title} | {profile.kind} |")
        for requirement in profile.requirements:
            assert f"`{requirement}`" in line


def test_no_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "usage: olm-xp" in err
