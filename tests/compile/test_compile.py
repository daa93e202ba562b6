"""The classes under ``torch.compile(fullgraph=True)``: no graph break, same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from olm_xp.nn.embeddings.positional import (
    AbsolutePositionalEmbedding,
    Llama3RotaryPositionalEmbedding,
    RotaryPositionalEmbedding,
    ScaledRotaryPositionalEmbedding,
    SinusoidalPositionalEmbedding,
)

torch = pytest.importorskip("torch")


def _modules():
    return {
        "sinusoidal": SinusoidalPositionalEmbedding(16, max_seq_len=32),
        "absolute": AbsolutePositionalEmbedding(64, 16, xp=torch, seed=0),
    }


@pytest.mark.parametrize("name", ["sinusoidal", "absolute"])
@pytest.mark.parametrize("with_positions", [False, True])
def test_fullgraph_compile_matches_eager(name, with_positions):
    torch._dynamo.reset()
    module = _modules()[name].eval()
    rng = np.random.default_rng(0)
    x = torch.asarray(rng.standard_normal((2, 12, 16)), dtype=torch.float32)
    args = (x, torch.arange(12) + 40) if with_positions else (x,)
    eager = module(*args)
    compiled = torch.compile(module.forward, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), eager, rtol=0, atol=0)
    # A new position offset (the next decode step) must not need a new graph.
    if with_positions:
        torch.testing.assert_close(
            compiled(x, torch.arange(12) + 41), module(x, torch.arange(12) + 41)
        )


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_inductor_compile_of_sinusoidal():
    torch._dynamo.reset()
    module = SinusoidalPositionalEmbedding(8).eval()
    x = torch.zeros((1, 5, 8))
    compiled = torch.compile(module.forward, fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x))


def test_pure_functions_under_fullgraph_compile():
    from olm_xp import add_position_embeddings, dropout, sinusoidal_table

    torch._dynamo.reset()
    positions = torch.arange(6) + 1000
    x = torch.ones((1, 6, 8))
    table = torch.randn((8, 8))

    def f(x, positions, table):
        pe = sinusoidal_table(positions, 8, dtype=torch.float32)
        return add_position_embeddings(x + pe, table, positions - 1000)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, positions, table), f(x, positions, table))
    keep = torch.compile(lambda x: dropout(x, 0.5, key=0, training=False), fullgraph=True)
    torch.testing.assert_close(keep(x), x)


def test_training_dropout_under_fullgraph_compile():
    torch._dynamo.reset()
    module = SinusoidalPositionalEmbedding(8, dropout=0.5, seed=0)
    x = torch.ones((2, 6, 8))
    compiled = torch.compile(module.forward, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    kept = out != 0
    assert 0 < int(kept.sum()) < out.numel()
    assert not torch.equal(out, compiled(x))  # a fresh mask per call, not one frozen mask
    torch.testing.assert_close(out[kept], 2 * module.eval()(x)[kept])


ROPE_MODULES = {
    "rope": lambda: RotaryPositionalEmbedding(16, 64),
    "half-split-yarn": lambda: RotaryPositionalEmbedding.from_hf(
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        head_dim=16,
        max_position_embeddings=64,
    ),
    "dynamic": lambda: ScaledRotaryPositionalEmbedding(
        16, 64, scaling_type="dynamic_ntk", scaling_factor=2.0
    ),
    "xpos": lambda: ScaledRotaryPositionalEmbedding(16, 64, scaling_type="xpos"),
    "llama3": lambda: Llama3RotaryPositionalEmbedding(16),
}


@pytest.mark.parametrize("name", sorted(ROPE_MODULES))
def test_rope_fullgraph_compile_matches_eager_without_recompiles(name):
    """Prefill, then decode steps with a tensor offset and with positions: one graph each."""
    torch._dynamo.reset()
    module = ROPE_MODULES[name]()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(module.forward, fullgraph=True, backend=counter)
    rng = np.random.default_rng(0)
    prefill = torch.asarray(rng.standard_normal((2, 12, 2, 16)), dtype=torch.float32)
    step = torch.asarray(rng.standard_normal((2, 1, 2, 16)), dtype=torch.float32)
    torch.testing.assert_close(compiled(prefill), module(prefill))
    for t in range(12, 16):
        offset = torch.tensor(t)
        torch.testing.assert_close(compiled(step, offset), module(step, offset))
        positions = torch.tensor([t])
        torch.testing.assert_close(compiled(step, positions), module(step, positions))
    assert counter.frame_count <= 3  # prefill, offset decode, positions decode


@pytest.mark.parametrize("name", ["rope", "xpos", "half-split-yarn"])
def test_compiled_rope_class_reads_its_table_instead_of_computing_cos_sin(name):
    """Under torch.compile a RoPE class's cos/sin come from its cached table (a constant of
    the graph), not from cos/sin computed in the graph on every call; beyond max_seq_len the
    graph computes them, with the same numbers as eager."""
    import torch._dynamo.testing

    torch._dynamo.reset()
    module = ROPE_MODULES[name]()
    module(torch.zeros((1, 300, 2, 16)))  # an eager call grows the module's own cache
    graphs, backend = _graph_recorder()
    compiled = torch.compile(module.forward, fullgraph=True, backend=backend, dynamic=False)
    rng = np.random.default_rng(0)
    for length, role in [(12, "query"), (12, "key"), (70, "query")]:  # 70 > max_seq_len 64
        x = torch.asarray(rng.standard_normal((2, length, 2, 16)), dtype=torch.float32)
        torch.testing.assert_close(compiled(x, role=role), module(x, role=role))
    trig = _trig_ops(graphs)
    assert trig[0] == set(), trig  # read from the table
    assert trig[-1] != set(), trig  # beyond max_seq_len: computed
    # the constant holds exactly max_seq_len rows (16 values each: cos and sin), whatever the
    # module's own cache grew to
    constants = [getattr(g, n.target) for g in graphs for n in g.graph.nodes if n.op == "get_attr"]
    assert constants
    assert max(c.numel() for c in constants) <= 64 * 16


def test_several_cached_tables_in_one_compiled_graph():
    """An attention block's worth of classes in one graph: queries and keys (xPos: two
    tables), two more RoPE modules and two sinusoidal ones; each table a constant, no clash
    (AOT autograd checks that every lifted constant has its own source)."""
    torch._dynamo.reset()
    xpos = ROPE_MODULES["xpos"]()
    rope, half = ROPE_MODULES["rope"](), ROPE_MODULES["half-split-yarn"]()
    sinusoidal = SinusoidalPositionalEmbedding(32, max_seq_len=32)
    other = SinusoidalPositionalEmbedding(32, max_seq_len=64, base=500.0)

    def block(q, k, h):
        rotated = xpos(q) + xpos(k, role="key") + rope(q) + half(k)
        return rotated.flatten(-2), sinusoidal(h) + other(h)

    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    rng = np.random.default_rng(0)
    q, k = (torch.asarray(rng.standard_normal((2, 12, 2, 16)), dtype=torch.float32) for _ in "qk")
    h = torch.asarray(rng.standard_normal((2, 12, 32)), dtype=torch.float32)
    for got, want in zip(compiled(q, k, h), block(q, k, h), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["rope", "xpos"])
def test_modules_alike_share_one_compiled_graph(name):
    """Regional compilation (one compiled layer body, one RoPE module per layer): modules with
    one configuration share the graph and its constant table, no recompile per instance."""
    import torch._dynamo.testing

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(lambda module, x: module(x), fullgraph=True, backend=counter)
    x = torch.asarray(np.random.default_rng(0).standard_normal((2, 12, 2, 16)), dtype=torch.float32)
    for module in [ROPE_MODULES[name]() for _ in range(3)]:
        torch.testing.assert_close(compiled(module, x), module(x))
    assert counter.frame_count == 1


def test_compiled_rope_class_computes_rows_when_its_table_would_be_too_big():
    """A table above GRAPH_TABLE_ELEMENTS is not made a graph constant: the rows are computed
    in-graph (same numbers as eager)."""
    torch._dynamo.reset()
    module = RotaryPositionalEmbedding(16, max_seq_len=1 << 21, interleaved=False)
    graphs, backend = _graph_recorder()
    compiled = torch.compile(module.forward, fullgraph=True, backend=backend, dynamic=False)
    x = torch.asarray(np.random.default_rng(0).standard_normal((2, 12, 2, 16)), dtype=torch.float32)
    torch.testing.assert_close(compiled(x), module(x))
    assert _trig_ops(graphs)[0] != set()


def _graph_recorder():
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    return graphs, backend


def _trig_ops(graphs):
    """The cos/sin ops of each recorded graph."""
    names = [{str(node.target) for node in g.graph.nodes} for g in graphs]
    return [{op for op in ops if "cos" in op or "sin" in op} for ops in names]


def test_compiled_sinusoidal_reads_its_table_instead_of_computing_rows():
    """Within max_seq_len the compiled class adds rows of its cached table (a graph constant);
    beyond it the graph computes them; both equal eager."""
    torch._dynamo.reset()
    module = SinusoidalPositionalEmbedding(16, max_seq_len=32).eval()
    graphs, backend = _graph_recorder()
    compiled = torch.compile(module.forward, fullgraph=True, backend=backend, dynamic=False)
    rng = np.random.default_rng(0)
    for length in (12, 40):
        x = torch.asarray(rng.standard_normal((2, length, 16)), dtype=torch.float32)
        torch.testing.assert_close(compiled(x), module(x))
    trig = _trig_ops(graphs)
    assert trig[0] == set(), trig  # read from the table
    assert trig[-1] != set(), trig  # beyond max_seq_len: computed


def test_rope_int_offset_decode_does_not_recompile_every_step():
    torch._dynamo.reset()
    module = RotaryPositionalEmbedding(16, 64)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(module.forward, fullgraph=True, backend=counter)
    step = torch.ones((1, 1, 2, 16))
    for t in range(20, 28):
        torch.testing.assert_close(compiled(step, t), module(step, t))
    assert counter.frame_count <= 2  # Dynamo marks the int dynamic after it changes once


# -- attention biases and the reference attention ----------------------------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["symmetric", "causal"])
def test_alibi_fullgraph_compile_matches_eager(causal):
    """A decode loop (one query, a growing key count) compiles at most twice."""
    import torch._dynamo.testing

    from olm_xp.nn.embeddings.positional import ALiBiPositionalBias

    torch._dynamo.reset()
    module = ALiBiPositionalBias(12, causal=causal, xp=torch, dtype=torch.float32)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(module.forward, fullgraph=True, backend=counter)
    for seq_len_k in range(9, 13):
        torch.testing.assert_close(compiled(1, seq_len_k), module(1, seq_len_k), rtol=0, atol=0)
    assert counter.frame_count <= 2
    torch.testing.assert_close(compiled(4, 9), module(4, 9), rtol=0, atol=0)
    if causal:
        rows = compiled(3, 10, broadcastable=True)
        torch.testing.assert_close(rows, module(3, 10, broadcastable=True), rtol=0, atol=0)
    positions = torch.arange(5, 8)
    torch.testing.assert_close(
        compiled(3, 8, query_positions=positions), module(3, 8, query_positions=positions)
    )


def test_alibi_pure_function_with_plain_torch_namespace_under_compile():
    from olm_xp import alibi_bias

    torch._dynamo.reset()

    def f(scores):
        return scores + alibi_bias(4, 9, 2, causal=True, xp=torch, dtype=torch.float32)

    scores = torch.zeros((1, 2, 4, 9))
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(scores), f(scores), rtol=0, atol=0)


def test_t5_bias_fullgraph_compile_matches_eager():
    import torch._dynamo.testing

    from olm_xp.nn.embeddings.positional import T5RelativePositionBias

    torch._dynamo.reset()
    module = T5RelativePositionBias(4, bidirectional=False, xp=torch, seed=0)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(module.forward, fullgraph=True, backend=counter)
    for seq_len_k in (199, 200, 201):
        torch.testing.assert_close(compiled(1, seq_len_k), module(1, seq_len_k), rtol=0, atol=0)
    assert counter.frame_count <= 2
    torch.testing.assert_close(compiled(9, 9), module(9, 9), rtol=0, atol=0)
    positions = torch.tensor([[3, 9, 200], [0, 1, 2]])
    torch.testing.assert_close(
        compiled(3, 3, query_positions=positions), module(3, 3, query_positions=positions)
    )


def test_reference_attention_with_alibi_under_fullgraph_compile():
    from olm_xp import alibi_bias, scaled_dot_product_attention

    torch._dynamo.reset()

    def layer(q, k, v):
        bias = alibi_bias(q.shape[2], k.shape[2], q.shape[1], xp=torch, dtype=q.dtype)
        return scaled_dot_product_attention(q, k, v, bias=bias, causal=True)

    rng = np.random.default_rng(0)
    q, k, v = (
        torch.asarray(rng.standard_normal((2, 4, n, 8)), dtype=torch.float32) for n in (3, 7, 7)
    )
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), layer(q, k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=alibi_bias(3, 7, 4, causal=True, xp=torch, dtype=torch.float32)
    )
    torch.testing.assert_close(layer(q, k, v), expected)
