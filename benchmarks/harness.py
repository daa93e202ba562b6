"""Timing harness: every candidate of a comparison in one process, interleaved, medians.

Method (performance.md): each round runs every candidate once, in an order shuffled per round;
a sample is one call for big shapes, or a batch of back-to-back calls lasting about
``sample_s`` for tiny ones (calibrated in the warm-up); the garbage collector is off while
timing; each sample ends with a device synchronisation. Times are medians over rounds, and
ratios are **medians of per-round ratios**, so drift and noisy neighbours hit both sides of a
ratio equally.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Sync = Callable[[Any], None]


def no_sync(_: Any) -> None:
    """NumPy (and torch CPU) results are ready when the call returns."""


def jax_sync(out: Any) -> None:
    """Wait for JAX's asynchronous dispatch."""
    import jax

    jax.block_until_ready(out)


def torch_sync_for(device: str) -> Sync:
    """``torch.cuda.synchronize`` on CUDA devices, nothing on the CPU."""
    if not device.startswith("cuda"):
        return no_sync
    import torch

    def sync(_: Any) -> None:
        torch.cuda.synchronize()

    return sync


@dataclass
class Candidate:
    """One implementation in a comparison: ``fn()`` runs one call and returns its result."""

    name: str
    fn: Callable[[], Any]
    sync: Sync = no_sync
    kind: str = ""  # "olm_xp", "native", "olm", "compile", "roofline"


@dataclass
class GroupResult:
    """Medians (seconds per call) and per-round times of every candidate of one comparison."""

    title: str
    params: dict[str, Any]
    rounds: int
    inner: dict[str, int]
    times: dict[str, list[float]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of ``t(name) / t(reference)`` (same round)."""
        pairs = zip(self.times[name], self.times[reference], strict=True)
        return statistics.median(a / b for a, b in pairs)

    def has(self, name: str) -> bool:
        return name in self.times and bool(self.times[name])

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "params": self.params,
            "rounds": self.rounds,
            "inner": self.inner,
            "median_s": {n: self.median(n) for n in self.times if self.times[n]},
            "times_s": self.times,
            "kinds": self.kinds,
            "errors": self.errors,
        }


def _time_once(candidate: Candidate, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        out = candidate.fn()
        candidate.sync(out)
        del out
    return (time.perf_counter() - start) / inner


def run_group(
    title: str,
    candidates: list[Candidate],
    *,
    rounds: int,
    warmup: int = 2,
    sample_s: float = 0.01,
    params: dict[str, Any] | None = None,
    seed: int = 0,
) -> GroupResult:
    """Time ``candidates`` against each other (see the module docstring).

    A candidate that raises during the warm-up is reported in ``errors`` and left out.
    """
    result = GroupResult(title=title, params=dict(params or {}), rounds=rounds, inner={})
    live: list[Candidate] = []
    for candidate in candidates:
        try:
            for _ in range(warmup):
                one = _time_once(candidate, 1)
        except Exception as err:
            result.errors[candidate.name] = f"{type(err).__name__}: {err}"[:300]
            continue
        # Tiny calls: batch them so one sample lasts about sample_s.
        result.inner[candidate.name] = max(1, min(10_000, int(sample_s / max(one, 1e-9))))
        result.times[candidate.name] = []
        result.kinds[candidate.name] = candidate.kind
        live.append(candidate)
    rng = random.Random(seed)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            order = live[:]
            rng.shuffle(order)
            for candidate in order:
                inner = result.inner[candidate.name]
                result.times[candidate.name].append(_time_once(candidate, inner))
    finally:
        if enabled:
            gc.enable()
    return result
