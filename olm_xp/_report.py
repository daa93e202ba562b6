"""What ``olm-xp compare`` writes: the terminal table, the ``--json`` document and the
``--report`` file (Markdown or self-contained HTML). Pure formatting: no framework, no I/O
besides the stream it is handed."""

from __future__ import annotations

import html
import os
import platform
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

import array_api_compat
import numpy as np

import olm_xp
from olm_xp._compare import (
    SCHEMES,
    TOLERANCE_EPS,
    CompareResult,
    CompareRow,
    PairwiseRow,
)

__all__ = [
    "METRIC",
    "format_table",
    "html_report",
    "json_document",
    "markdown_report",
    "print_text",
]

METRIC = (
    "error = max(|out - ref| / scale) in units of the dtype's eps, against the float64 "
    "reference (olm_xp.reference) on the same rounded inputs; scale = max(|ref|, 1), for RoPE "
    "the magnitude of each rotated pair"
)
JSON_SCHEMA_VERSION = 1
HEADERS = ["backend", "device", "dtype", "scheme", "max err/eps", "tol/eps", "result", "time/call"]
PAIRWISE_HEADERS = ["scheme", "dtype", "results", "max diff/eps", "between"]


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def format_eps(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with columns aligned to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def result_label(row: CompareRow) -> str:
    if row.error is not None:
        return "ERROR"
    return "pass" if row.passed else "FAIL"


def row_cells(row: CompareRow) -> list[str]:
    return [
        row.backend,
        row.device,
        row.dtype,
        row.scheme,
        format_eps(row.max_error_eps),
        f"{row.tolerance_eps:g}",
        result_label(row),
        format_seconds(row.seconds_per_call),
    ]


def pairwise_cells(row: PairwiseRow) -> list[str]:
    return [
        row.scheme,
        row.dtype,
        str(row.results),
        format_eps(row.max_difference_eps),
        " vs ".join(row.between) or "-",
    ]


def failure_reason(row: CompareRow) -> str:
    if row.error is not None:
        return row.error
    return f"error {format_eps(row.max_error_eps)} eps > tolerance {row.tolerance_eps:g} eps"


def summary_line(result: CompareResult) -> str:
    passed = sum(r.passed for r in result.rows)
    skipped = result.plan.skipped
    tail = f"; skipped: {', '.join(skipped)}" if skipped else ""
    return f"compare: {passed} passed, {len(result.rows) - passed} failed{tail}"


def _compared_pairs(result: CompareResult) -> list[PairwiseRow]:
    return [p for p in result.pairwise if p.results >= 2]


def _colour(text: str, label: str, enabled: bool) -> str:
    if not enabled or label == "pass":
        return text
    return f"\033[1;31m{text}\033[0m"


def print_text(result: CompareResult, out: TextIO, *, colour: bool = False) -> None:
    """The terminal report: every row, the cross-backend differences, failures, skipped."""
    header = (
        f"olm-xp compare: {METRIC}. Tolerance {TOLERANCE_EPS:g} eps (float64 trigonometric "
        "rows: + 2 * max_angle + 2, where the float64 reference is no more exact than the result)."
    )
    print(textwrap.fill(header, 100) + "\n", file=out)
    if result.rows:
        lines = format_table(HEADERS, [row_cells(r) for r in result.rows]).splitlines()
        body = [
            _colour(line, result_label(row), colour)
            for line, row in zip(lines[2:], result.rows, strict=True)
        ]
        print("\n".join(lines[:2] + body), file=out)
    else:
        print("(nothing ran: no selected backend is usable here)", file=out)
    pairs = _compared_pairs(result)
    if pairs:
        print(
            "\nlargest difference between any two backends/devices, per scheme and dtype "
            "(same inputs; in eps of the dtype, same scale as above):",
            file=out,
        )
        print(format_table(PAIRWISE_HEADERS, [pairwise_cells(p) for p in pairs]), file=out)
    elif result.rows:
        print("\n(one backend/device per dtype: no cross-backend differences to show)", file=out)
    if result.failed:
        print("\nfailed:", file=out)
        for r in result.failed:
            print(f"  {r.backend} {r.device} {r.dtype} {r.scheme}: {failure_reason(r)}", file=out)
    if result.plan.notes:
        print("\nnotes:", file=out)
        for note in result.plan.notes:
            print(f"  {note}", file=out)
    if result.plan.skipped:
        print("\nskipped backends:", file=out)
        for profile_id, reason in result.plan.skipped.items():
            print(f"  {profile_id}: {reason}", file=out)
    print(f"\n{summary_line(result)}", file=out)


# -- machine and people reports -------------------------------------------------------------


def _environment(result: CompareResult) -> dict[str, str]:
    env = {
        "olm_xp": olm_xp.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "array_api_compat": array_api_compat.__version__,
    }
    env.update({f"backend {k}": v for k, v in result.plan.versions.items()})
    return env


def _number(value: float | None) -> float | None:
    """JSON has no infinity or NaN; rows carry None for 'no number' already."""
    return None if value is None or not np.isfinite(value) else float(value)


def json_document(result: CompareResult, argv: Sequence[str]) -> dict[str, Any]:
    """The ``--json`` document (``schema_version`` 1)."""
    passed = sum(r.passed for r in result.rows)
    rows = []
    for r in result.rows:
        row = asdict(r)
        row["max_error_eps"] = _number(r.max_error_eps)
        rows.append(row)
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "command": ["olm-xp", *argv],
        "environment": _environment(result),
        "metric": METRIC,
        "tolerance_eps": TOLERANCE_EPS,
        "passed": passed == len(result.rows),
        "summary": {
            "rows": len(result.rows),
            "passed": passed,
            "failed": len(result.rows) - passed,
            "seconds": round(result.seconds, 3),
        },
        "rows": rows,
        "pairwise": [
            {
                **asdict(p),
                "between": list(p.between),
                "max_difference_eps": _number(p.max_difference_eps),
            }
            for p in result.pairwise
        ],
        "skipped": dict(result.plan.skipped),
        "notes": list(result.plan.notes),
        "schemes": {name: SCHEMES[name].summary for name in _schemes_run(result)},
    }


