"""Targets, Markdown tables and the chart from the measurements of ``run.py``.

Every ratio is the median over rounds of the per-round ratio ``t(a) / t(b)`` (both timed in
the same round); "frac of copy" is ``t(copy) / t(candidate)``: 1.0 means the candidate moves
its bytes as fast as a copy of the same bytes on the same device.
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

Group = dict[str, Any]


def machine() -> dict[str, Any]:
    """CPU, cores, memory and versions of this run."""
    info: dict[str, Any] = {"python": platform.python_version(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
        with open("/proc/meminfo") as f:
            total = next(line for line in f if line.startswith("MemTotal"))
        info["memory_gib"] = round(int(total.split()[1]) / 2**20, 1)
    except OSError:
        info["cpu"] = platform.processor()
    for module in ("numpy", "torch", "jax", "array_api_compat", "transformers"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    try:
        from importlib.metadata import version

        info["openlanguagemodel"] = version("openlanguagemodel")
    except Exception:
        info["openlanguagemodel"] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


# -- lookups ------------------------------------------------------------------------------------


def find(data: dict[str, Any], malloc: str = "default", **params: Any) -> Group | None:
    for group in data["groups"]:
        p = group["params"]
        if p.get("malloc", "default") == malloc and all(p.get(k) == v for k, v in params.items()):
            return group
    return None


def ratio(group: Group | None, a: str, b: str) -> float | None:
    """Median of per-round ``t(a) / t(b)``; None when either is missing."""
    if group is None:
        return None
    times = group["times_s"]
    if not times.get(a) or not times.get(b):
        return None
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def median_ms(group: Group | None, name: str) -> float | None:
    if group is None or not group["times_s"].get(name):
        return None
    return 1e3 * statistics.median(group["times_s"][name])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.1f} us" if value < 0.1 else f"{value:.2f}"


# -- targets -------------------------------------------------------------------------------------


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value, goal and verdict."""
    rows: list[dict[str, Any]] = []

    def add(target: str, value: float | None, goal: float, le: bool = True, note: str = "") -> None:
        met = None if value is None else (value <= goal if le else value >= goal)
        rows.append(
            {
                "target": target,
                "measured": value,
                "goal": goal,
                "sense": "<=" if le else ">=",
                "met": met,
                "note": note,
            }
        )

    for dtype, goal in (("float32", 0.5), ("bfloat16", 0.7)):
        for layout in ("half-split", "interleaved"):
            g = find(
                data, op="rope", backend="torch", shape_name="prefill", dtype=dtype, layout=layout
            )
            add(
                f"torch eager prefill {dtype} {layout}: olm_xp / olm",
                ratio(g, "olm_xp", "olm"),
                goal,
                note="olm has only the interleaved layout",
            )
            add(
                f"torch eager prefill {dtype} {layout}: olm_xp / HF native",
                ratio(g, "olm_xp", "native HF"),
                goal,
            )
    for layout in ("half-split", "interleaved"):
        g = find(
            data, op="rope", backend="torch", shape_name="prefill", dtype="float32", layout=layout
        )
        add(
            f"torch.compile(olm_xp) prefill float32 {layout}: frac of copy (allocating copy)",
            ratio(g, "copy", "compile olm_xp apply_rope"),
            0.85,
            le=False,
            note="default malloc: both sides write fresh pages",
        )
        g = find(
            data,
            "heapreuse",
            op="rope",
            backend="torch",
            shape_name="prefill",
            dtype="float32",
            layout=layout,
        )
        add(
            f"torch.compile(olm_xp) prefill float32 {layout}: frac of copy (preallocated copy)",
            ratio(g, "copy prealloc", "compile olm_xp apply_rope"),
            0.85,
            le=False,
            note="heap-reusing malloc (no page faults)",
        )
    for layout, goal in (("half-split", 0.6), ("interleaved", 1.0)):
        g = find(
            data, op="rope", backend="jax", shape_name="prefill", dtype="float32", layout=layout
        )
        add(
            f"jax.jit prefill float32 {layout}: olm_xp / jnp HF native",
            ratio(g, "olm_xp", "native HF"),
            goal,
        )
    for layout in ("half-split", "interleaved"):
        g = find(
            data, op="rope", backend="numpy", shape_name="prefill", dtype="float32", layout=layout
        )
        add(
            f"numpy prefill float32 {layout}: olm_xp / HF-style native",
            ratio(g, "olm_xp", "native HF"),
            0.65,
        )
    for layout in ("half-split", "interleaved"):
        g = find(
            data, op="rope", backend="torch", shape_name="decode", dtype="float32", layout=layout
        )
        add(
            f"torch decode step float32 {layout}: olm_xp / HF native per call",
            ratio(g, "olm_xp", "native HF"),
            0.7,
        )
    for group in data["groups"]:
        p = group["params"]
        if p["op"] in ("sinusoidal", "absolute") and p.get("malloc") == "default":
            add(
                f"{p['op']} add {p['backend']} {p['dtype']} {p['shape_name']}: olm_xp / native",
                ratio(group, "olm_xp", "native"),
                1.0,
            )
    for m in data.get("memory", []):
        if m.get("impl") != "olm_xp" or "peak_extra_bytes" not in m:
            continue
        value = m["peak_extra_bytes"] / m["input_bytes"]
        if m["op"] == "rope":
            add(
                f"peak extra memory, RoPE {m['backend']} {m['dtype']} {m['layout']} (x input size)",
                value,
                2.0,
            )
        else:
            add(
                f"peak extra memory, ALiBi {m['backend']} (x output size)",
                value,
                1.01,
                note="the output itself is 1.0",
            )
    return rows


