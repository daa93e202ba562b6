"""The comparisons: RoPE, sinusoidal/absolute add and ALiBi, per backend and device.

Each ``*_group`` function builds the inputs of one comparison, its candidates (olm_xp, olm,
the native idiom, ``torch.compile``/``jax.jit`` of them, the copy roofline) and times them with
:func:`harness.run_group`. Every candidate is checked against olm_xp's result before it is
timed (a wrong candidate raises, and is reported instead of timed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import natives
import numpy as np
from harness import Candidate, GroupResult, jax_sync, no_sync, run_group, torch_sync_for

# Shapes: (batch, seq, heads, head_dim) for RoPE, (batch, seq, embed_dim) for the adds.
FULL_SHAPES = {
    "prefill": (4, 2048, 16, 128),
    "decode": (1, 1, 32, 128),
    "long": (1, 32768, 8, 128),
}
QUICK_SHAPES = {
    "prefill": (2, 256, 4, 64),
    "decode": (1, 1, 32, 128),
    "long": (1, 2048, 4, 64),
}
ADD_SHAPE = {"full": (8, 2048, 1024), "quick": (2, 256, 256)}
ALIBI = {"full": (32, 2048, 2048), "quick": (8, 256, 256)}
DECODE_POSITION = 1000


@dataclass
class Settings:
    rounds: int = 15
    tiny_rounds: int = 30
    compile: bool = True
    device: str = "cpu"
    quick: bool = False
    sample_s: float = 0.01
    long_rounds: int = 9


def _tol(dtype_name: str) -> float:
    return 2e-2 if dtype_name == "bfloat16" else 1e-4


ERRORS: dict[str, float] = {}
"""Max relative error of each checked candidate (by title and name), reported in the JSON."""


def _check(name: str, got: Any, want: np.ndarray, dtype_name: str, tol: float = 0.0) -> None:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape}, expected {want.shape}")
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max()) / scale
    ERRORS[name] = err
    tol = tol or _tol(dtype_name)
    if not err <= tol:
        raise AssertionError(f"{name}: max error {err:.3g} > {tol}")


def _rope_reference(x: np.ndarray, positions: np.ndarray, interleaved: bool) -> np.ndarray:
    cos, sin = natives.host_tables(positions, x.shape[-1])
    cos_w, sin_w = natives.widen(cos, sin, interleaved)
    return natives.numpy_rope(interleaved)(x, cos_w[:, None, :], sin_w[:, None, :])


def _checked(
    name: str, fn: Any, want: np.ndarray, dtype_name: str, to_host: Any, tol: float = 0.0
) -> Any:
    """``fn`` after checking its result once (raises inside the warm-up if it is wrong)."""
    state = {"checked": False}

    def call() -> Any:
        out = fn()
        if not state["checked"]:
            _check(name, to_host(out), want, dtype_name, tol)
            state["checked"] = True
        return out

    return call


# -- RoPE -----------------------------------------------------------------------------------


def rope_torch(
    shape_name: str, shape: tuple[int, ...], dtype_name: str, interleaved: bool, s: Settings
) -> GroupResult:
    import torch
    from olm.nn.embeddings.positional import RotaryPositionalEmbedding as OlmRope

    from olm_xp import apply_rope
    from olm_xp.nn.embeddings.positional import RotaryPositionalEmbedding

    device = s.device
    dtype = getattr(torch, dtype_name)
    sync = torch_sync_for(device)
    batch, seq, _heads, d = shape
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal(shape).astype(np.float32)
    x = torch.asarray(x_host, device=device).to(dtype)
    x_exact = x.float().cpu().numpy().astype(np.float64)
    decode = shape_name == "decode"
    offset = DECODE_POSITION if decode else 0
    positions = np.arange(offset, offset + seq)
    want = _rope_reference(x_exact, positions, interleaved)
    to_host = lambda t: t.detach().float().cpu().numpy()  # noqa: E731

    # olm_xp: the class (cached folded tables), and the pure function with half tables.
    module = RotaryPositionalEmbedding(d, max(2048, offset + seq), interleaved=interleaved)
    cos_h, sin_h = (
        torch.asarray(t, dtype=torch.float32, device=device)
        for t in natives.host_tables(positions, d)
    )
    # Native: HF-style width-d tables in x's dtype, cached for every position (decode).
    rows = np.arange(max(2048, offset + seq))
    cos_all, sin_all = natives.widen(*natives.host_tables(rows, d), interleaved)
    cos_cached = torch.asarray(cos_all, device=device).to(dtype)
    sin_cached = torch.asarray(sin_all, device=device).to(dtype)
    cos_w, sin_w = cos_cached[positions][:, None, :], sin_cached[positions][:, None, :]
    hf = natives.torch_rope(interleaved)
    position_tensor = torch.tensor([[offset]], device=device)

    c: list[Candidate] = []

    def add(name: str, fn: Any, kind: str) -> None:
        c.append(Candidate(name, _checked(name, fn, want, dtype_name, to_host), sync, kind))

    if decode:
        add("olm_xp", lambda: module(x, offset), "olm_xp")
        add(
            "olm_xp apply_rope",
            lambda: apply_rope(x, cos_h, sin_h, interleaved=interleaved),
            "olm_xp",
        )
        step = natives.torch_decode(interleaved)
        add("native HF", lambda: step(x, cos_cached, sin_cached, position_tensor), "native")
    else:
        add("olm_xp", lambda: module(x), "olm_xp")
        add(
            "olm_xp apply_rope",
            lambda: apply_rope(x, cos_h, sin_h, interleaved=interleaved),
            "olm_xp",
        )
        add("native HF", lambda: hf(x, cos_w, sin_w), "native")
    # olm has only the interleaved layout: its time is the reference for both layouts.
    olm_module = OlmRope(d, max(2048, offset + seq)).to(device)
    olm_positions = position_tensor.expand(batch, seq) if decode else None
    olm_want = _rope_reference(x_exact, positions, True)
    c.append(
        Candidate(
            "olm",
            # olm's float32 angles are 1.5e-3 off at positions near 32768 (README, Precision)
            _checked(
                "olm", lambda: olm_module(x, olm_positions), olm_want, dtype_name, to_host, 1e-2
            ),
            sync,
            "olm",
        )
    )
    # torch.compile rows where they answer a question (the roofline target: float32 prefill
    # and long); a decode step under torch.compile pays ~17 us of guards (performance.md).
    compile_here = shape_name in ("prefill", "long") and dtype_name == "float32"
    if s.compile and compile_here:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = 256
        compiled_hf = torch.compile(hf, dynamic=False)
        add("compile native HF", lambda: compiled_hf(x, cos_w, sin_w), "compile")
        compiled_fn = torch.compile(
            lambda x, c, s: apply_rope(x, c, s, interleaved=interleaved), dynamic=False
        )
        add("compile olm_xp apply_rope", lambda: compiled_fn(x, cos_h, sin_h), "compile")
        if shape_name == "prefill" and dtype_name == "float32":
            compiled_module = torch.compile(module.forward, dynamic=False)
            add("compile olm_xp", lambda: compiled_module(x), "compile")
    buffer = torch.empty_like(x)
    c.append(Candidate("copy", lambda: x.clone(), sync, "roofline"))
    c.append(Candidate("copy prealloc", lambda: buffer.copy_(x), sync, "roofline"))
    params = {
        "op": "rope",
        "backend": "torch",
        "device": device,
        "shape_name": shape_name,
        "shape": shape,
        "dtype": dtype_name,
        "layout": "interleaved" if interleaved else "half-split",
        "bytes": 2 * x.numel() * x.element_size(),
    }
    rounds = s.tiny_rounds if decode else s.rounds if shape_name != "long" else s.long_rounds
    return run_group(_title(params), c, rounds=rounds, params=params, sample_s=s.sample_s)


def rope_jax(
    shape_name: str, shape: tuple[int, ...], dtype_name: str, interleaved: bool, s: Settings
) -> GroupResult:
    import jax
    import jax.numpy as jnp

    from olm_xp import apply_rope
    from olm_xp.nn.embeddings.positional import RotaryPositionalEmbedding

    device = jax.devices("gpu" if s.device.startswith("cuda") else "cpu")[0]
    dtype = getattr(jnp, dtype_name)
    _batch, seq, _heads, d = shape
    rng = np.random.default_rng(0)
    x = jax.device_put(jnp.asarray(rng.standard_normal(shape), dtype=dtype), device)
    x_exact = np.asarray(x.astype(jnp.float32), dtype=np.float64)
    decode = shape_name == "decode"
    offset = DECODE_POSITION if decode else 0
    positions = np.arange(offset, offset + seq)
    want = _rope_reference(x_exact, positions, interleaved)
    to_host = lambda t: np.asarray(t.astype(jnp.float32))  # noqa: E731

    module = RotaryPositionalEmbedding(d, max(2048, offset + seq), interleaved=interleaved)
    cos_h, sin_h = (
        jax.device_put(jnp.asarray(t, dtype=jnp.float32), device)
        for t in natives.host_tables(positions, d)
    )
    rows = np.arange(max(2048, offset + seq))
    cos_all, sin_all = natives.widen(*natives.host_tables(rows, d), interleaved)
    cos_cached = jax.device_put(jnp.asarray(cos_all, dtype=dtype), device)
    sin_cached = jax.device_put(jnp.asarray(sin_all, dtype=dtype), device)
    cos_w, sin_w = cos_cached[positions][:, None, :], sin_cached[positions][:, None, :]
    hf = jax.jit(natives.jax_rope(interleaved))
    fn = jax.jit(lambda x, c, s: apply_rope(x, c, s, interleaved=interleaved))

    c: list[Candidate] = []

    def add(name: str, f: Any, kind: str) -> None:
        c.append(Candidate(name, _checked(name, f, want, dtype_name, to_host), jax_sync, kind))

    if decode:
        position = jax.device_put(jnp.asarray(offset), device)
        position_2d = jax.device_put(jnp.asarray([[offset]]), device)
        jit_module = jax.jit(lambda x, t: module(x, t))
        add("olm_xp", lambda: jit_module(x, position), "olm_xp")
        step = jax.jit(natives.jax_decode(interleaved))
        add("native HF", lambda: step(x, cos_cached, sin_cached, position_2d), "native")
    else:
        jit_module = jax.jit(lambda x: module(x))
        add("olm_xp", lambda: jit_module(x), "olm_xp")
        add("native HF", lambda: hf(x, cos_w, sin_w), "native")
    add("olm_xp apply_rope", lambda: fn(x, cos_h, sin_h), "olm_xp")
    copy = jax.jit(jnp.copy)
    c.append(Candidate("copy", lambda: copy(x), jax_sync, "roofline"))
    if device.platform == "cpu":  # the machine's copy of the same bytes, preallocated
        host = np.asarray(x)
        buffer = np.empty_like(host)
        c.append(Candidate("copy prealloc", lambda: np.copyto(buffer, host), no_sync, "roofline"))
    params = {
        "op": "rope",
        "backend": "jax",
        "device": str(device),
        "shape_name": shape_name,
        "shape": shape,
        "dtype": dtype_name,
        "layout": "interleaved" if interleaved else "half-split",
        "bytes": 2 * x.size * x.dtype.itemsize,
    }
    rounds = s.tiny_rounds if decode else s.rounds if shape_name != "long" else s.long_rounds
    return run_group(_title(params), c, rounds=rounds, params=params, sample_s=s.sample_s)


def rope_numpy(
    shape_name: str, shape: tuple[int, ...], interleaved: bool, s: Settings
) -> GroupResult:
    from olm_xp import apply_rope
    from olm_xp.nn.embeddings.positional import RotaryPositionalEmbedding

    _batch, seq, _heads, d = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    decode = shape_name == "decode"
    offset = DECODE_POSITION if decode else 0
    positions = np.arange(offset, offset + seq)
    want = _rope_reference(x.astype(np.float64), positions, interleaved)
    module = RotaryPositionalEmbedding(d, max(2048, offset + seq), interleaved=interleaved)
    cos_h, sin_h = (t.astype(np.float32) for t in natives.host_tables(positions, d))
    rows = np.arange(max(2048, offset + seq))
    cos_all, sin_all = (
        t.astype(np.float32) for t in natives.widen(*natives.host_tables(rows, d), interleaved)
    )
    cos_w, sin_w = cos_all[positions][:, None, :], sin_all[positions][:, None, :]
    hf = natives.numpy_rope(interleaved)

    c: list[Candidate] = []

    def add(name: str, f: Any, kind: str) -> None:
        c.append(Candidate(name, _checked(name, f, want, "float32", np.asarray), no_sync, kind))

    if decode:
        step = natives.numpy_decode(interleaved)
        position_2d = np.asarray([[offset]])
        add("olm_xp", lambda: module(x, offset), "olm_xp")
        add("native HF", lambda: step(x, cos_all, sin_all, position_2d), "native")
    else:
        add("olm_xp", lambda: module(x), "olm_xp")
        add("native HF", lambda: hf(x, cos_w, sin_w), "native")
    add("olm_xp apply_rope", lambda: apply_rope(x, cos_h, sin_h, interleaved=interleaved), "olm_xp")
    buffer = np.empty_like(x)
    c.append(Candidate("copy", lambda: x.copy(), no_sync, "roofline"))
    c.append(Candidate("copy prealloc", lambda: np.copyto(buffer, x), no_sync, "roofline"))
    params = {
        "op": "rope",
        "backend": "numpy",
        "device": "cpu",
        "shape_name": shape_name,
        "shape": shape,
        "dtype": "float32",
        "layout": "interleaved" if interleaved else "half-split",
        "bytes": 2 * x.nbytes,
    }
    rounds = s.tiny_rounds if decode else s.rounds if shape_name != "long" else s.long_rounds
    return run_group(_title(params), c, rounds=rounds, params=params, sample_s=s.sample_s)


# -- sinusoidal / learned absolute add ------------------------------------------------------------


def add_group(
    backend: str,
    kind: str,
    with_positions: bool,
    dtype_name: str,
    shape: tuple[int, int, int],
    s: Settings,
) -> GroupResult:
    """``x + pe`` for the sinusoidal or learned table, with or without explicit positions."""
    from olm_xp.nn.embeddings.positional import (
        AbsolutePositionalEmbedding,
        SinusoidalPositionalEmbedding,
    )

    batch, seq, dim = shape
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal(shape).astype(np.float32)
    pos_host = np.stack([rng.permutation(seq) for _ in range(batch)])  # (batch, seq)
    max_len = 2 * seq
    weight_host = rng.standard_normal((max_len, dim)).astype(np.float32)
    if kind == "sinusoidal":
        from olm_xp import sinusoidal_table

        table_host = np.asarray(sinusoidal_table(max_len, dim, dtype=np.float32))
    else:
        table_host = weight_host
    c: list[Candidate] = []
    if backend == "torch":
        import torch
        import torch.nn.functional as F

        device = s.device
        dtype = getattr(torch, dtype_name)
        sync = torch_sync_for(device)
        x = torch.asarray(x_host, device=device).to(dtype)
        pos = torch.asarray(pos_host, device=device)
        table = torch.asarray(table_host, device=device).to(dtype)  # a bf16 model's buffer
        to_host = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        x_exact = x.float().cpu().numpy().astype(np.float64)
        if kind == "sinusoidal":
            module = SinusoidalPositionalEmbedding(dim).eval()
            native = (lambda: x + table[pos]) if with_positions else (lambda: x + table[:seq])
        else:
            module = AbsolutePositionalEmbedding(
                max_len, dim, xp=torch, device=device, dtype=dtype
            ).eval()
            module.load_state_dict({"pos_embedding.weight": torch.asarray(weight_host)})
            native = (
                (lambda: x + F.embedding(pos, table))
                if with_positions
                else (lambda: x + table[:seq])
            )
        olm_xp_fn = (lambda: module(x, pos)) if with_positions else (lambda: module(x))
        buffer = torch.empty_like(x)
        copies = [
            Candidate("copy", lambda: x.clone(), sync, "roofline"),
            Candidate("copy prealloc", lambda: buffer.copy_(x), sync, "roofline"),
        ]
        olm = _olm_add(kind, dim, max_len, weight_host, device, x, pos if with_positions else None)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        sync = jax_sync
        dtype = getattr(jnp, dtype_name)
        x = jnp.asarray(x_host, dtype=dtype)
        pos = jnp.asarray(pos_host)
        table = jnp.asarray(table_host, dtype=dtype)
        to_host = lambda t: np.asarray(t.astype(jnp.float32))  # noqa: E731
        x_exact = to_host(x).astype(np.float64)
        if kind == "sinusoidal":
            module = SinusoidalPositionalEmbedding(dim).eval()
        else:
            module = AbsolutePositionalEmbedding(max_len, dim, xp=jnp, dtype=dtype).eval()
            module.load_state_dict({"pos_embedding.weight": weight_host})
        if with_positions:
            native_jit = jax.jit(lambda x, p: x + jnp.take(table, p, axis=0))
            native = lambda: native_jit(x, pos)  # noqa: E731
            mod_jit = jax.jit(lambda x, p: module(x, p))
            olm_xp_fn = lambda: mod_jit(x, pos)  # noqa: E731
        else:
            native_jit = jax.jit(lambda x: x + table[:seq])
            native = lambda: native_jit(x)  # noqa: E731
            mod_jit = jax.jit(lambda x: module(x))
            olm_xp_fn = lambda: mod_jit(x)  # noqa: E731
        copy = jax.jit(jnp.copy)
        copies = [Candidate("copy", lambda: copy(x), sync, "roofline")]
        olm = None
    else:
        sync = no_sync
        x = x_host
        pos = pos_host
        table = table_host
        to_host = np.asarray
        x_exact = x.astype(np.float64)
        if kind == "sinusoidal":
            module = SinusoidalPositionalEmbedding(dim).eval()
        else:
            module = AbsolutePositionalEmbedding(max_len, dim, dtype=np.float32).eval()
            module.load_state_dict({"pos_embedding.weight": weight_host})
        native = (lambda: x + table[pos]) if with_positions else (lambda: x + table[:seq])
        olm_xp_fn = (lambda: module(x, pos)) if with_positions else (lambda: module(x))
        buffer = np.empty_like(x)
        copies = [
            Candidate("copy", lambda: x.copy(), sync, "roofline"),
            Candidate("copy prealloc", lambda: np.copyto(buffer, x), sync, "roofline"),
        ]
        olm = None
    rows = table_host[pos_host] if with_positions else table_host[None, :seq]
    want = x_exact + rows.astype(np.float64)
    c.append(
        Candidate(
            "olm_xp", _checked("olm_xp", olm_xp_fn, want, dtype_name, to_host), sync, "olm_xp"
        )
    )
    c.append(
        Candidate("native", _checked("native", native, want, dtype_name, to_host), sync, "native")
    )
    if olm is not None:
        c.append(Candidate("olm", _checked("olm", olm, want, dtype_name, to_host), sync, "olm"))
    c.extend(copies)
    params = {
        "op": kind,
        "backend": backend,
        "device": s.device if backend != "numpy" else "cpu",
        "shape_name": "positions" if with_positions else "no positions",
        "shape": shape,
        "dtype": dtype_name,
        "layout": "",
        "bytes": 2 * int(np.prod(shape)) * (2 if dtype_name == "bfloat16" else 4),
    }
    return run_group(_title(params), c, rounds=s.rounds, params=params, sample_s=s.sample_s)


def _olm_add(
    kind: str, dim: int, max_len: int, weight: np.ndarray, device: str, x: Any, pos: Any
) -> Any:
    import torch
    from olm.nn.embeddings.positional import (
        AbsolutePositionalEmbedding,
        SinusoidalPositionalEmbedding,
    )

    if kind == "sinusoidal":
        module = SinusoidalPositionalEmbedding(dim, max_seq_len=max_len).to(device).eval()
    else:
        module = AbsolutePositionalEmbedding(max_len, dim).to(device).eval()
        module.pos_embedding.weight.data = torch.asarray(weight, device=device)
    module = module.to(x.dtype)  # a bf16 model's buffers are bf16
    return (lambda: module(x, pos)) if pos is not None else (lambda: module(x))


# -- ALiBi -----------------------------------------------------------------------------------------


def alibi_group(backend: str, s: Settings) -> GroupResult:
    from olm_xp import alibi_bias

    heads, q, k = ALIBI["quick" if s.quick else "full"]
    slopes = np.asarray(natives.alibi_slopes(heads), dtype=np.float64)
    distance = np.abs(np.arange(k)[None, :] - np.arange(q)[:, None]).astype(np.float64)
    want = (-slopes[:, None, None] * distance)[None]
    c: list[Candidate] = []
    if backend == "torch":
        import torch

        sync = torch_sync_for(s.device)
        to_host = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        olm_xp_fn = lambda: alibi_bias(q, k, heads, xp=torch, device=s.device)  # noqa: E731
        native = lambda: natives.torch_alibi(heads, q, k, s.device)  # noqa: E731
        from olm.nn.embeddings.positional import ALiBiPositionalBias

        olm_module = ALiBiPositionalBias(heads, max_seq_len=8).to(s.device)
        # olm builds (heads, L, L) in __init__ and slices it; time its build for the same L.
        olm = lambda: olm_module._build_alibi_bias(q, olm_module.slopes)[None]  # noqa: E731
        c.append(
            Candidate("olm (build)", _checked("olm", olm, want, "float32", to_host), sync, "olm")
        )
        copy_src = torch.empty((1, heads, q, k), device=s.device).fill_(1.0)
        c.append(Candidate("copy", lambda: copy_src.clone(), sync, "roofline"))
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        sync = jax_sync
        to_host = np.asarray
        jitted = jax.jit(lambda: alibi_bias(q, k, heads, xp=jnp))
        olm_xp_fn = jitted
        native = jax.jit(lambda: natives.jax_alibi(heads, q, k))
        src = jnp.ones((1, heads, q, k), dtype=jnp.float32)
        copy = jax.jit(jnp.copy)
        c.append(Candidate("copy", lambda: copy(src), sync, "roofline"))
    else:
        sync = no_sync
        to_host = np.asarray
        olm_xp_fn = lambda: alibi_bias(q, k, heads, xp=np, dtype=np.float32)  # noqa: E731
        native = lambda: natives.numpy_alibi(heads, q, k)  # noqa: E731
        src = np.ones((1, heads, q, k), dtype=np.float32)
        c.append(Candidate("copy", lambda: src.copy(), sync, "roofline"))
    c.append(
        Candidate("olm_xp", _checked("olm_xp", olm_xp_fn, want, "float32", to_host), sync, "olm_xp")
    )
    c.append(
        Candidate("native", _checked("native", native, want, "float32", to_host), sync, "native")
    )
    params = {
        "op": "alibi",
        "backend": backend,
        "device": s.device if backend != "numpy" else "cpu",
        "shape_name": f"{heads}x{q}x{k}",
        "shape": (1, heads, q, k),
        "dtype": "float32",
        "layout": "",
        "bytes": heads * q * k * 4,
    }
    return run_group(
        _title(params), c, rounds=max(3, s.rounds // 2), params=params, sample_s=s.sample_s
    )


def _title(p: dict[str, Any]) -> str:
    layout = f" {p['layout']}" if p.get("layout") else ""
    return f"{p['op']} {p['backend']}/{p['device']} {p['shape_name']} {p['dtype']}{layout}"