def _schemes_run(result: CompareResult) -> list[str]:
    return list(dict.fromkeys(r.scheme for r in result.rows))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(result: CompareResult, argv: Sequence[str]) -> str:
    """A Markdown report for people: summary, failures, every row, differences, schemes."""
    passed = sum(r.passed for r in result.rows)
    env = ", ".join(f"{k} {v}" for k, v in _environment(result).items())
    parts = [
        "# olm-xp compare",
        f"`olm-xp {' '.join(argv)}` -- {env}.",
        f"{METRIC[0].upper()}{METRIC[1:]}. Tolerance {TOLERANCE_EPS:g} eps (float64 "
        "trigonometric rows: + 2 * max_angle + 2 eps).",
        f"**{passed} passed, {len(result.rows) - passed} failed** in {result.seconds:.1f} s.",
    ]
    if result.failed:
        rows = [[*row_cells(r)[:4], failure_reason(r)] for r in result.failed]
        parts += ["## Failed", _md_table([*HEADERS[:4], "why"], rows)]
    parts += ["## Results", _md_table(HEADERS, [row_cells(r) for r in result.rows])]
    pairs = _compared_pairs(result)
    if pairs:
        parts += [
            "## Largest difference between backends",
            "Per scheme and dtype, the largest difference between any two backends or devices "
            "on the same inputs, in eps of the dtype.",
            _md_table(PAIRWISE_HEADERS, [pairwise_cells(p) for p in pairs]),
        ]
    parts += [
        "## Schemes",
        _md_table(
            ["scheme", "what it runs"], [[n, SCHEMES[n].summary] for n in _schemes_run(result)]
        ),
    ]
    if result.plan.skipped:
        parts += ["## Skipped backends"]
        parts += ["\n".join(f"- `{k}`: {v}" for k, v in result.plan.skipped.items())]
    if result.plan.notes:
        parts += ["## Notes", "\n".join(f"- {n}" for n in result.plan.notes)]
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.pass td.result { color: #176f2c; }
tr.fail td { background: #fde8e8; } tr.fail td.result { color: #b00020; font-weight: bold; }
.summary { font-size: 1.2em; } .ok { color: #176f2c; } .bad { color: #b00020; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _html_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()
) -> str:
    numeric = {"max err/eps", "tol/eps", "time/call", "max diff/eps", "results"}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) else ""
        cells = "".join(
            f'<td class="{"num" if h in numeric else h.replace("/", "")}">{html.escape(c)}</td>'
            for h, c in zip(headers, row, strict=True)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_report(result: CompareResult, argv: Sequence[str]) -> str:
    """A self-contained HTML report (inline CSS, no script): the Markdown report's content."""
    passed = sum(r.passed for r in result.rows)
    failed = len(result.rows) - passed
    env = ", ".join(f"{k} {v}" for k, v in _environment(result).items())
    verdict = "ok" if failed == 0 else "bad"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>olm-xp compare</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>olm-xp compare</h1>",
        f"<p><code>olm-xp {html.escape(' '.join(argv))}</code> &mdash; {html.escape(env)}.</p>",
        f"<p>{html.escape(METRIC[0].upper() + METRIC[1:])}. Tolerance {TOLERANCE_EPS:g} eps "
        "(float64 trigonometric rows: + 2 &middot; max_angle + 2 eps).</p>",
        f'<p class="summary {verdict}"><strong>{passed} passed, {failed} failed</strong> in '
        f"{result.seconds:.1f} s.</p>",
    ]
    if result.failed:
        rows = [[*row_cells(r)[:4], failure_reason(r)] for r in result.failed]
        parts += ["<h2>Failed</h2>", _html_table([*HEADERS[:4], "why"], rows, ["fail"] * len(rows))]
    classes = ["pass" if r.passed else "fail" for r in result.rows]
    parts += [
        "<h2>Results</h2>",
        _html_table(HEADERS, [row_cells(r) for r in result.rows], classes),
    ]
    pairs = _compared_pairs(result)
    if pairs:
        parts += [
            "<h2>Largest difference between backends</h2>",
            "<p>Per scheme and dtype, the largest difference between any two backends or devices "
            "on the same inputs, in eps of the dtype.</p>",
            _html_table(PAIRWISE_HEADERS, [pairwise_cells(p) for p in pairs]),
        ]
    parts += [
        "<h2>Schemes</h2>",
        _html_table(
            ["scheme", "what it runs"], [[n, SCHEMES[n].summary] for n in _schemes_run(result)]
        ),
    ]
    if result.plan.skipped:
        items = "".join(
            f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
            for k, v in result.plan.skipped.items()
        )
        parts += ["<h2>Skipped backends</h2>", f"<ul>{items}</ul>"]
    if result.plan.notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in result.plan.notes)
        parts += ["<h2>Notes</h2>", f"<ul>{items}</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def stream_supports_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and sys.platform != "win32"
