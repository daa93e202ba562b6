"""``olm_xp.layers.torch``: torch modules for every positional class.

Same numbers as the core, olm's state dicts, non-persistent buffers, ``.to()``, train/eval and
dropout, ``torch.compile(fullgraph=True)``, ``torch.autocast``, and clear errors for bad state
dicts and silent cross-device loads. ``meta`` stands in for "another device" on CPU machines.
"""

from __future__ import annotations

import copy
import inspect
import pickle

import numpy as np
import pytest
from layer_cases import BIAS_CLASSES, CASES, CLASSES, POSITION_MODES, positions

torch = pytest.importorskip("torch")

from olm_xp.layers import torch as layers  # noqa: E402
from olm_xp.nn.embeddings import positional as core  # noqa: E402


def _pair(layer, **extra):
    """(core object on torch, torch module) built from the same layer."""
    kwargs = dict(layer.kwargs)
    if layer.learned:
        mine = getattr(core, layer.cls)(*layer.args, xp=torch, dtype=torch.float32, seed=3)
        return mine, getattr(layers, layer.cls)(*layer.args, seed=3, **extra)
    return getattr(core, layer.cls)(*layer.args, **kwargs), getattr(layers, layer.cls)(
        *layer.args, **kwargs, **extra
    )


def _tensor_positions(mode, rng):
    p = positions(mode, rng)
    return torch.asarray(p) if isinstance(p, np.ndarray) else p


CASE_IDS = [layer.id for layer in CASES]


def test_every_class_has_a_torch_module_with_the_core_signature():
    every = [name for name in core.__all__ if name != "PositionalEmbeddingBase"]
    assert sorted(every) == sorted(CLASSES + BIAS_CLASSES)  # a layer for every core class
    for name in every:
        cls = getattr(layers, name)
        assert issubclass(cls, torch.nn.Module), name
        assert issubclass(cls, layers.PositionalEmbeddingBase), name
        core_params = list(inspect.signature(getattr(core, name)).parameters)
        mine = list(inspect.signature(cls).parameters)
        olm_positional = [p for p in core_params if p not in ("xp", "device", "dtype", "seed")]
        assert mine[: len(olm_positional)] == olm_positional, name
    assert set(every) <= set(layers.__all__)


@pytest.mark.parametrize("mode", POSITION_MODES)
@pytest.mark.parametrize("layer", CASES, ids=CASE_IDS)
def test_same_numbers_as_the_core(layer, mode):
    if layer.adds and mode == "offset":
        pytest.skip("absolute and sinusoidal embeddings take position arrays, not offsets")
    rng = np.random.default_rng(0)
    mine, module = _pair(layer)
    module.eval()
    x = torch.asarray(layer.input(rng))
    pos = _tensor_positions(mode, rng)
    expected = mine.eval()(x, pos)
    got = module(x, pos)
    assert got.dtype == x.dtype
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_configuration_and_repr_come_from_the_core():
    module = layers.ScaledRotaryPositionalEmbedding(8, 64, scaling_type="yarn", scaling_factor=4.0)
    assert module.head_dim == 8
    assert module.max_seq_len == 64
    assert module.rope_type == "yarn"
    assert module.scaling_factor == 4.0
    assert "rope_type='yarn'" in repr(module)
    absolute = layers.AbsolutePositionalEmbedding(5, 2, dropout=0.25)
    text = repr(absolute)
    assert "max_seq_len=5, embed_dim=2" in text
    assert "dtype" not in text
    assert "(pos_embedding): Embedding(5, 2)" in text
    assert "Dropout(p=0.25" in text


def test_from_hf_builds_a_torch_module():
    module = layers.RotaryPositionalEmbedding.from_hf(
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        head_dim=8,
        max_position_embeddings=64,
    )
    assert isinstance(module, layers.RotaryPositionalEmbedding)
    assert module.interleaved is False
    assert module.rope_type == "yarn"
    reference = core.RotaryPositionalEmbedding.from_hf(
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        head_dim=8,
        max_position_embeddings=64,
    )
    q = torch.randn(1, 5, 2, 8)
    torch.testing.assert_close(module(q), reference(q), rtol=0, atol=0)


