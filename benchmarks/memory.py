"""Peak extra memory of one call, measured in a fresh process per case.

Method
------
* **CPU** (torch, JAX, NumPy alike): the process's resident-set high-water mark. The child runs
  with ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536``, which fixes glibc's mmap threshold
  at 64 KiB: every block of 64 KiB or more is mapped on allocation and unmapped on free, so the
  resident set follows the live allocations (no heap caching hides a temporary). The child
  makes the input, runs one warm-up call (tables, compilation), frees its result, resets the
  high-water mark (``echo 5 > /proc/self/clear_refs``), reads ``VmRSS``, makes one call and reads
  ``VmHWM``. Peak extra = ``VmHWM - VmRSS`` before the call: the output plus every temporary
  alive at the worst moment. NumPy is cross-checked with ``tracemalloc`` (NumPy reports its
  allocations to it).
* **CUDA**: ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated`` for torch, the
  device's ``memory_stats()["peak_bytes_in_use"]`` for JAX (both relative to before the call).

Run as ``python memory.py '<json case>'``; prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rope_callable(case: dict[str, Any]) -> tuple[Any, int, Any]:
    """(call, input bytes, sync) for a RoPE case."""
    import natives

    from olm_xp.nn.embeddings.positional import RotaryPositionalEmbedding

    shape = tuple(case["shape"])
    interleaved = case["layout"] == "interleaved"
    backend, impl, dtype_name = case["backend"], case["impl"], case["dtype"]
    d, seq = shape[-1], shape[1]
    rng = np.random.default_rng(0)
    host = rng.standard_normal(shape).astype(np.float32)
    cos_w, sin_w = natives.widen(*natives.host_tables(np.arange(seq), d), interleaved)
    module = RotaryPositionalEmbedding(d, seq, interleaved=interleaved)
    if backend == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        dtype = getattr(torch, dtype_name)
        x = torch.asarray(host, device=case["device"]).to(dtype)
        c = torch.asarray(cos_w[:, None, :], device=case["device"]).to(dtype)
        s = torch.asarray(sin_w[:, None, :], device=case["device"]).to(dtype)
        native = natives.torch_rope(interleaved)
        nbytes = x.numel() * x.element_size()
        sync = (lambda: torch.cuda.synchronize()) if case["device"].startswith("cuda") else None
        if impl == "olm":
            from olm.nn.embeddings.positional import RotaryPositionalEmbedding as OlmRope

            olm_module = OlmRope(d, seq).to(case["device"])
            return (lambda: olm_module(x)), nbytes, sync
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        dtype = getattr(jnp, dtype_name)
        x = jnp.asarray(host, dtype=dtype)
        c = jnp.asarray(cos_w[:, None, :], dtype=dtype)
        s = jnp.asarray(sin_w[:, None, :], dtype=dtype)
        native = jax.jit(natives.jax_rope(interleaved))
        module_call = jax.jit(lambda x: module(x))
        nbytes = x.size * x.dtype.itemsize

        def sync() -> None:
            pass

        if impl == "olm_xp":
            return (lambda: jax.block_until_ready(module_call(x))), nbytes, sync
        return (lambda: jax.block_until_ready(native(x, c, s))), nbytes, sync
    else:
        x = host
        c, s = cos_w[:, None, :].astype(np.float32), sin_w[:, None, :].astype(np.float32)
        native = natives.numpy_rope(interleaved)
        nbytes = x.nbytes
        sync = None
    if impl == "olm_xp":
        return (lambda: module(x)), nbytes, sync
    return (lambda: native(x, c, s)), nbytes, sync


def _alibi_callable(case: dict[str, Any]) -> tuple[Any, int, Any]:
    import natives

    from olm_xp import alibi_bias

    heads, q, k = case["shape"]
    backend, impl = case["backend"], case["impl"]
    nbytes = heads * q * k * 4
    if backend == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        if impl == "olm_xp":
            return (lambda: alibi_bias(q, k, heads, xp=torch, device=case["device"])), nbytes, None
        return (lambda: natives.torch_alibi(heads, q, k, case["device"])), nbytes, None
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        if impl == "olm_xp":
            f = jax.jit(lambda: alibi_bias(q, k, heads, xp=jnp))
        else:
            f = jax.jit(lambda: natives.jax_alibi(heads, q, k))
        return (lambda: jax.block_until_ready(f())), nbytes, None
    if impl == "olm_xp":
        return (lambda: alibi_bias(q, k, heads, xp=np, dtype=np.float32)), nbytes, None
    return (lambda: natives.numpy_alibi(heads, q, k)), nbytes, None


def measure(case: dict[str, Any]) -> dict[str, Any]:
    """Run in the child: peak extra bytes of one call of ``case``."""
    sys.path.insert(0, str(HERE))
    make = _alibi_callable if case["op"] == "alibi" else _rope_callable
    call, nbytes, sync = make(case)
    out = call()  # warm-up: tables, compilation
    del out
    gc.collect()
    result: dict[str, Any] = {**case, "input_bytes": nbytes}
    if case.get("device", "cpu").startswith("cuda"):
        if case["backend"] == "torch":
            import torch

            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = call()
            torch.cuda.synchronize()
            result["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - before
        else:
            import jax

            device = jax.devices()[0]
            before = device.memory_stats()["bytes_in_use"]
            out = call()
            result["peak_extra_bytes"] = device.memory_stats()["peak_bytes_in_use"] - before
        result["method"] = "allocator peak"
        return result
    _reset_peak()
    before = _status("VmRSS")
    out = call()
    if sync is not None:
        sync()
    result["peak_extra_bytes"] = _status("VmHWM") - before
    result["method"] = "RSS high-water, mmap_threshold=64KiB"
    del out
    gc.collect()
    if case["backend"] == "numpy":
        tracemalloc.start()
        call()
        result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result


def run_case(case: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Measure ``case`` in a fresh child process (see the module docstring)."""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(case)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
