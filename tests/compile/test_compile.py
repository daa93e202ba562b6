"""The classes under ``torch.compile(fullgraph=True)``: no graph break, same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from olm_xp.nn.embeddings.positional import (
    AbsolutePositionalEmbedding,
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
