"""``olm-xp plot``: PNG figures of the schemes and of a comparison (needs matplotlib).

matplotlib is the optional extra ``plot`` (``pip install 'olm-xp[plot]'``); it is imported
only by :func:`require_matplotlib`, so importing this module imports neither it nor any
framework. Every figure is computed with NumPy.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from olm_xp.alibi import alibi_bias, alibi_slope_values
from olm_xp.rope import rope_cos_sin
from olm_xp.rope_frequencies import host_inverse_frequencies
from olm_xp.sinusoidal import sinusoidal_table

__all__ = ["FIGURES", "require_matplotlib", "write_figures"]

FIGURES = (
    "sinusoidal_heatmap.png",
    "rope_inverse_frequencies.png",
    "rope_angle_error.png",
    "alibi_bias.png",
    "compare_errors.png",
)
DPI = 110


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or an ImportError naming the
    extra to install."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as err:
        raise ImportError(
            f"olm-xp plot needs matplotlib ({err}); install the plot extra: "
            "pip install 'olm-xp[plot]'"
        ) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    importlib.import_module("matplotlib.pyplot").close(fig)
    return path


# -- sinusoidal -----------------------------------------------------------------------------


def sinusoidal_figure(plt: Any, positions: int = 256, embed_dim: int = 128) -> Any:
    table = np.asarray(sinusoidal_table(positions, embed_dim, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(8, 5))
    image = ax.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, origin="lower",
                      interpolation="nearest")  # fmt: skip
    ax.set_xlabel("feature index (even: sin, odd: cos; frequency falls to the right)")
    ax.set_ylabel("position")
    ax.set_title(f"Sinusoidal positional encoding (Vaswani et al.), D={embed_dim}, base 10000")
    fig.colorbar(image, ax=ax, label="value")
    return fig


# -- RoPE inverse frequencies ---------------------------------------------------------------

ROPE_DIM = 128
ROPE_BASE = 10000.0
ROPE_FACTOR = 8.0
ROPE_ORIGINAL = 4096


def rope_variants(dim: int = ROPE_DIM) -> dict[str, tuple[np.ndarray[Any, Any], str]]:
    """Each scaling variant's inverse frequencies at one common setting, with a label."""
    s, l0 = ROPE_FACTOR, ROPE_ORIGINAL
    pairs = dim // 2
    # illustrative (Phi-3's are fitted per model): ~1 for the fast pairs, rising to s
    long_factor = list(1.0 + (s - 1.0) * np.linspace(0.0, 1.0, pairs) ** 3)
    settings: dict[str, tuple[str, dict[str, Any], str]] = {
        "default": ("default", {}, "default (no scaling)"),
        "linear": ("linear", {"factor": s}, f"linear (position interpolation), factor {s:g}"),
        "ntk": ("ntk", {"factor": s}, f"ntk (NTK-aware base), factor {s:g}"),
        "dynamic": (
            "dynamic",
            {"factor": s, "original_max_position_embeddings": l0, "seq_len": 3 * l0 // 2},
            f"dynamic NTK at seq_len = 1.5 L0, factor {s:g}",
        ),
        "yarn": (
            "yarn",
            {"factor": s, "original_max_position_embeddings": l0},
            f"yarn (ramp, beta 32..1), factor {s:g}",
        ),
        "longrope": (
            "longrope",
            {
                "short_factor": [1.0] * pairs,
                "long_factor": long_factor,
                "original_max_position_embeddings": l0,
                "factor": s,
                "seq_len": 2 * l0,
            },
            f"longrope past L0, long factors 1..{s:g} (illustrative)",
        ),
        "llama3": (
            "llama3",
            {"factor": s, "original_max_position_embeddings": l0},
            f"llama3 (bands, low 1 / high 4), factor {s:g}",
        ),
    }
    out = {}
    for name, (rope_type, params, label) in settings.items():
        inv_freq, _ = host_inverse_frequencies(dim, rope_type, ROPE_BASE, params)
        out[name] = (inv_freq, label)
    return out


def rope_frequencies_figure(plt: Any) -> Any:
    variants = rope_variants()
    default = variants["default"][0]
    pair = np.arange(default.shape[0])
    fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {
        "default": ("-", "black"),
        "linear": ("--", "tab:blue"),
        "ntk": ("-.", "tab:orange"),
        "dynamic": (":", "tab:green"),
        "yarn": ("-", "tab:red"),
        "longrope": ("--", "tab:purple"),
        "llama3": ("-.", "tab:brown"),
    }
    for name, (inv_freq, label) in variants.items():
        style, color = styles[name]
        width = 2.6 if name == "default" else 1.7
        ax.plot(pair, inv_freq, style, label=label, linewidth=width, color=color)
        ratio_ax.plot(pair, inv_freq / default, style, label=label, linewidth=width, color=color)
    wavelength_l0 = 2 * math.pi / ROPE_ORIGINAL
    ax.axhline(wavelength_l0, color="grey", linewidth=0.8)
    ax.annotate(
        f"one turn per original context (L0 = {ROPE_ORIGINAL})",
        (0, wavelength_l0),
        xytext=(2, 4),
        textcoords="offset points",
        fontsize=8,
        color="dimgrey",
    )
    ax.set_yscale("log")
    ax.set_xlabel("dimension pair i (d = 128)")
    ax.set_ylabel("inverse frequency w_i (rad / position)")
    ax.set_title(f"RoPE inverse frequency per pair (base {ROPE_BASE:g}, L0 = {ROPE_ORIGINAL})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ratio_ax.set_yscale("log")
    ticks = [1.0 / 2**k for k in range(int(math.log2(ROPE_FACTOR)) + 1)]
    ratio_ax.set_yticks(ticks, ["1" if t == 1 else f"1/{round(1 / t)}" for t in ticks])
    ratio_ax.minorticks_off()
    ratio_ax.set_xlabel("dimension pair i (d = 128)")
    ratio_ax.set_ylabel("w_i / w_i(default)")
    ratio_ax.set_title(f"Relative to default: 1 = extrapolate, 1/{ROPE_FACTOR:g} = interpolate")
    ratio_ax.axhline(1.0 / ROPE_FACTOR, color="grey", linewidth=0.8)
    ratio_ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


# -- RoPE table precision -------------------------------------------------------------------


def angle_errors(
    dim: int = ROPE_DIM, base: float = ROPE_BASE, top: int = 2**21, bins: int = 64, window: int = 64
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Largest cos/sin error (over the pairs and ``window`` consecutive positions from each of
    ``bins`` log-spaced starts up to ``top``) of float32-computed tables (``w`` and ``p * w`` in
    float32, as olm and Hugging Face compute them) and of olm_xp's float32 tables, against the
    float64 values. Returns (starts, float32 errors, olm_xp errors)."""
    starts = np.unique(np.geomspace(1, top - window, bins).astype(np.int64))
    positions = (starts[:, None] + np.arange(window)).reshape(-1)
    inv_freq64 = base ** -(np.arange(0, dim, 2, dtype=np.float64) / dim)
    exact = positions.astype(np.float64)[:, None] * inv_freq64
    exact_cos, exact_sin = np.cos(exact), np.sin(exact)
    # olm / HF: inv_freq = 1 / base ** (arange(0, d, 2).float() / d), then p * w, all in float32
    exponents32 = np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)
    inv_freq32 = np.float32(1.0) / np.power(np.float32(base), exponents32)
    angle32 = positions.astype(np.float32)[:, None] * inv_freq32[None, :]
    naive = np.maximum(
        np.abs(np.cos(angle32).astype(np.float64) - exact_cos),
        np.abs(np.sin(angle32).astype(np.float64) - exact_sin),
    )
    cos, sin = rope_cos_sin(positions, inv_freq64, dtype=np.float32)
    ours = np.maximum(
        np.abs(np.asarray(cos, dtype=np.float64) - exact_cos),
        np.abs(np.asarray(sin, dtype=np.float64) - exact_sin),
    )
    per_start = (len(starts), window * inv_freq64.shape[0])
    return (
        starts,
        naive.reshape(per_start).max(axis=1),
        ours.reshape(per_start).max(axis=1),
    )


def angle_error_figure(plt: Any) -> Any:
    starts, naive, ours = angle_errors()
    fig, ax = plt.subplots(figsize=(8, 5))
    floor = 1e-12  # log axes: an exact entry is drawn at the floor
    ax.loglog(starts, np.maximum(naive, floor), "o-", markersize=3, color="tab:red",
              label="angle p * w computed in float32 (olm, Hugging Face)")  # fmt: skip
    ax.loglog(starts, np.maximum(ours, floor), "s-", markersize=3, color="tab:blue",
              label="olm_xp (float64 angle, rounded once to float32)")  # fmt: skip
    half_ulp = 2.0**-25
    ax.axhline(half_ulp, color="grey", linestyle="--", linewidth=0.9)
    ax.annotate(
        "half a float32 ulp of 1 (2**-25)", (starts[0], half_ulp), xytext=(2, 4),
        textcoords="offset points", fontsize=8, color="dimgrey",
    )  # fmt: skip
    ax.set_xlabel("position p (first of the 64)")
    ax.set_ylabel("max |cos/sin error| vs float64 (~ angle error, rad)")
    ax.set_title(
        f"RoPE float32 cos/sin tables up to position 2**21 (d = {ROPE_DIM}, base {ROPE_BASE:g})"
        "\neach point: the largest error over 64 consecutive positions and all pairs",
        fontsize=11,
    )
    ax.set_ylim(1e-9, 10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9, loc="upper left")
    return fig


# -- ALiBi ----------------------------------------------------------------------------------


def alibi_figure(plt: Any, heads: int = 12, keys: int = 48) -> Any:
    slopes = alibi_slope_values(heads)
    fig, (ax, mat_ax) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(1.2, 1))
    distance = np.arange(keys)
    cmap = plt.get_cmap("viridis")
    for h, m in enumerate(slopes):
        ax.plot(distance, -m * distance, color=cmap(h / max(heads - 1, 1)),
                label=f"head {h}: m = 2^{math.log2(m):g}")  # fmt: skip
    ax.set_xlabel("distance to the key, i - j (tokens)")
    ax.set_ylabel("bias added to the attention score")
    ax.set_title(f"ALiBi bias per head ({heads} heads: 8 geometric slopes, then 4 interleaved)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    bias = np.asarray(alibi_bias(keys, keys, heads, causal=True, dtype=np.float64))[0, 0]
    masked = np.ma.masked_invalid(bias)
    cmap_m = plt.get_cmap("magma").with_extremes(bad="lightgrey")
    image = mat_ax.imshow(masked, cmap=cmap_m, interpolation="nearest")
    mat_ax.set_xlabel("key position j")
    mat_ax.set_ylabel("query position i")
    mat_ax.set_title(f"Causal bias of head 0 (m = {slopes[0]:g}); grey: -inf (future keys)")
    fig.colorbar(image, ax=mat_ax, label="bias")
    fig.tight_layout()
    return fig


# -- compare heatmap ------------------------------------------------------------------------


def compare_figure(plt: Any, rows: Sequence[Mapping[str, Any]]) -> Any:
    """Schemes (rows) x backend/device/dtype (columns), coloured by error / tolerance."""
    targets = list(dict.fromkeys((r["backend"], r["device"], r["dtype"]) for r in rows))
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    ratio = np.full((len(schemes), len(targets)), np.nan)
    errors = np.full(ratio.shape, np.nan)
    broken = np.zeros(ratio.shape, dtype=bool)
    for r in rows:
        i, j = schemes.index(r["scheme"]), targets.index((r["backend"], r["device"], r["dtype"]))
        if r["max_error_eps"] is None:
            broken[i, j] = True
        else:
            errors[i, j] = r["max_error_eps"]
            ratio[i, j] = r["max_error_eps"] / r["tolerance_eps"]
    width = min(max(6.5, 3.0 + 0.55 * len(targets)), 30.0)
    height = min(max(3.0, 1.2 + 0.24 * len(schemes)), 40.0)
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("viridis").with_extremes(over="red", bad="white")
    image = ax.imshow(np.ma.masked_invalid(ratio), cmap=cmap, vmin=0.0, vmax=1.0,
                      aspect="auto", interpolation="nearest")  # fmt: skip
    for i, j in zip(*np.nonzero(broken), strict=True):
        ax.text(j, i, "error", ha="center", va="center", fontsize=6, color="red")
    if len(targets) <= 24:
        for i in range(len(schemes)):
            for j in range(len(targets)):
                if np.isfinite(errors[i, j]):
                    light = ratio[i, j] > 0.6 and ratio[i, j] <= 1.0
                    ax.text(j, i, f"{errors[i, j]:.2g}", ha="center", va="center", fontsize=6,
                            color="black" if light else "white")  # fmt: skip
    ax.set_xticks(range(len(targets)))
    ax.set_xticklabels([" ".join(t) for t in targets], fontsize=7, rotation=40, ha="right",
                       rotation_mode="anchor")  # fmt: skip
    ax.set_yticks(range(len(schemes)))
    ax.set_yticklabels(schemes, fontsize=7)
    ax.set_xlabel("backend / device / dtype")
    ax.set_ylabel("scheme")
    failed = int(np.sum(ratio > 1.0) + np.sum(broken))
    ax.set_title(
        f"olm-xp compare: error / tolerance per scheme and backend ({len(rows)} results, "
        f"{failed} failed)\ncell text: error in eps of the dtype; red: over the tolerance",
        fontsize=10,
    )
    fig.colorbar(image, ax=ax, extend="max", extendfrac=0.03, shrink=0.6, pad=0.02,
                 label="max error / tolerance (1 = the promise; red: over it)")  # fmt: skip
    return fig


def write_figures(out: Path, compare_rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write every figure of :data:`FIGURES` into ``out``; return their paths."""
    plt = require_matplotlib()
    written = [
        _save(sinusoidal_figure(plt), out / FIGURES[0]),
        _save(rope_frequencies_figure(plt), out / FIGURES[1]),
        _save(angle_error_figure(plt), out / FIGURES[2]),
        _save(alibi_figure(plt), out / FIGURES[3]),
    ]
    if compare_rows:
        written.append(_save(compare_figure(plt, compare_rows), out / FIGURES[4]))
    return written