# -- parameters, buffers, state dicts -----------------------------------------------------------
def test_learned_table_is_a_parameter_under_olms_key():
    module = layers.AbsolutePositionalEmbedding(16, 4)
    assert list(module.state_dict()) == ["pos_embedding.weight"]
    assert [name for name, _ in module.named_parameters()] == ["pos_embedding.weight"]
    assert isinstance(module.pos_embedding, torch.nn.Embedding)
    torch.manual_seed(0)
    a = layers.AbsolutePositionalEmbedding(16, 4)
    torch.manual_seed(0)
    b = torch.nn.Embedding(16, 4)
    torch.testing.assert_close(a.pos_embedding.weight, b.weight)  # torch's init, as olm


def test_seeded_table_matches_the_core_class():
    module = layers.AbsolutePositionalEmbedding(16, 4, seed=5)
    reference = core.AbsolutePositionalEmbedding(16, 4, seed=5, dtype=np.float32)
    np.testing.assert_array_equal(
        module.pos_embedding.weight.detach().numpy(), reference.pos_embedding.weight
    )


@pytest.mark.parametrize("layer", CASES, ids=CASE_IDS)
def test_caches_are_non_persistent_buffers(layer):
    _, module = _pair(layer)
    x = torch.asarray(layer.input(np.random.default_rng(0)))
    module(x)
    buffers = dict(module.named_buffers())
    if layer.learned:
        assert buffers == {}
    elif layer.id != "scaled-dynamic":  # dynamic NTK's frequencies follow each call's length
        (name,) = (n for n in buffers if n in ("pe", "cos_sin"))
        assert buffers[name].dtype == torch.float32
    keys = {"pos_embedding.weight"} if layer.learned else set()
    assert set(module.state_dict()) == keys


def test_buffer_grows_and_follows_dtype():
    module = layers.SinusoidalPositionalEmbedding(8)
    x = torch.zeros(1, 4, 8)
    module(x)
    assert module.pe.shape == (64, 8)
    module(x, torch.tensor([0, 1, 2, 700]))
    assert module.pe.shape == (1024, 8)  # grown to the next power of two
    module(x.double())
    assert module.pe.dtype == torch.float64  # float64 input: float64 table, float64-exact
    reference = core.SinusoidalPositionalEmbedding(8)
    torch.testing.assert_close(module(x.double()), reference(x.double()), rtol=0, atol=0)


def test_to_dtype_recast_tables_are_rebuilt_exactly():
    module = layers.RotaryPositionalEmbedding(8, 64)
    q = torch.randn(1, 40, 2, 8)
    expected = module(q)
    module.to(torch.bfloat16)  # recasts the cos/sin buffer to bfloat16 ...
    assert module.cos_sin.dtype == torch.bfloat16
    # ... and the numbers stay exact (the rotation reads float32 rows, not the recast buffer)
    torch.testing.assert_close(module(q), expected, rtol=0, atol=0)
    module.double()
    torch.testing.assert_close(module(q), expected, rtol=0, atol=0)


def test_to_moves_parameters_and_the_module_follows():
    module = layers.AbsolutePositionalEmbedding(16, 4, seed=0).to(torch.float64)
    assert module.pos_embedding.weight.dtype == torch.float64
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(module(x), x + module.pos_embedding.weight[:3])
    module.to("meta")
    out = module(torch.empty(2, 3, 4, device="meta", dtype=torch.float64))
    assert out.device.type == "meta"
    assert out.shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"x is on device cpu but pos_embedding.weight is on"):
        module(x)
    rope = layers.RotaryPositionalEmbedding(8, 32).to("meta")
    assert rope(torch.empty(1, 3, 2, 8, device="meta")).device.type == "meta"
    assert rope.cos_sin is None  # meta tables hold no data: never cached


def test_deepcopy_and_pickle():
    module = layers.AbsolutePositionalEmbedding(16, 4, seed=0)
    rope = layers.RotaryPositionalEmbedding(8, 32)
    q = torch.randn(1, 5, 2, 8)
    rope(q)
    for clone in (copy.deepcopy(rope), pickle.loads(pickle.dumps(rope))):
        torch.testing.assert_close(clone(q), rope(q), rtol=0, atol=0)
        assert clone.core._cache._owner is clone
    clone = copy.deepcopy(module)
    with torch.no_grad():
        clone.pos_embedding.weight.add_(1.0)
    x = torch.zeros(1, 2, 4)
    torch.testing.assert_close(clone(x), module(x) + 1.0)  # the clone reads its own table


