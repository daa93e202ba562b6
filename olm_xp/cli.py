"""The ``olm-xp`` command (also ``python -m olm_xp``).

``olm-xp info``
    Versions, and for every backend profile (``backends/*.toml``) whether its module imports,
    its version and its devices.
``olm-xp compare``
    Runs every scheme (:data:`olm_xp._compare.SCHEMES`: absolute, sinusoidal, every RoPE class
    and scaling variant in both layouts, ALiBi, T5) on every importable backend, device and
    dtype against the float64 reference of :mod:`olm_xp.reference`; prints the error in units
    of the dtype's eps, pass/fail against :data:`TOLERANCE_EPS`, the time per call and the
    largest difference between backends. ``--json``/``--report`` write it for machines/people.
``olm-xp plot``
    PNG figures (needs the ``plot`` extra: matplotlib), see :mod:`olm_xp._plot`.
``olm-xp support-table``
    The README's Markdown backend support table, generated from the profiles.

Exit status: 0 success, 1 a comparison failed (or nothing could run), 2 a usage error (unknown
names, an unwritable output path, a missing optional dependency).

The profiles from :func:`olm_xp._profiles.load_profiles` are the only list of backends. This
module imports no framework (torch, JAX, CuPy, Dask) and no matplotlib when it is imported.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import array_api_compat
import numpy as np

import olm_xp
from olm_xp import _compare, _report
from olm_xp._compare import (
    SCHEMES,
    TOLERANCE_EPS,
    CompareResult,
    CompareRow,
    import_backend,
    resolve_device,
    visible_devices,
)
from olm_xp._compat import has_float64, resolve_namespace
from olm_xp._profiles import BackendProfile, load_profiles

__all__ = ["SCHEMES", "TOLERANCE_EPS", "CompareRow", "import_backend", "main"]


class UsageError(Exception):
    """A bad command line: the message is printed and the exit status is 2."""


# -- progress -------------------------------------------------------------------------------


class ProgressBar:
    """``compare``'s progress on stderr.

    ``auto``: a bar redrawn in place when stderr is a terminal, nothing otherwise (logs stay
    clean); ``always``: the bar on a terminal, else one plain line per backend/device/dtype;
    ``never``: nothing.
    """

    WIDTH = 24

    def __init__(self, stream: TextIO, mode: str) -> None:
        tty = stream.isatty()
        self.stream = stream
        self.redraw = mode != "never" and tty
        self.plain = mode == "always" and not tty
        self.last_group = ""
        self.drawn = 0

    def __call__(self, done: int, total: int, label: str) -> None:
        if self.plain:
            group = " ".join(label.split(" ")[:3])
            if label != "done" and group != self.last_group:
                self.last_group = group
                print(f"olm-xp compare: [{done}/{total}] {group}", file=self.stream, flush=True)
            return
        if not self.redraw:
            return
        if label == "done":
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
            return
        filled = self.WIDTH * done // total if total else self.WIDTH
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"[{bar}] {done}/{total} {label}"
        width = max(shutil.get_terminal_size((80, 24)).columns - 1, 20)
        line = line[:width]
        self.stream.write("\r" + line.ljust(self.drawn))
        self.stream.flush()
        self.drawn = len(line)


# -- info -----------------------------------------------------------------------------------


def _info(out: TextIO) -> int:
    print(f"olm_xp {olm_xp.__version__}", file=out)
    print(f"Python {platform.python_version()} ({sys.executable})", file=out)
    print(f"numpy {np.__version__}", file=out)
    print(f"array-api-compat {array_api_compat.__version__}", file=out)
    print("\nbackend profiles:", file=out)
    cells = []
    for profile in load_profiles().values():
        try:
            module = _compare.import_backend(profile)
        except Exception as err:
            status = "not installed" if isinstance(err, ImportError) else "import failed"
            detail = f"{type(err).__name__}: {err}; {_compare.pip_command(profile)}"
            cells.append([profile.id, profile.module, status, "-", "-", detail])
            continue
        version = _compare.module_version(profile.module)
        try:
            xp = resolve_namespace(module)
            devices = visible_devices(xp)
            missing = [
                d
                for d in profile.devices
                if d not in profile.shape_only_devices and resolve_device(xp, d) is None
            ]
            first = resolve_device(xp, profile.devices[0])
            float64 = "-" if first is None else ("yes" if has_float64(xp, first) else "no")
        except Exception as err:
            cells.append(
                [profile.id, profile.module, "error", version, "-", f"{type(err).__name__}: {err}"]
            )
            continue
        if not missing:
            status = "ok"
        elif len(missing) == len(profile.devices) - len(profile.shape_only_devices):
            status = "no GPU here" if profile.is_gpu else "no device here"
        else:
            status = f"ok ({', '.join(missing)} not here)"
        cells.append([profile.id, profile.module, status, version, float64, ", ".join(devices)])
    headers = ["profile", "module", "status", "version", "float64", "devices / how to add"]
    print(_report.format_table(headers, cells), file=out)
    return 0


# -- support table --------------------------------------------------------------------------


def support_table(profiles: Iterable[BackendProfile]) -> str:
    """The README's Markdown backend support table, one row per profile."""
    headers = [
        "profile",
        "title",
        "kind",
        "devices tested",
        "dtypes",
        "low-precision dtypes",
        "jit",
        "install requirement",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for p in profiles:
        devices = ", ".join(
            f"{d} (shape only)" if d in p.shape_only_devices else d for d in p.devices
        )
        cells = [
            f"`{p.id}`",
            p.title,
            p.kind,
            devices,
            ", ".join(p.dtypes),
            ", ".join(p.low_precision_dtypes) or "-",
            p.jit or "-",
            ", ".join(f"`{r}`" for r in p.requirements),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- selection ------------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _unknown(option: str, bad: Sequence[str], valid: Iterable[str], hint: str = "") -> UsageError:
    shown = ", ".join(map(repr, bad)) if bad else "(none given)"
    return UsageError(f"unknown {option} {shown}; valid: {', '.join(valid)}{hint}")


@dataclass(frozen=True)
class Selection:
    profiles: list[BackendProfile]
    dtypes: set[str] | None
    devices: set[str] | None
    schemes: list[str] | None


def _select(args: argparse.Namespace) -> Selection:
    """Validate ``--backends``, ``--devices``, ``--dtypes`` and ``--schemes``."""
    profiles = load_profiles()
    selected = list(profiles.values())
    if args.backends is not None:
        names = _split(args.backends)
        bad = [n for n in names if n not in profiles]
        if bad or not names:
            raise _unknown("--backends", bad, profiles)
        selected = [profiles[n] for n in dict.fromkeys(names)]
    dtypes = devices = None
    if args.dtypes is not None:
        known = list(
            dict.fromkeys(
                d for p in profiles.values() for d in (*p.dtypes, *p.low_precision_dtypes)
            )
        )
        dtypes = set(_split(args.dtypes))
        if not dtypes or not dtypes <= set(known):
            raise _unknown("--dtypes", sorted(dtypes - set(known)), known)
    if args.devices is not None:
        known = list(dict.fromkeys(d for p in profiles.values() for d in p.devices))
        devices = set(_split(args.devices))
        if not devices or not devices <= set(known):
            raise _unknown("--devices", sorted(devices - set(known)), known)
    schemes = None
    if args.schemes is not None:
        patterns = _split(args.schemes)
        matched: dict[str, None] = {}
        bad = []
        for pattern in patterns:
            hits = [n for n in SCHEMES if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                bad.append(pattern)
            matched.update(dict.fromkeys(hits))
        if bad or not patterns:
            hint = " (globs such as 'rope-*-half' work; `olm-xp compare --list-schemes`)"
            raise _unknown("--schemes", bad, SCHEMES, hint)
        schemes = [n for n in SCHEMES if n in matched]
    return Selection(selected, dtypes, devices, schemes)


def _open_for_writing(path: str, option: str) -> TextIO:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot write {option} {path}: {err.strerror or err}") from None


def _report_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix in (".md", ".markdown"):
        return "markdown"
    raise UsageError(f"--report {path}: the file name must end in .html, .htm or .md")


# -- compare --------------------------------------------------------------------------------


def run_compare(selection: Selection, progress_mode: str) -> CompareResult:
    progress = ProgressBar(sys.stderr, progress_mode)
    return _compare.compare(
        selection.profiles,
        dtype_filter=selection.dtypes,
        device_filter=selection.devices,
        schemes=selection.schemes,
        progress=progress,
    )


def _list_schemes(out: TextIO) -> int:
    cells = [[s.name, s.summary] for s in SCHEMES.values()]
    print(_report.format_table(["scheme", "what it runs"], cells), file=out)
    return 0


def _compare_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.list_schemes:
        return _list_schemes(sys.stdout)
    selection = _select(args)
    report_format = _report_format(args.report) if args.report is not None else None
    outputs: dict[str, TextIO] = {}
    try:
        if args.json is not None:
            outputs["json"] = _open_for_writing(args.json, "--json")
        if args.report is not None:
            outputs["report"] = _open_for_writing(args.report, "--report")
        result = run_compare(selection, args.progress)
        _report.print_text(result, sys.stdout, colour=_report.stream_supports_colour(sys.stdout))
        if "json" in outputs:
            json.dump(_report.json_document(result, argv), outputs["json"], indent=2)
            outputs["json"].write("\n")
        if "report" in outputs:
            write = _report.html_report if report_format == "html" else _report.markdown_report
            outputs["report"].write(write(result, argv))
    finally:
        for stream in outputs.values():
            stream.close()
    if not result.rows:
        print("olm-xp compare: nothing ran (see the skipped backends above)", file=sys.stderr)
        return 1
    return 0 if not result.failed else 1


# -- plot -----------------------------------------------------------------------------------


def _rows_from_json(path: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = document["rows"]
        fields = ("backend", "device", "dtype", "scheme", "max_error_eps", "tolerance_eps")
        for row in rows:
            missing = [k for k in fields if k not in row]
            if missing:
                raise KeyError(f"a row lacks {missing}")
    except OSError as err:
        raise UsageError(f"cannot read --compare-json {path}: {err.strerror or err}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"--compare-json {path} is not an `olm-xp compare --json` file ({type(err).__name__}: "
            f"{err})"
        ) from None
    return list(rows)


def _plot_command(args: argparse.Namespace) -> int:
    from olm_xp import _plot

    try:
        _plot.require_matplotlib()
    except ImportError as err:
        raise UsageError(str(err)) from None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".olm-xp-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to --out {out}: {err.strerror or err}") from None
    if args.compare_json is not None:
        rows = _rows_from_json(args.compare_json)
    else:
        selection = _select(args)
        result = run_compare(selection, args.progress)
        rows = [asdict(r) for r in result.rows]
        print(_report.summary_line(result), file=sys.stderr)
    for path in _plot.write_figures(out, rows):
        print(path)
    return 0


# -- command line ---------------------------------------------------------------------------


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backends", metavar="IDS", help="comma-separated profile ids (default: all)"
    )
    parser.add_argument(
        "--devices", metavar="NAMES", help="comma-separated device names, e.g. cpu,device1"
    )
    parser.add_argument(
        "--dtypes", metavar="NAMES", help="comma-separated dtypes, e.g. float32,bfloat16"
    )
    parser.add_argument(
        "--schemes",
        metavar="NAMES",
        help="comma-separated scheme names or globs, e.g. 'sinusoidal,rope-*-half'",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress on stderr: auto (a bar when stderr is a terminal), always, never",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olm-xp", description="olm_xp: olm's positional embeddings on every array-API backend"
    )
    parser.add_argument("--version", action="version", version=f"olm_xp {olm_xp.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="versions, and which backends and devices are usable here")
    cmp = commands.add_parser(
        "compare",
        help="run every scheme on every backend, device and dtype against the float64 reference",
        description="Runs every scheme on every installed backend, device and dtype. "
        f"{_report.METRIC[0].upper()}{_report.METRIC[1:]}. "
        "Exit status: 0 if every row is within its tolerance "
        f"({TOLERANCE_EPS:g} eps), 1 if any row fails or nothing could run, 2 for a usage "
        "error.",
    )
    _add_filters(cmp)
    cmp.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    cmp.add_argument(
        "--report", metavar="FILE", help="also write a report for people: FILE.html or FILE.md"
    )
    cmp.add_argument(
        "--list-schemes", action="store_true", help="list the schemes and what each runs; exit"
    )
    plot = commands.add_parser(
        "plot",
        help="write PNG figures (needs matplotlib: pip install 'olm-xp[plot]')",
        description="Writes sinusoidal_heatmap.png, rope_inverse_frequencies.png, "
        "rope_angle_error.png, alibi_bias.png and compare_errors.png into --out. The compare "
        "heatmap comes from --compare-json, or from a compare run with the filters given.",
    )
    plot.add_argument("--out", metavar="DIR", required=True, help="folder for the PNG files")
    plot.add_argument(
        "--compare-json", metavar="FILE", help="an `olm-xp compare --json` file to plot"
    )
    _add_filters(plot)
    commands.add_parser("support-table", help="print the README's Markdown backend support table")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``olm-xp``; return the exit status (0 ok, 1 a comparison failed, 2 usage error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if args.command == "info":
            return _info(sys.stdout)
        if args.command == "support-table":
            print(support_table(load_profiles().values()))
            return 0
        if args.command == "plot":
            return _plot_command(args)
        return _compare_command(args, argv)
    except UsageError as err:
        print(f"olm-xp {args.command}: {err}", file=sys.stderr)
        return 2
