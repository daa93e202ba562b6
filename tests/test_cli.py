"""The ``olm-xp`` command: ``info``, ``compare``, ``plot`` and ``support-table``.

Comparisons run on NumPy (and array-api-strict) only, mostly filtered to float32 and a few
schemes, so the file stays fast; the full matrix is ``olm-xp compare`` itself (``nox -s bare``
on NumPy, ``nox -s compare`` on every CPU backend).
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import olm_xp
import olm_xp.reference
import olm_xp.rope_frequencies
from olm_xp import _compare, cli
from olm_xp._profiles import BackendProfile, load_profiles
from olm_xp.nn.embeddings.positional import (
    AbsolutePositionalEmbedding,
    SinusoidalPositionalEmbedding,
)

PROFILES = load_profiles()
SCHEMES = list(cli.SCHEMES)
ROW_KEYS = {
    "backend",
    "device",
    "dtype",
    "scheme",
    "max_error_eps",
    "tolerance_eps",
    "passed",
    "seconds_per_call",
    "error",
}
DOCUMENT_KEYS = {
    "schema_version",
    "command",
    "environment",
    "metric",
    "tolerance_eps",
    "passed",
    "summary",
    "rows",
    "pairwise",
    "skipped",
    "notes",
    "schemes",
}
FRAMEWORKS = ("torch", "jax", "jaxlib", "cupy", "dask")
NUMPY32 = ["--backends", "numpy", "--dtypes", "float32"]
FEW = ["--schemes", "sinusoidal*,absolute,rope-yarn-*,rope-decode-half"]
"""A handful of schemes: fast, and both layouts of one RoPE variant."""


_SESSION = os.environ.get("OLM_XP_BACKENDS", "cpu").strip()
SESSION_PROFILES = None if _SESSION in ("", "cpu", "all") else set(_SESSION.split(","))
"""The profiles of this nox ``tests-<profile>`` session (None: plain ``pytest``, all of them)."""
RUNS_IN = {"test_jax_profiles_share_one_comparison": {"jax-cpu", "jax-cpu-x32"}}
"""The command does not depend on the session's profile: each test runs in one session (the
``numpy`` one unless listed here) and in plain ``pytest``, not again in every session."""


@pytest.fixture(autouse=True)
def _once_per_nox_run(request: pytest.FixtureRequest) -> None:
    sessions = RUNS_IN.get(request.function.__name__, {"numpy"})
    if SESSION_PROFILES is not None and not sessions & SESSION_PROFILES:
        wanted = ", ".join(f"tests-{s}" for s in sorted(sessions))
        pytest.skip(f"the olm-xp command is tested once per nox run: in {wanted}")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_json(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    assert isinstance(document, dict)
    return document


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = read_json(path)["rows"]
    assert isinstance(rows, list)
    return rows


def last_line(text: str) -> str:
    return text.rstrip().splitlines()[-1]


def pip_command(profile: BackendProfile) -> str:
    return "pip install " + " ".join(shlex.quote(r) for r in profile.requirements)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


# -- what compare covers --------------------------------------------------------------------


def test_every_rope_class_and_variant_in_both_layouts() -> None:
    families = {
        "rope": "RotaryPositionalEmbedding",
        "rope-partial": "PartialRotaryPositionalEmbedding",
        "rope-llama3": "Llama3RotaryPositionalEmbedding",
        "rope-longrope": "rope_type='longrope'",
    }
    for scaling in ("linear", "ntk", "dynamic", "yarn", "xpos"):
        families[f"rope-{scaling}"] = "ScaledRotaryPositionalEmbedding"
        families[f"rope-partial-{scaling}"] = "PartialScaledRotaryPositionalEmbedding"
    for name, text in families.items():
        for layout in ("interleaved", "half"):
            scheme = cli.SCHEMES[f"{name}-{layout}"]
            assert text in scheme.summary
            assert ("interleaved" if layout == "interleaved" else "half-split") in scheme.summary
    for other in ("sinusoidal", "absolute", "alibi", "t5-bias"):
        assert other in cli.SCHEMES
        assert f"{other}-" in " ".join(cli.SCHEMES)  # and a second form of each (positions)
    # every HF rope_type shows up in the reference of some scheme
    summaries = " ".join(s.summary for s in cli.SCHEMES.values()).lower()
    for rope_type in olm_xp.ROPE_TYPES:
        spelled = {"default": "rotarypositionalembedding,", "dynamic": "dynamic_ntk"}
        assert spelled.get(rope_type, rope_type) in summaries


# -- compare --------------------------------------------------------------------------------


def test_compare_numpy_float32_json_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "rows.json"
    code, out, err = run(capsys, "compare", *NUMPY32, "--json", str(path))
    assert (code, err) == (0, "")
    document = read_json(path)
    assert set(document) == DOCUMENT_KEYS
    assert document["schema_version"] == 1
    assert document["command"] == ["olm-xp", "compare", *NUMPY32, "--json", str(path)]
    assert document["environment"]["olm_xp"] == olm_xp.__version__
    assert document["tolerance_eps"] == cli.TOLERANCE_EPS
    assert document["passed"] is True
    rows = document["rows"]
    assert [r["scheme"] for r in rows] == SCHEMES
    assert document["summary"]["rows"] == document["summary"]["passed"] == len(SCHEMES)
    assert document["summary"]["failed"] == 0
    assert set(document["schemes"]) == set(SCHEMES)
    for row in rows:
        assert set(row) == ROW_KEYS
        assert (row["backend"], row["device"], row["dtype"]) == ("numpy", "cpu", "float32")
        assert row["tolerance_eps"] == cli.TOLERANCE_EPS
        assert row["passed"] is True
        assert row["error"] is None
        assert 0 <= row["max_error_eps"] <= row["tolerance_eps"]
        assert row["seconds_per_call"] > 0
    for pair in document["pairwise"]:  # one backend: nothing to compare with
        assert set(pair) == {"scheme", "dtype", "results", "max_difference_eps", "between"}
        assert (pair["results"], pair["max_difference_eps"], pair["between"]) == (1, None, [])
    assert last_line(out) == f"compare: {len(rows)} passed, 0 failed"
    assert "rope-partial-xpos-half" in out
    assert "max err/eps" in out


def test_compare_numpy_every_dtype_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "rows.json"
    code, _, _ = run(capsys, "compare", "--backends", "numpy", "--json", str(path))
    rows = read_rows(path)
    assert {r["dtype"] for r in rows} == {"float32", "float64", "float16"}
    assert len(rows) == 3 * len(SCHEMES)
    failed = [(r["dtype"], r["scheme"], r["max_error_eps"]) for r in rows if not r["passed"]]
    assert failed == []
    assert code == 0


def test_python_m_olm_xp_compare_and_pairwise_differences(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    args = ["compare", "--backends", "numpy,array_api_strict", "--dtypes", "float32", *FEW]
    result = subprocess.run(
        [sys.executable, "-m", "olm_xp", *args, "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document = read_json(path)
    rows = document["rows"]
    assert {(r["backend"], r["device"]) for r in rows} == {
        ("numpy", "cpu"),
        ("array_api_strict", "CPU_DEVICE"),
        ("array_api_strict", "device1"),
    }
    assert all(r["passed"] for r in rows)
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    assert [(p["scheme"], p["dtype"], p["results"]) for p in document["pairwise"]] == [
        (s, "float32", 3) for s in schemes
    ]
    for pair in document["pairwise"]:  # bounded by twice the tolerance, by the triangle rule
        assert 0 <= pair["max_difference_eps"] <= 2 * cli.TOLERANCE_EPS
    assert "largest difference between any two backends" in result.stdout
    assert f"compare: {len(rows)} passed, 0 failed" in result.stdout


def test_pairwise_difference_names_the_backends_that_differ(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    real = SinusoidalPositionalEmbedding.forward

    def off_on_device1(self: Any, x: Any, *args: Any) -> Any:
        out = real(self, x, *args)
        return out + 1e-6 if "device1" in str(getattr(x, "device", "")) else out

    monkeypatch.setattr(SinusoidalPositionalEmbedding, "forward", off_on_device1)
    path = tmp_path / "rows.json"
    args = ["--backends", "numpy,array_api_strict", "--dtypes", "float32"]
    run(capsys, "compare", *args, "--schemes", "sinusoidal", "--json", str(path))
    (pair,) = read_json(path)["pairwise"]
    assert pair["results"] == 3
    assert pair["max_difference_eps"] > 5  # 1e-6 is ~8 float32 eps
    assert "array_api_strict device1" in pair["between"]


def test_importing_cli_and_comparing_numpy_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "import olm_xp.cli\n"
        f"frameworks = {(*FRAMEWORKS, 'matplotlib')!r}\n"
        "def loaded(): return sorted(m for m in sys.modules if m.split('.')[0] in frameworks)\n"
        "assert not loaded(), loaded()\n"
        "rc = olm_xp.cli.main(['compare', '--backends', 'numpy', '--dtypes', 'float32',\n"
        "                      '--schemes', 'sinusoidal,rope-yarn-half'])\n"
        "assert not loaded(), loaded()\n"
        "raise SystemExit(rc)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stdout + result.stderr


BARE_INSTALL = """
import sys