def test_functional_call_reads_the_substituted_table():
    module = layers.AbsolutePositionalEmbedding(8, 4, seed=0).eval()
    table = torch.arange(32.0).reshape(8, 4)
    x = torch.zeros(1, 3, 4)
    out = torch.func.functional_call(module, {"pos_embedding.weight": table}, (x,))
    torch.testing.assert_close(out[0], table[:3])


# -- olm -----------------------------------------------------------------------------------------
OLM_CONSTRUCTORS = {
    "AbsolutePositionalEmbedding": ((12, 8, 0.0), {}),
    "SinusoidalPositionalEmbedding": ((8, 32), {}),
    "RotaryPositionalEmbedding": ((8, 32), {}),
    "PartialRotaryPositionalEmbedding": ((8, 0.5, 10000, 32), {}),
    "ScaledRotaryPositionalEmbedding": ((8, 32), {"scaling_type": "linear"}),
    "PartialScaledRotaryPositionalEmbedding": ((8, 0.5, 32), {"scaling_type": "linear"}),
    "Llama3RotaryPositionalEmbedding": ((8, 64), {}),
}


@pytest.mark.parametrize("name", sorted(OLM_CONSTRUCTORS))
def test_olm_state_dicts_load_both_ways(name):
    olm_positional = pytest.importorskip("olm.nn.embeddings.positional")
    args, kwargs = OLM_CONSTRUCTORS[name]
    torch.manual_seed(0)
    reference = getattr(olm_positional, name)(*args, **kwargs).eval()
    module = getattr(layers, name)(*args, **kwargs).eval()
    assert set(module.state_dict()) == set(reference.state_dict())
    module.load_state_dict(reference.state_dict())
    reference.load_state_dict(module.state_dict())
    if name == "AbsolutePositionalEmbedding":
        x = torch.randn(2, 12, 8)
        pos = torch.randint(0, 12, (2, 12))
        torch.testing.assert_close(module(x, pos), reference(x, pos), rtol=0, atol=0)


def test_olm_checkpoint_file_round_trip(tmp_path):
    olm_positional = pytest.importorskip("olm.nn.embeddings.positional")
    reference = olm_positional.AbsolutePositionalEmbedding(16, 8)
    torch.save(reference.state_dict(), tmp_path / "olm.pt")
    module = layers.AbsolutePositionalEmbedding(16, 8)
    module.load_state_dict(torch.load(tmp_path / "olm.pt", weights_only=True))
    torch.testing.assert_close(module.pos_embedding.weight, reference.pos_embedding.weight)


# -- training and eval -------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ["AbsolutePositionalEmbedding", "SinusoidalPositionalEmbedding"])
def test_dropout_is_torch_dropout_in_train_mode_only(cls):
    args = (16, 8) if cls == "AbsolutePositionalEmbedding" else (8,)
    module = getattr(layers, cls)(*args, dropout=0.5)
    assert isinstance(module.dropout, torch.nn.Dropout)
    assert module.training
    x = torch.ones(4, 16, 8)
    clean = module.eval()(x)
    module.train()
    torch.manual_seed(0)
    first = module(x)
    torch.manual_seed(0)
    torch.testing.assert_close(module(x), first)  # torch's RNG drives the mask
    kept = first != 0
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(first[kept], 2 * clean[kept])
    assert torch.equal(module.eval()(x), clean)