# -- Markdown ------------------------------------------------------------------------------------


def _shape(p: dict[str, Any]) -> str:
    return "x".join(str(n) for n in p["shape"])


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    s = data["settings"]
    out = ["# olm_xp benchmark results", ""]
    out.append(
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f". Python {m.get('python')}, numpy {m.get('numpy')}, torch {m.get('torch')}, "
        f"jax {m.get('jax')}, array-api-compat {m.get('array_api_compat')}, transformers "
        f"{m.get('transformers')}, openlanguagemodel {m.get('openlanguagemodel')}. "
        f"Mode: {'quick' if s['quick'] else 'full'}, device {s['device']}; "
        f"{s['elapsed_s'] / 60:.1f} min."
    )
    out += [
        "",
        "Ratios are medians of per-round ratios (same round, shuffled order); "
        "times are medians in ms. `frac copy` = t(copy of the same bytes) / t.",
        "",
    ]
    out += ["## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in data["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t.get("note") else ""
        out.append(
            f"| {t['target']}{note} | {_fmt(t['measured'])} | {t['sense']} {t['goal']} | {met} |"
        )
    out += ["", "## RoPE", ""]
    out.append(
        "| backend | malloc | shape | dtype | layout | olm_xp ms | HF native ms | olm ms "
        "| olm_xp / HF | olm_xp / olm | apply_rope / HF | compile: olm_xp / HF "
        "| frac copy: olm_xp | frac copy: compile olm_xp | frac prealloc copy: compile olm_xp |"
    )
    out.append("|" + "---|" * 15)
    for g in data["groups"]:
        p = g["params"]
        if p["op"] != "rope":
            continue
        compiled = "compile olm_xp apply_rope"
        out.append(
            f"| {p['backend']}/{p['device']} | {p.get('malloc', 'default')} "
            f"| {p['shape_name']} {_shape(p)} | {p['dtype']} | {p['layout']} "
            f"| {_ms(median_ms(g, 'olm_xp'))} | {_ms(median_ms(g, 'native HF'))} "
            f"| {_ms(median_ms(g, 'olm'))} "
            f"| {_fmt(ratio(g, 'olm_xp', 'native HF'))} | {_fmt(ratio(g, 'olm_xp', 'olm'))} "
            f"| {_fmt(ratio(g, 'olm_xp apply_rope', 'native HF'))} "
            f"| {_fmt(ratio(g, compiled, 'compile native HF'))} "
            f"| {_fmt(ratio(g, 'copy', 'olm_xp'))} | {_fmt(ratio(g, 'copy', compiled))} "
            f"| {_fmt(ratio(g, 'copy prealloc', compiled))} |"
        )
    out += ["", "## Sinusoidal and learned absolute add", ""]
    out.append(
        "| backend | embedding | positions | shape | dtype | olm_xp ms | native ms | olm ms "
        "| olm_xp / native | olm / native | frac copy: olm_xp |"
    )
    out.append("|" + "---|" * 11)
    for g in data["groups"]:
        p = g["params"]
        if p["op"] not in ("sinusoidal", "absolute"):
            continue
        out.append(
            f"| {p['backend']}/{p['device']} | {p['op']} | {p['shape_name']} | {_shape(p)} "
            f"| {p['dtype']} | {_ms(median_ms(g, 'olm_xp'))} | {_ms(median_ms(g, 'native'))} "
            f"| {_ms(median_ms(g, 'olm'))} | {_fmt(ratio(g, 'olm_xp', 'native'))} "
            f"| {_fmt(ratio(g, 'olm', 'native'))} | {_fmt(ratio(g, 'copy', 'olm_xp'))} |"
        )
    out += ["", "## ALiBi bias (materialised, float32)", ""]
    out.append(
        "| backend | shape | olm_xp ms | native ms | olm build ms | olm_xp / native "
        "| frac copy: olm_xp |"
    )
    out.append("|" + "---|" * 7)
    for g in data["groups"]:
        p = g["params"]
        if p["op"] != "alibi":
            continue
        out.append(
            f"| {p['backend']}/{p['device']} | {_shape(p)} | {_ms(median_ms(g, 'olm_xp'))} "
            f"| {_ms(median_ms(g, 'native'))} | {_ms(median_ms(g, 'olm (build)'))} "
            f"| {_fmt(ratio(g, 'olm_xp', 'native'))} | {_fmt(ratio(g, 'copy', 'olm_xp'))} |"
        )
    if data.get("memory"):
        out += [
            "",
            "## Peak extra memory of one call",
            "",
            "RoPE: multiples of the input's size; ALiBi: multiples of the output's size "
            "(see `memory.py` for the method).",
            "",
            "| op | backend | dtype | layout | olm_xp | native | olm |",
            "|---|---|---|---|---|---|---|",
        ]
        rows: dict[tuple[str, ...], dict[str, float]] = {}
        for r in data["memory"]:
            key = (r["op"], f"{r['backend']}/{r['device']}", r["dtype"], r["layout"])
            value = r["peak_extra_bytes"] / r["input_bytes"] if "peak_extra_bytes" in r else None
            rows.setdefault(key, {})[r["impl"]] = value  # type: ignore[assignment]
        for key, impls in rows.items():
            out.append(
                f"| {' | '.join(key)} | {_fmt(impls.get('olm_xp'))} "
                f"| {_fmt(impls.get('native'))} | {_fmt(impls.get('olm'))} |"
            )
    errors = [(g["title"], g["errors"]) for g in data["groups"] if g.get("errors")]
    if errors:
        out += ["", "## Candidates that failed their check or raised", ""]
        out += [f"- {title}: {err}" for title, err in errors]
    return "\n".join(out) + "\n"


# -- chart ---------------------------------------------------------------------------------------


def chart(data: dict[str, Any], path: Path) -> None:
    """Horizontal bars: olm_xp / native for every comparison (log scale; < 1 is faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    palette = {"torch": "#ee4c2c", "jax": "#4285f4", "numpy": "#4d77cf"}
    for g in data["groups"]:
        p = g["params"]
        native = "native HF" if p["op"] == "rope" else "native"
        value = ratio(g, "olm_xp", native)
        if value is None:
            continue
        suffix = " [heapreuse]" if p.get("malloc") == "heapreuse" else ""
        labels.append(
            f"{p['op']} {p['backend']} {p['shape_name']} {p['dtype']} {p.get('layout', '')}{suffix}"
        )
        values.append(value)
        colors.append(palette.get(p["backend"], "grey"))
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(labels) + 1.5))
    y = range(len(labels))
    ax.barh(list(y), values, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("t(olm_xp) / t(native)  (median of per-round ratios; < 1 = olm_xp faster)")
    ax.set_title(f"olm_xp vs native code ({data['machine'].get('cpu')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