class Uninstalled:  # as if only numpy and array-api-compat were installed
    def find_spec(self, name, path=None, target=None):
        blocked = {"torch", "jax", "jaxlib", "cupy", "dask", "array_api_strict", "matplotlib"}
        if name.split(".")[0] in blocked:
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
    last = last_line(result.stdout)
    assert last.startswith(f"compare: {len(SCHEMES)} passed, 0 failed; skipped: ")
    assert "skipped backends:" in result.stdout
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


def test_bare_install_plot_names_the_extra() -> None:
    result = run_python(BARE_INSTALL, "plot", "--out", "unused-dir")
    assert result.returncode == 2
    assert "olm-xp plot needs matplotlib" in result.stderr
    assert "pip install 'olm-xp[plot]'" in result.stderr
    assert "Traceback" not in result.stderr


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
    real_import = _compare.import_backend

    def import_backend(profile: BackendProfile) -> Any:
        if profile.id == "array_api_strict":
            raise error
        return real_import(profile)

    monkeypatch.setattr(_compare, "import_backend", import_backend)
    path = tmp_path / "rows.json"
    args = ["--backends", "numpy,array_api_strict", "--dtypes", "float32", *FEW]
    code, out, _ = run(capsys, "compare", *args, "--json", str(path))
    assert code == 0
    document = read_json(path)
    assert {r["backend"] for r in document["rows"]} == {"numpy"}
    assert list(document["skipped"]) == ["array_api_strict"]
    assert f"array_api_strict: {status}" in out
    assert str(error) in out
    assert pip_command(PROFILES["array_api_strict"]) in out
    assert last_line(out).endswith("; skipped: array_api_strict")


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
    monkeypatch.setattr(_compare, "_REFERENCE_CACHE", {})
    path = tmp_path / "rows.json"
    code, out, _ = run(capsys, "compare", *NUMPY32, *FEW, "--json", str(path))
    assert code == 1
    document = read_json(path)
    assert document["passed"] is False
    for row in document["rows"]:
        sinusoidal = row["scheme"].startswith("sinusoidal")
        assert row["passed"] is not sinusoidal
        if sinusoidal:  # 1e-3 is ~8000 float32 eps
            assert row["max_error_eps"] > 1000 * row["tolerance_eps"]
    assert "FAIL" in out
    assert "\nfailed:\n  numpy cpu float32 sinusoidal: error " in out
    assert last_line(out) == f"compare: {len(document['rows']) - 2} passed, 2 failed"