def test_bad_dropout_is_a_clear_error():
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\); got 1.5"):
        layers.SinusoidalPositionalEmbedding(8, dropout=1.5)


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    module = layers.AbsolutePositionalEmbedding(8, 4, dropout=0.1)
    target = torch.randn(1, 8, 4)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    losses = []
    for _ in range(20):
        loss = ((module(torch.zeros(1, 8, 4)) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# -- torch.compile and autocast ----------------------------------------------------------------
COMPILE_CASES = [
    layer for layer in CASES if layer.id not in ("sinusoidal-odd", "rope", "scaled-yarn")
]


@pytest.mark.parametrize("layer", COMPILE_CASES, ids=[layer.id for layer in COMPILE_CASES])
def test_fullgraph_compile_matches_eager(layer):
    """Every class (the plain variants through their half-split, partial and scaled
    relatives), compiled as a module, with (batch, seq) positions: one graph each."""
    torch._dynamo.reset()
    _, module = _pair(layer)
    module.eval()
    rng = np.random.default_rng(1)
    x = torch.asarray(layer.input(rng))
    pos = _tensor_positions("batched", rng)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, pos), module(x, pos), rtol=0, atol=1e-6)


def test_compiled_decoding_does_not_recompile_per_step():
    torch._dynamo.reset()
    module = layers.RotaryPositionalEmbedding(8, 64)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    step = torch.randn(1, 1, 2, 8)
    for t in range(10, 16):
        offset = torch.tensor(t)
        torch.testing.assert_close(compiled(step, offset), module(step, offset))
    assert counter.frame_count == 1


def test_compiled_training_step_matches_eager_gradients():
    torch._dynamo.reset()
    module = layers.AbsolutePositionalEmbedding(8, 4, seed=0)
    x = torch.randn(2, 8, 4, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    module.eval()
    compiled(x).square().sum().backward()
    grads = (x.grad.clone(), module.pos_embedding.weight.grad.clone())
    x.grad = None
    module.pos_embedding.weight.grad = None
    module(x).square().sum().backward()
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], module.pos_embedding.weight.grad)
    module.train()
    module.dropout.p = 0.5
    out = compiled(x)  # training-mode dropout inside the graph: torch's RNG, fresh masks
    assert 0 < int((out == 0).sum()) < out.numel()


def test_autocast_bfloat16_keeps_tables_in_float32():
    rope = layers.RotaryPositionalEmbedding(8, 32)
    sinusoidal = layers.SinusoidalPositionalEmbedding(16)
    absolute = layers.AbsolutePositionalEmbedding(8, 16, seed=0)
    project = torch.nn.Linear(16, 16)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = project(x)  # bfloat16 under autocast
        assert h.dtype == torch.bfloat16
        q = rope(h.reshape(2, 5, 2, 8))
        s = sinusoidal(h)
        a = absolute(x)
    assert q.dtype == s.dtype == torch.bfloat16
    assert a.dtype == torch.float32
    assert rope.cos_sin.dtype == sinusoidal.pe.dtype == torch.float32
    # The rotation ran in float32 on the bf16 input and was rounded once:
    torch.testing.assert_close(q, rope(h.float().reshape(2, 5, 2, 8)).bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(s, sinusoidal(h.float()).bfloat16(), rtol=0, atol=0)


# -- bad input -----------------------------------------------------------------------------------
def test_state_dict_errors_are_clear_and_leave_the_module_unchanged():
    module = layers.AbsolutePositionalEmbedding(6, 4, seed=0)
    before = module.pos_embedding.weight.detach().clone()
    bad = [
        ({"pos_embedding.wieght": torch.zeros(6, 4)}, ValueError, r"missing \['pos_embedding"),
        ({"pos_embedding.weight": torch.zeros(5, 4)}, ValueError, r"shape \(6, 4\); got \(5, 4\)"),
        ({"pos_embedding.weight": torch.zeros(6, 4, dtype=torch.int64)}, TypeError, "floating"),
        ([("pos_embedding.weight", torch.zeros(6, 4))], TypeError, "mapping"),
    ]
    for state, error, match in bad:
        with pytest.raises(error, match=match):
            module.load_state_dict(state)
    assert torch.equal(module.pos_embedding.weight, before)
    with pytest.raises(ValueError, match="unexpected"):
        layers.SinusoidalPositionalEmbedding(8).load_state_dict({"pe": torch.zeros(5000, 8)})


def test_loading_across_devices_needs_map_location():
    module = layers.AbsolutePositionalEmbedding(6, 4).to("meta")
    state = {"pos_embedding.weight": torch.zeros(6, 4)}
    with pytest.raises(ValueError, match=r"is on device 'cpu' but .* are on 'meta'.*map_location"):
        module.load_state_dict(state)
    module.load_state_dict(state, map_location="meta")  # said so: allowed
    with pytest.raises(ValueError, match=r"map_location='cpu' but .* on 'meta'"):
        module.load_state_dict(state, map_location="cpu")
    host = layers.AbsolutePositionalEmbedding(6, 4)
    with pytest.raises(ValueError, match=r"is on device 'meta' but"):
        host.load_state_dict({"pos_embedding.weight": torch.empty(6, 4, device="meta")})
    # Inside a larger model (torch's own load_state_dict, no map_location): still an error.
    model = torch.nn.ModuleDict({"positions": layers.AbsolutePositionalEmbedding(6, 4)})
    model.to("meta")
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"positions.pos_embedding.weight is on device 'cpu'"):
        model.load_state_dict(state)


