"""olm_xp against native code and the memory roofline: ``python benchmarks/run.py``.

Writes ``bench.json`` (every sample), ``bench.md`` (the tables and the targets) and
``bench.png`` (a chart) into ``--out`` (default ``benchmarks/results``). ``nox -s bench`` runs
it; ``--quick`` runs small shapes and few rounds (well under a minute: CI can afford it).

Each backend's comparisons run in a child process of their own (torch's OpenMP threads and
XLA's thread pool do not compete, and memory starts clean); the memory measurements run one
child per case (``memory.py``). With ``--device cuda`` the torch and JAX rows run on the GPU
(synchronised), NumPy rows stay on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HEAPREUSE = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def _child(backend: str, args: argparse.Namespace, out: Path) -> None:
    """Run every requested comparison of one backend in this process."""
    import suites

    s = suites.Settings(
        rounds=args.rounds or (3 if args.quick else 13),
        tiny_rounds=args.rounds or (5 if args.quick else 25),
        compile=not args.no_compile and not args.quick,
        device=args.device,
        quick=args.quick,
        sample_s=0.002 if args.quick else 0.01,
        long_rounds=args.rounds or (3 if args.quick else 9),
    )
    if backend == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(0)
    shapes = suites.QUICK_SHAPES if args.quick else suites.FULL_SHAPES
    wanted = args.shapes.split(",") if args.shapes else list(shapes)
    dtypes = [d for d in args.dtypes.split(",") if backend != "numpy" or d == "float32"]
    sections = args.sections.split(",")
    results = []

    def log(result: Any) -> None:
        results.append({**result.to_json(), "max_error": dict(suites.ERRORS)})
        suites.ERRORS.clear()
        print(
            f"  {result.title}: "
            + ", ".join(
                f"{n} {1e3 * result.median(n):.3f} ms" for n in result.times if result.times[n]
            )
            + (f"  errors: {result.errors}" if result.errors else ""),
            flush=True,
        )

    if "rope" in sections:
        for shape_name in wanted:
            for dtype in dtypes:
                for interleaved in (False, True):
                    shape = shapes[shape_name]
                    if backend == "torch":
                        log(suites.rope_torch(shape_name, shape, dtype, interleaved, s))
                    elif backend == "jax":
                        log(suites.rope_jax(shape_name, shape, dtype, interleaved, s))
                    else:
                        log(suites.rope_numpy(shape_name, shape, interleaved, s))
    if "add" in sections:
        shape = suites.ADD_SHAPE["quick" if args.quick else "full"]
        for kind in ("sinusoidal", "absolute"):
            for with_positions in (False, True):
                for dtype in dtypes:
                    log(suites.add_group(backend, kind, with_positions, dtype, shape, s))
    if "alibi" in sections:
        log(suites.alibi_group(backend, s))
    out.write_text(json.dumps(results))


def _spawn(job: str, args: argparse.Namespace, env: dict[str, str], extra: list[str]) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "out.json"
        cmd = [sys.executable, str(HERE / "run.py"), "--child", job, "--child-out", str(target)]
        cmd += extra
        print(f"[{job}]{' ' + ' '.join(extra) if extra else ''}", flush=True)
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode != 0 or not target.exists():
            print(f"  {job} failed (exit {proc.returncode})", flush=True)
            return []
        return json.loads(target.read_text())


def _forward_args(args: argparse.Namespace) -> list[str]:
    extra = ["--device", args.device, "--dtypes", args.dtypes, "--sections", args.sections]
    if args.quick:
        extra.append("--quick")
    if args.no_compile:
        extra.append("--no-compile")
    if args.rounds:
        extra += ["--rounds", str(args.rounds)]
    if args.shapes:
        extra += ["--shapes", args.shapes]
    return extra


def _memory_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    import suites

    shape = (suites.QUICK_SHAPES if args.quick else suites.FULL_SHAPES)["prefill"]
    cases = []
    for backend in args.backends.split(","):
        dtypes = ["float32"] if backend == "numpy" else args.dtypes.split(",")
        for dtype in dtypes:
            olm = backend == "torch" and dtype == "float32"
            impls = ["olm_xp", "native", *(["olm"] if olm else [])]
            for layout in ("half-split", "interleaved"):
                for impl in impls:
                    cases.append(
                        {
                            "op": "rope",
                            "backend": backend,
                            "impl": impl,
                            "layout": layout,
                            "dtype": dtype,
                            "shape": list(shape),
                            "device": "cpu" if backend == "numpy" else args.device,
                        }
                    )
        alibi = suites.ALIBI["quick" if args.quick else "full"]
        for impl in ("olm_xp", "native"):
            cases.append(
                {
                    "op": "alibi",
                    "backend": backend,
                    "impl": impl,
                    "layout": "",
                    "dtype": "float32",
                    "shape": list(alibi),
                    "device": "cpu" if backend == "numpy" else args.device,
                }
            )
    if args.quick:  # one RoPE and one ALiBi case: the method works, in seconds
        rope = [c for c in cases if c["op"] == "rope" and c["impl"] == "olm_xp"]
        return rope[:1] + [c for c in cases if c["op"] == "alibi" and c["impl"] == "olm_xp"][:1]
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (torch and JAX rows)")
    parser.add_argument("--backends", default="torch,jax,numpy")
    parser.add_argument("--sections", default="rope,add,alibi,memory,heapreuse")
    parser.add_argument("--shapes", default="", help="RoPE shapes (prefill,decode,long)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=0, help="override the rounds per group")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args, args.child_out)
        return 0

    import memory
    import report

    start = time.perf_counter()
    sections = args.sections.split(",")
    if args.quick:
        sections = [s for s in sections if s != "heapreuse"]
    env = dict(os.environ)
    groups: list[dict[str, Any]] = []
    if {"rope", "add", "alibi"} & set(sections):
        for backend in args.backends.split(","):
            for group in _spawn(backend, args, env, _forward_args(args)):
                group["params"]["malloc"] = "default"
                groups.append(group)
    if "heapreuse" in sections and "torch" in args.backends and args.device == "cpu":
        # The same torch prefill rows with glibc's heap reused (no page fault per call): the
        # allocator configuration where "copy bandwidth" means what it says (performance.md).
        extra = [*_forward_args(args), "--shapes", "prefill", "--sections", "rope"]
        extra += ["--dtypes", "float32"]
        for group in _spawn("torch", args, {**env, "GLIBC_TUNABLES": HEAPREUSE}, extra):
            group["params"]["malloc"] = "heapreuse"
            group["title"] += " [heapreuse]"
            groups.append(group)
    memory_results = []
    if "memory" in sections:
        print("[memory]", flush=True)
        for case in _memory_cases(args):
            result = memory.run_case(case)
            memory_results.append(result)
            ratio = result.get("peak_extra_bytes", float("nan")) / result.get("input_bytes", 1)
            print(
                f"  {case['op']} {case['backend']} {case['impl']} {case['dtype']} "
                f"{case['layout']}: {ratio:.2f}x {result.get('error', '')}",
                flush=True,
            )
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": report.machine(),
        "settings": {
            "quick": args.quick,
            "device": args.device,
            "sections": sections,
            "elapsed_s": elapsed,
        },
        "groups": groups,
        "memory": memory_results,
    }
    data["targets"] = report.targets(data)
    (args.out / "bench.json").write_text(json.dumps(data, indent=1, default=str))
    (args.out / "bench.md").write_text(report.markdown(data))
    report.chart(data, args.out / "bench.png")
    print(f"wrote {args.out}/bench.json, bench.md, bench.png in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
