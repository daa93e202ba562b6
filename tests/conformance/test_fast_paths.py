"""Every formulation of the rotation against the float64 reference, on every profile.

``olm_xp.rope`` picks a formulation per input (see its "the rotation" notes): the generic one
(standard array API only) on chunks of positions where the output is writeable on a CPU, or in
one piece; torch fast paths (complex multiply, ``out=``/``addcmul_``) above a size; a lean
decode step in the RoPE classes. Each is forced here on every profile where it applies, so the
generic path stays tested on torch too, and every path is compared with the same reference.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from olm_xp import apply_rope, rope_cos_sin, rope_inverse_frequencies
from olm_xp.nn.embeddings.positional import RotaryPositionalEmbedding
from olm_xp.reference import rope_frequencies_reference, rope_reference

ROTATION_TOL_EPS = 4.0
LOWP_TOL_EPS = 0.5 + 2.0**-6

# `olm_xp.rope` the attribute is the function `rope`; the module lives in sys.modules.
rope_module = importlib.import_module("olm_xp.rope")


@pytest.fixture(autouse=True)
def _profile_settings(request):
    """Re-apply the case's JAX x64 setting: these tests interleave the JAX profiles' cases
    with other parameters, and x64 is a process-wide switch."""
    callspec = getattr(request.node, "callspec", None)
    case = None if callspec is None else callspec.params.get("case")
    if case is not None and case.profile.module == "jax.numpy":
        import jax

        jax.config.update("jax_enable_x64", case.profile.env.get("JAX_ENABLE_X64", "0") == "1")


def _tol(case) -> float:
    return LOWP_TOL_EPS if case.is_low_precision else ROTATION_TOL_EPS


@pytest.fixture(params=["default", "chunked", "generic", "generic-chunked", "generic-whole"])
def formulation(request, monkeypatch):
    """``default``: what the library picks. ``chunked``: the same with tiny chunks (many of
    them, the batch split too). ``generic``: torch fast paths off. ``generic-chunked``: fast
    paths off and tiny chunks. ``generic-whole``: fast paths off and no chunking."""
    name = request.param
    if name.startswith("generic"):
        monkeypatch.setattr(rope_module, "_FAST_PATHS", False)
    if name == "chunked":
        monkeypatch.setattr(rope_module, "_CHUNK_ELEMENTS", {"default": 40})
    if name == "generic-chunked":
        monkeypatch.setattr(rope_module, "_CHUNK_ELEMENTS", {"default": 40})
    if name == "generic-whole":
        monkeypatch.setattr(rope_module, "_CHUNK_ELEMENTS", {"default": 1 << 60})
    return name


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
@pytest.mark.parametrize(
    ("shape", "rotary_dim", "seq_axis", "batch_tables"),
    [
        ((3, 40, 4, 16), 16, 1, False),  # above the chunk and fast-path sizes when shrunk
        ((3, 40, 4, 16), 8, 1, True),  # partial rotary, per-batch tables
        ((2, 4, 36, 16), 16, 2, False),  # (batch, heads, seq, dim)
        ((1, 1, 4, 16), 16, 1, False),  # a decode step
    ],
    ids=["bshd", "partial-batch-tables", "bhsd", "decode"],
)
def test_apply_rope_every_formulation(
    case, formulation, monkeypatch, interleaved, shape, rotary_dim, seq_axis, batch_tables, rng
):
    monkeypatch.setattr(rope_module, "SMALL", 64)  # small shapes take the big-input paths
    x_host = rng.standard_normal(shape)
    seq = shape[seq_axis]
    positions = rng.integers(0, 3000, size=(shape[0], seq) if batch_tables else (seq,))
    inv_freq, _ = rope_inverse_frequencies(rotary_dim, base=500.0)
    cos, sin = rope_cos_sin(case.positions(positions), inv_freq, dtype=case.xp.float32)
    if case.dtype_name == "float64":
        cos, sin = rope_cos_sin(case.positions(positions), inv_freq, dtype=case.dtype)
    out = case.call(
        lambda x, c, s: apply_rope(x, c, s, interleaved=interleaved, seq_axis=seq_axis),
        case.asarray(x_host),
        cos,
        sin,
    )
    x64 = case.rounded(x_host)
    moved = np.moveaxis(x64, seq_axis, 1)
    full = positions if batch_tables else np.broadcast_to(positions, (shape[0], seq))
    expected = rope_reference(moved, full, inv_freq, interleaved=interleaved)
    expected = np.moveaxis(expected, 1, seq_axis)
    case.assert_close(out, expected, tol_eps=_tol(case), max_angle=3000)


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
@pytest.mark.parametrize("positions_kind", ["offset", "array"])
def test_classes_every_formulation(
    case, formulation, monkeypatch, interleaved, positions_kind, rng
):
    """The class: its cached rows, a prefill (big paths), then decode steps (the lean path,
    twice: the second call takes the remembered one), against the reference."""
    monkeypatch.setattr(rope_module, "SMALL", 200)
    module = RotaryPositionalEmbedding(16, 64, interleaved=interleaved)
    inv_freq, _ = rope_frequencies_reference(16)
    prefill = rng.standard_normal((2, 30, 4, 16))
    positions = np.arange(30)
    arg = case.positions(positions) if positions_kind == "array" else None
    out = (
        case.call(module, case.asarray(prefill), arg)
        if arg is not None
        else case.call(module, case.asarray(prefill))
    )
    expected = rope_reference(case.rounded(prefill), positions, inv_freq, interleaved=interleaved)
    case.assert_close(out, expected, tol_eps=_tol(case), max_angle=40)
    # Repeated steps reuse the last step's rows (keys after queries); a new offset or length
    # must not. 200: beyond the cached rows, the table grows.
    for t, length in [(30, 1), (30, 1), (31, 1), (31, 2), (200, 1), (200, 1), (31, 1)]:
        step = rng.standard_normal((2, length, 4, 16))
        steps = np.arange(t, t + length)
        if positions_kind == "array":
            out = case.call(module, case.asarray(step), case.positions(steps))
        else:
            out = module(case.asarray(step), t)
        expected = rope_reference(case.rounded(step), steps, inv_freq, interleaved=interleaved)
        case.assert_close(out, expected, tol_eps=_tol(case), max_angle=t + 1)


def test_torch_fast_paths_are_taken_and_generic_is_forced(monkeypatch):
    """On torch the fast paths run where they apply, and ``_FAST_PATHS = False`` turns them
    off (so the formulation tests above cover the generic path on torch)."""
    torch = pytest.importorskip("torch")
    calls: list[str] = []
    for kernel in ("_torch_complex_kernel", "_torch_halves_kernel", "_torch_lowp_kernel"):
        original = getattr(rope_module, kernel)

        def spy(*args, _original=original, _name=kernel, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(rope_module, kernel, spy)
    x = torch.randn(2, 64, 4, 128)
    cos, sin = rope_cos_sin(64, rope_inverse_frequencies(128)[0], xp=torch)
    apply_rope(x, cos, sin, interleaved=True)
    apply_rope(x, cos, sin, interleaved=False)
    assert calls == ["_torch_complex_kernel", "_torch_halves_kernel"]
    long = torch.randn(2, 1024, 4, 128).to(torch.bfloat16)  # chunked: upcast per chunk
    cos_long, sin_long = rope_cos_sin(1024, rope_inverse_frequencies(128)[0], xp=torch)
    apply_rope(long, cos_long, sin_long, interleaved=False)
    assert set(calls[2:]) == {"_torch_lowp_kernel"}
    del calls[2:]
    with torch.enable_grad():  # out= does not support autograd
        apply_rope(x.requires_grad_(), cos, sin, interleaved=False)
    assert calls == ["_torch_complex_kernel", "_torch_halves_kernel"]
    monkeypatch.setattr(rope_module, "_FAST_PATHS", False)
    apply_rope(x.detach(), cos, sin, interleaved=True)
    apply_rope(x.detach(), cos, sin, interleaved=False)
    assert calls == ["_torch_complex_kernel", "_torch_halves_kernel"]


def test_chunks_tile_the_input():
    """Chunk blocks cover every (batch, position) once, splitting the batch when one
    position holds more than a chunk."""
    for shape, seq, target in [((4, 2048, 16, 128), 1, 1 << 17), ((64, 4, 32, 128), 1, 30000)]:
        chunks = rope_module._chunks(shape, seq, shape[-1], target)
        covered = np.zeros(shape[:2], dtype=int)
        for batch, rows in chunks:
            covered[batch, rows] += 1
        assert (covered == 1).all()
    assert rope_module._chunks((1, 1, 32, 128), 1, 128, 1 << 17) == []


def test_input_is_never_modified(case, formulation, monkeypatch, rng):
    """In-place updates touch only new arrays, never the input (NumPy flips are views)."""
    monkeypatch.setattr(rope_module, "SMALL", 64)
    if case.shape_only or case.mode == "jit":
        pytest.skip("values of an eager, concrete input")
    x_host = rng.standard_normal((2, 40, 4, 16))
    x = case.asarray(x_host)
    before = np.array(case.rounded(x_host))
    cos, sin = rope_cos_sin(40, rope_inverse_frequencies(16)[0], xp=case.xp, device=case.device)
    for interleaved in (True, False):
        apply_rope(x, cos, sin, interleaved=interleaved)
        module = RotaryPositionalEmbedding(16, 64, interleaved=interleaved)
        module(x)
        module(x[:, :1, ...], 7)
    np.testing.assert_array_equal(case.rounded(np.asarray(x_host)), before)
    from olm_xp._compat import to_numpy

    np.testing.assert_array_equal(to_numpy(x).astype(np.float64), before)


@pytest.mark.parametrize("kind", ["sinusoidal", "absolute"])
@pytest.mark.parametrize("positions_kind", ["none", "batch", "shared"])
@pytest.mark.parametrize("add_path", ["default", "chunked", "generic-chunked"])
def test_position_adds_every_formulation(case, kind, positions_kind, add_path, monkeypatch, rng):
    """``x + pe``: in place on gathered rows, chunked for lower precision (torch: reused
    buffers, rows gathered per chunk; "chunked": two batch items per chunk), or one sum; each
    against the float64 reference."""
    from olm_xp.nn.embeddings.positional import (
        AbsolutePositionalEmbedding,
        SinusoidalPositionalEmbedding,
    )
    from olm_xp.reference import sinusoidal_reference

    absolute_module = importlib.import_module("olm_xp.absolute")
    if add_path == "generic-chunked":
        monkeypatch.setattr(absolute_module, "_FAST_PATHS", False)
        monkeypatch.setattr(absolute_module, "_CHUNK_ELEMENTS", {"default": 24})
    if add_path == "chunked":
        monkeypatch.setattr(absolute_module, "_CHUNK_ELEMENTS", {"default": 16})
    x_host = rng.standard_normal((3, 10, 8))
    if positions_kind == "none":
        positions, args = np.broadcast_to(np.arange(10), (3, 10)), ()
    elif positions_kind == "batch":
        positions = rng.integers(0, 20, size=(3, 10))
        args = (case.positions(positions),)
    else:
        shared = rng.integers(0, 20, size=10)
        positions = np.broadcast_to(shared, (3, 10))
        args = (case.positions(shared),)
    if kind == "sinusoidal":
        module = SinusoidalPositionalEmbedding(8).eval()
        table = sinusoidal_reference(20, 8)
        table = np.asarray(case.rounded(table)) if case.dtype_name != "float64" else table
        if case.is_low_precision:  # the table is kept in the compute dtype (float32)
            table = sinusoidal_reference(20, 8).astype(np.float32).astype(np.float64)
    else:
        weights = rng.standard_normal((20, 8))
        module = AbsolutePositionalEmbedding(
            20, 8, xp=case.xp, device=case.device, dtype=case.dtype
        ).eval()
        module.load_state_dict({"pos_embedding.weight": weights})
        table = case.rounded(weights)
    out = case.call(module, case.asarray(x_host), *args)
    expected = case.rounded(x_host) + table[positions]
    case.assert_close(out, expected, tol_eps=1.0)


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("needs_grad", ["x", "tables"])
def test_torch_fast_paths_under_autograd(interleaved, dtype_name, needs_grad):
    """Inputs or tables that need a gradient take no ``out=`` kernel or reused buffer (those
    do not support autograd): the rotation is right and differentiable, in every dtype."""
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    x = torch.randn(1, 64, 8, 64).to(dtype)  # 32768 elements: the fast-path size
    cos, sin = rope_cos_sin(64, rope_inverse_frequencies(64)[0], xp=torch)
    expected = apply_rope(x, cos, sin, interleaved=interleaved)  # no gradient: fast paths
    with torch.enable_grad():
        if needs_grad == "x":
            x = x.clone().requires_grad_()
        else:
            cos, sin = cos.clone().requires_grad_(), sin.clone().requires_grad_()
        out = apply_rope(x, cos, sin, interleaved=interleaved)
        out.float().square().sum().backward()
    torch.testing.assert_close(out.detach(), expected)
    grad = x.grad if needs_grad == "x" else cos.grad
    assert grad is not None
    assert bool(torch.isfinite(grad).all())


def test_torch_chunked_add_with_a_table_that_needs_a_gradient():
    """Mixed precision training: bfloat16 activations, a float32 learned table with a
    gradient, positions: chunked without ``out=`` gathers, and the table gets its gradient."""
    torch = pytest.importorskip("torch")
    from olm_xp import add_position_embeddings

    absolute = importlib.import_module("olm_xp.absolute")
    x = torch.randn(2, 40, 8).to(torch.bfloat16)
    table = torch.randn(50, 8)
    positions = torch.randint(0, 50, (2, 40))
    expected = (x.double() + table.double()[positions]).to(torch.bfloat16)
    original = absolute._CHUNK_ELEMENTS
    absolute._CHUNK_ELEMENTS = {"default": 16}  # many chunks
    try:
        with torch.enable_grad():
            learned = table.clone().requires_grad_()
            out = add_position_embeddings(x, learned, positions)
            out.float().sum().backward()
    finally:
        absolute._CHUNK_ELEMENTS = original
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)
    counts = torch.bincount(positions.reshape(-1), minlength=50).float()[:, None].expand(50, 8)
    torch.testing.assert_close(learned.grad, counts)


def test_alibi_in_place_path_is_not_used_where_out_kernels_cannot_be():
    """Zero heads, slopes under ``torch.vmap`` or needing a gradient: the generic bias."""
    torch = pytest.importorskip("torch")
    from olm_xp import alibi_bias

    assert alibi_bias(4, 4, np.zeros(0, np.float32)).shape == (1, 0, 4, 4)
    slopes = torch.rand(3, 4) + 0.1
    batched = torch.vmap(lambda s: alibi_bias(5, 5, s))(slopes)
    for row, one in zip(batched, slopes, strict=True):
        torch.testing.assert_close(row, alibi_bias(5, 5, one))
    with torch.enable_grad():
        learned = slopes[0].clone().requires_grad_()
        alibi_bias(5, 5, learned).sum().backward()
    assert learned.grad is not None