def test_numpy_and_host_arrays_load():
    module = layers.AbsolutePositionalEmbedding(6, 4)
    table = np.random.default_rng(0).standard_normal((6, 4))  # float64 -> float32 parameter
    module.load_state_dict({"pos_embedding.weight": table})
    np.testing.assert_array_equal(
        module.pos_embedding.weight.detach().numpy(), table.astype(np.float32)
    )
    assert module.pos_embedding.weight.dtype == torch.float32


def test_wrong_input_is_the_cores_clear_error():
    module = layers.RotaryPositionalEmbedding(8, 32)
    with pytest.raises(ValueError, match="head_dim=8"):
        module(torch.zeros(1, 3, 2, 6))
    with pytest.raises(ValueError, match="seq_positions must be < max_seq_len=6"):
        layers.AbsolutePositionalEmbedding(6, 4)(torch.zeros(1, 2, 4), torch.tensor([0, 6]))


# -- attention biases ----------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_alibi_matches_the_core_and_follows_to(causal):
    module = layers.ALiBiPositionalBias(6, 64, causal=causal)
    reference = core.ALiBiPositionalBias(6, 64, causal=causal, xp=torch)
    torch.testing.assert_close(module(4, 9), reference(4, 9), rtol=0, atol=0)
    positions = torch.arange(20, 29)
    torch.testing.assert_close(
        module(9, 9, query_positions=positions, key_positions=positions),
        reference(9, 9, query_positions=positions, key_positions=positions),
        rtol=0,
        atol=0,
    )
    assert dict(module.named_buffers()).keys() == {"slopes"}
    assert module.state_dict() == {}
    assert module.to(torch.float64)(3, 3).dtype == torch.float64
    assert module.to("meta")(3, 3).device.type == "meta"


def test_alibi_loads_olms_state_dict():
    olm_positional = pytest.importorskip("olm.nn.embeddings.positional")
    reference = olm_positional.ALiBiPositionalBias(8, 32)
    module = layers.ALiBiPositionalBias(8, 32)
    module.load_state_dict(reference.state_dict())
    torch.testing.assert_close(module(16, 16), reference(16, 16))  # olm's symmetric form


def test_t5_bias_table_is_a_parameter_and_gets_gradients():
    module = layers.T5RelativePositionBias(4, 16, 32, seed=1)
    reference = core.T5RelativePositionBias(4, 16, 32, seed=1, xp=torch, dtype=torch.float32)
    torch.testing.assert_close(module(5, 7), reference(5, 7), rtol=0, atol=0)
    assert list(module.state_dict()) == ["relative_attention_bias.weight"]
    module(5, 7).sum().backward()
    grad = module.relative_attention_bias.weight.grad
    assert float(grad.sum()) == 4 * 5 * 7  # every (head, query, key) reads one table entry
    with pytest.raises(ValueError, match=r"relative_attention_bias.weight must have shape"):
        module.load_state_dict({"relative_attention_bias.weight": torch.zeros(32, 4)})


@pytest.mark.parametrize("name", ["ALiBiPositionalBias", "T5RelativePositionBias"])
def test_bias_layers_under_fullgraph_compile(name):
    torch._dynamo.reset()
    module = getattr(layers, name)(4)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(5, 8), module(5, 8), rtol=0, atol=0)