def test_a_wrong_scaling_variant_fails_only_its_schemes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """yarn's frequencies off by one part in a million: every yarn scheme (the scaled and the
    partial scaled class, both layouts) fails; nothing else does."""
    real = olm_xp.rope_frequencies._VARIANTS["yarn"]

    def slightly_off(*args: Any, **kwargs: Any) -> Any:
        inv_freq, factor = real(*args, **kwargs)
        return inv_freq * (1 + 1e-6), factor

    monkeypatch.setitem(olm_xp.rope_frequencies._VARIANTS, "yarn", slightly_off)
    path = tmp_path / "rows.json"
    code, _, _ = run(capsys, "compare", *NUMPY32, "--schemes", "rope-*", "--json", str(path))
    assert code == 1
    failed = {r["scheme"] for r in read_rows(path) if not r["passed"]}
    layouts = ("interleaved", "half")
    assert failed == {f"rope{p}-yarn-{lay}" for p in ("", "-partial") for lay in layouts}


def test_a_wrong_cached_repeat_call_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The last timed call is checked too: a result that goes wrong after the first call
    (a stale cache, a lean decode path) fails its row."""
    real = SinusoidalPositionalEmbedding.forward
    calls = {"n": 0}

    def wrong_after_first(self: Any, *args: Any) -> Any:
        calls["n"] += 1
        out = real(self, *args)
        return out if calls["n"] == 1 else out * 1.001

    monkeypatch.setattr(SinusoidalPositionalEmbedding, "forward", wrong_after_first)
    path = tmp_path / "rows.json"
    code, _, _ = run(capsys, "compare", *NUMPY32, "--schemes", "sinusoidal", "--json", str(path))
    assert code == 1
    (row,) = read_rows(path)
    assert row["passed"] is False
    assert row["max_error_eps"] > 100


def test_scheme_that_raises_is_a_failed_row(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("planted failure")

    monkeypatch.setattr(AbsolutePositionalEmbedding, "forward", broken)
    path = tmp_path / "rows.json"
    code, out, _ = run(capsys, "compare", *NUMPY32, *FEW, "--json", str(path))
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


def test_nothing_to_run_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compare", "--backends", "cupy", "--schemes", "alibi")
    assert code == 1
    assert "nothing ran" in out
    assert "nothing ran" in err
    assert "cupy:" in out


# -- filters --------------------------------------------------------------------------------


def test_filters_select_backends_devices_dtypes_and_schemes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "rows.json"
    args = [
        "--backends",
        "numpy,array_api_strict",
        "--devices",
        "device1",
        "--dtypes",
        "float64",
        "--schemes",
        "alibi,rope-*-half",
    ]
    code, out, _ = run(capsys, "compare", *args, "--json", str(path))
    assert code == 0
    rows = read_rows(path)
    assert {(r["backend"], r["device"], r["dtype"]) for r in rows} == {
        ("array_api_strict", "device1", "float64")
    }
    expected = ["alibi"] + [s for s in SCHEMES if fnmatch.fnmatchcase(s, "rope-*-half")]
    assert "rope-yarn-half" in expected
    assert [r["scheme"] for r in rows] == expected
    assert "numpy: none of its devices was selected by --devices" in out


@pytest.mark.parametrize(
    ("option", "value", "bad", "valid"),
    [
        ("--backends", "numpy,nosuch", "'nosuch'", list(PROFILES)),
        ("--dtypes", "float8", "'float8'", ["float32", "bfloat16"]),
        ("--devices", "cpu,gpu7", "'gpu7'", ["cpu", "device1", "cuda:0"]),
        ("--schemes", "rope-*,rotary", "'rotary'", SCHEMES),
        ("--schemes", ",", "(none given)", SCHEMES),
    ],
)
def test_unknown_names_exit_2_listing_valid_ones(
    capsys: pytest.CaptureFixture[str], option: str, value: str, bad: str, valid: list[str]
) -> None:
    code, out, err = run(capsys, "compare", option, value)
    assert (code, out) == (2, "")
    assert err.startswith(f"olm-xp compare: unknown {option} {bad}; valid: ")
    for name in valid:
        assert name in err
    assert "Traceback" not in err


def test_list_schemes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "compare", "--list-schemes")
    assert code == 0
    for scheme in cli.SCHEMES.values():
        assert re.search(rf"^{re.escape(scheme.name)}\s+{re.escape(scheme.summary)}$", out, re.M)


# -- output files ---------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--json", "--report"])
@pytest.mark.parametrize("where", ["/nonexistent/dir/x.{}", "missing-dir/x.{}", "{}-is-a-dir"])
def test_unwritable_output_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, where: str
) -> None:
    suffix = "json" if option == "--json" else "md"
    path = where.format(suffix)
    if not path.startswith("/"):
        path = str(tmp_path / path)
    if path.endswith("-is-a-dir"):
        path += ".md" if option == "--report" else ""
        Path(path).mkdir()
    code, out, err = run(capsys, "compare", *NUMPY32, option, path)
    assert (code, out) == (2, "")
    assert err.startswith(f"olm-xp compare: cannot write {option} {path}: ")
    assert "Traceback" not in err


def test_report_needs_a_known_suffix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "compare", *NUMPY32, "--report", str(tmp_path / "r.txt"))
    assert (code, out) == (2, "")
    assert "must end in .html, .htm or .md" in err


@pytest.mark.parametrize("suffix", ["md", "html"])
def test_report_files(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("planted <failure>")

    monkeypatch.setattr(AbsolutePositionalEmbedding, "forward", broken)
    path = tmp_path / f"report.{suffix}"
    args = ["--backends", "numpy,array_api_strict", "--dtypes", "float32", *FEW]
    code, _, _ = run(capsys, "compare", *args, "--report", str(path))
    assert code == 1
    text = path.read_text()
    rows = 3 * len([s for s in SCHEMES if s.startswith(("sinusoidal", "rope-yarn"))]) + 6
    if suffix == "md":
        assert text.startswith("# olm-xp compare\n")
        assert "## Failed" in text
        assert "| numpy | cpu | float32 | absolute | RuntimeError: planted <failure> |" in text
        assert "| numpy | cpu | float32 | rope-yarn-half |" in text
        assert "## Largest difference between backends" in text
        assert "| rope-yarn-half | float32 | 3 |" in text
        assert "| rope-yarn-half | RotaryPositionalEmbedding" not in text
        assert "| rope-yarn-half | ScaledRotaryPositionalEmbedding(scaling_type='yarn')" in text
        assert re.search(rf"\*\*{rows - 3} passed, 3 failed\*\*", text)
    else:
        assert text.startswith("<!DOCTYPE html>")
        assert text.rstrip().endswith("</html>")
        assert "planted &lt;failure&gt;" in text  # escaped
        assert text.count('<tr class="fail">') == 2 * 3  # in "Failed" and in "Results"
        assert text.count('<tr class="pass">') == rows - 3
        assert f"{rows - 3} passed, 3 failed" in text


# -- progress -------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code, out, _ = run(capsys, "compare", *NUMPY32, "--schemes", "alibi,t5-bias")
    assert code == 0
    text = terminal.getvalue()
    assert "\r[------------------------] 0/2 numpy cpu float32 alibi" in text
    assert "] 1/2 numpy cpu float32 t5-bias" in text
    assert text.endswith("\r")  # the bar is erased at the end
    assert "\r" not in out


def test_progress_is_silent_off_a_terminal_unless_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "compare", *NUMPY32, "--schemes", "alibi")
    assert (code, err) == (0, "")
    code, _, err = run(capsys, "compare", *NUMPY32, "--schemes", "alibi", "--progress", "always")
    assert (code, err) == (0, "olm-xp compare: [0/1] numpy cpu float32\n")


# -- plot -----------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_every_figure(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from olm_xp import _plot

    path = tmp_path / "rows.json"
    args = ["--schemes", "alibi,rope-yarn-*", "--json", str(path)]
    code, _, _ = run(capsys, "compare", *NUMPY32, *args)
    assert code == 0
    out = tmp_path / "figures" / "new"
    code, stdout, err = run(capsys, "plot", "--out", str(out), "--compare-json", str(path))
    assert (code, err) == (0, "")
    written = stdout.split()
    assert written == [str(out / name) for name in _plot.FIGURES]
    for name in written:
        data = Path(name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 10_000


def test_plot_without_a_json_runs_compare_with_the_filters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    from olm_xp import _plot

    seen: list[list[dict[str, Any]]] = []

    def write_figures(out: Path, rows: Any) -> list[Path]:
        seen.append(list(rows))
        return [out / "compare_errors.png"]

    monkeypatch.setattr(_plot, "write_figures", write_figures)
    args = ["plot", "--out", str(tmp_path), *NUMPY32, "--schemes", "alibi,rope-yarn-*"]
    code, stdout, err = run(capsys, *args)
    assert code == 0
    assert stdout == f"{tmp_path / 'compare_errors.png'}\n"
    assert err == "compare: 3 passed, 0 failed\n"
    (rows,) = seen
    assert [(r["backend"], r["scheme"], r["passed"]) for r in rows] == [
        ("numpy", s, True) for s in ("alibi", "rope-yarn-interleaved", "rope-yarn-half")
    ]


def test_plot_data_is_what_the_figures_claim() -> None:
    from olm_xp import _plot

    starts, naive, ours = _plot.angle_errors(bins=8)
    assert starts[-1] > 2**20
    assert np.all(ours <= 2.0**-25 * (1 + 2**-20))  # olm_xp: correctly rounded everywhere
    assert naive[-1] > 1e-2  # float32 angles: far off at long context
    variants = _plot.rope_variants()
    assert set(variants) == set(olm_xp.ROPE_TYPES)
    default = variants["default"][0]
    np.testing.assert_allclose(variants["linear"][0], default / _plot.ROPE_FACTOR)


@pytest.mark.parametrize("problem", ["out-under-a-file", "bad-json", "missing-json"])
def test_plot_bad_paths_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, problem: str
) -> None:
    pytest.importorskip("matplotlib")
    a_file = tmp_path / "a-file"
    a_file.write_text("{not json")
    if problem == "out-under-a-file":
        args = ["--out", str(a_file / "sub"), "--compare-json", str(a_file)]
        expected = f"cannot write to --out {a_file / 'sub'}: "
    elif problem == "bad-json":
        args = ["--out", str(tmp_path), "--compare-json", str(a_file)]
        expected = f"--compare-json {a_file} is not an `olm-xp compare --json` file"
    else:
        args = ["--out", str(tmp_path), "--compare-json", str(tmp_path / "nope.json")]
        expected = f"cannot read --compare-json {tmp_path / 'nope.json'}: "
    code, out, err = run(capsys, "plot", *args)
    assert (code, out) == (2, "")
    assert err.startswith(f"olm-xp plot: {expected}")
    assert "Traceback" not in err


# -- JAX: its two profiles share one module -------------------------------------------------


def test_jax_profiles_share_one_comparison(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    jax = pytest.importorskip("jax")
    path = tmp_path / "rows.json"
    args = ["--backends", "jax-cpu,jax-cpu-x32", "--dtypes", "float32,float64"]
    args += ["--schemes", "sinusoidal,rope-yarn-half"]
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
