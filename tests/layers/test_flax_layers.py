"""``olm_xp.layers.flax``: ``flax.nnx`` modules for every positional class.

Same numbers as the core on JAX, ``nnx.Param`` tables under olm's keys, dropout through
``nnx.Rngs`` (and a clear error without them), ``nnx.jit`` and ``nnx.grad``, state dicts to and
from torch/NumPy.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
from layer_cases import BIAS_CLASSES, CASES, CLASSES, POSITION_MODES, positions

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
import jax.numpy as jnp  # noqa: E402

from olm_xp.layers import flax as layers  # noqa: E402
from olm_xp.nn.embeddings import positional as core  # noqa: E402

CASE_IDS = [layer.id for layer in CASES]


@pytest.fixture(autouse=True)
def _x32():
    """Run with JAX's default (x64 off) whatever profile ran before, and restore it."""
    with jax.enable_x64(False):
        yield


def _pair(layer):
    """(core object on JAX, Flax module) built from the same case."""
    if layer.learned:
        mine = getattr(core, layer.cls)(*layer.args, xp=jnp, dtype=jnp.float32, seed=3)
        return mine, getattr(layers, layer.cls)(*layer.args, seed=3)
    kwargs = dict(layer.kwargs)
    return getattr(core, layer.cls)(*layer.args, **kwargs), getattr(layers, layer.cls)(
        *layer.args, **kwargs
    )


def _jax_positions(mode, rng):
    p = positions(mode, rng)
    return jnp.asarray(p, dtype=jnp.int32) if isinstance(p, np.ndarray) else p


def test_every_class_has_a_flax_module_with_the_core_signature():
    every = [name for name in core.__all__ if name != "PositionalEmbeddingBase"]
    assert sorted(every) == sorted(CLASSES + BIAS_CLASSES)  # a layer for every core class
    for name in every:
        cls = getattr(layers, name)
        assert issubclass(cls, nnx.Module), name
        core_params = list(inspect.signature(getattr(core, name)).parameters)
        mine = list(inspect.signature(cls).parameters)
        olm_positional = [p for p in core_params if p not in ("xp", "device", "dtype", "seed")]
        assert mine[: len(olm_positional)] == olm_positional, name
    assert set(every) <= set(layers.__all__)


@pytest.mark.parametrize("mode", POSITION_MODES)
@pytest.mark.parametrize("layer", CASES, ids=CASE_IDS)
def test_same_numbers_as_the_core_eager_and_under_nnx_jit(layer, mode):
    if layer.adds and mode == "offset":
        pytest.skip("absolute and sinusoidal embeddings take position arrays, not offsets")
    rng = np.random.default_rng(0)
    mine, module = _pair(layer)
    x = jnp.asarray(layer.input(rng))
    pos = _jax_positions(mode, rng)
    expected = np.asarray(mine.eval()(x, pos))
    module.eval()
    got = module(x, pos)
    assert got.dtype == x.dtype
    assert got.shape == x.shape
    np.testing.assert_array_equal(np.asarray(got), expected)
    if mode == "batched":
        jitted = nnx.jit(lambda m, x, p: m(x, p))(module, x, pos)
        np.testing.assert_allclose(np.asarray(jitted), expected, rtol=0, atol=2e-6)


def test_learned_table_is_an_nnx_param_under_olms_key():
    module = layers.AbsolutePositionalEmbedding(16, 4, rngs=nnx.Rngs(0))
    params = nnx.state(module, nnx.Param)
    assert [".".join(map(str, path)) for path, _ in nnx.to_flat_state(params)] == [
        "pos_embedding.weight"
    ]
    assert list(module.state_dict()) == ["pos_embedding.weight"]
    assert module.pos_embedding.weight.dtype == jnp.float32
    a = layers.AbsolutePositionalEmbedding(16, 4, rngs=nnx.Rngs(params=1))
    b = layers.AbsolutePositionalEmbedding(16, 4, rngs=nnx.Rngs(params=1))
    np.testing.assert_array_equal(a.pos_embedding.weight[...], b.pos_embedding.weight[...])
    seeded = layers.AbsolutePositionalEmbedding(16, 4, seed=5)
    reference = core.AbsolutePositionalEmbedding(16, 4, seed=5, dtype=np.float32)
    np.testing.assert_array_equal(
        np.asarray(seeded.pos_embedding.weight[...]), reference.pos_embedding.weight
    )
    with pytest.raises(TypeError, match=r"needs randomness to initialise pos_embedding.weight"):
        layers.AbsolutePositionalEmbedding(16, 4)


def test_configuration_is_readable():
    module = layers.Llama3RotaryPositionalEmbedding(8, max_seq_len=64)
    assert module.head_dim == 8
    assert module.factor == 8.0
    assert module.rope_type == "llama3"
    hf = layers.RotaryPositionalEmbedding.from_hf(
        {"rope_type": "linear", "factor": 2.0}, head_dim=8, max_position_embeddings=64
    )
    assert isinstance(hf, layers.RotaryPositionalEmbedding)
    assert hf.interleaved is False


def test_nnx_grad_reaches_the_table_and_the_input():
    module = layers.AbsolutePositionalEmbedding(8, 4, seed=0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 4)), dtype=jnp.float32)
    pos = jnp.asarray([[0, 1, 1, 3, 7], [2, 2, 2, 0, 1]])

    def loss(module, x, pos):
        return jnp.sum(module(x, pos) ** 2)

    grads = nnx.grad(loss, argnums=(0, 1))(module, x, pos)
    table = np.asarray(module.pos_embedding.weight[...])
    out = np.asarray(x) + table[np.asarray(pos)]
    expected = np.zeros_like(table)
    np.add.at(expected, np.asarray(pos), 2 * out)  # repeated positions accumulate
    np.testing.assert_allclose(np.asarray(grads[0].pos_embedding.weight[...]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]), 2 * out, rtol=1e-6)
    jitted = nnx.jit(nnx.grad(loss))(module, x, pos)
    np.testing.assert_allclose(
        np.asarray(jitted.pos_embedding.weight[...]), expected, rtol=1e-6, atol=1e-6
    )


def test_nnx_grad_through_rope_and_sinusoidal():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 5, 2, 8)), dtype=jnp.float32)
    rope = layers.ScaledRotaryPositionalEmbedding(8, 32, scaling_type="xpos")
    g = jax.grad(lambda x: jnp.sum(rope(x, role="key") * 1.5))(x)
    assert g.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(g)))
    sinusoidal = layers.SinusoidalPositionalEmbedding(8)
    gs = nnx.jit(jax.grad(lambda x: jnp.sum(sinusoidal(x[:, :, 0]))))(x)
    np.testing.assert_array_equal(np.asarray(gs[:, :, 0]), np.ones((1, 5, 8), np.float32))


# -- dropout -----------------------------------------------------------------------------------
def test_dropout_uses_nnx_rngs_in_train_mode_only():
    module = layers.SinusoidalPositionalEmbedding(
        8, dropout=0.5, rngs=nnx.Rngs(params=0, dropout=1)
    )
    x = jnp.ones((4, 16, 8))
    clean = np.asarray(module(x, deterministic=True))

    @nnx.jit
    def step(module, x):
        return module(x)

    first, second = np.asarray(step(module, x)), np.asarray(step(module, x))
    assert not np.array_equal(first, second)  # nnx.jit carries the RNG state: fresh masks
    kept = first != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(first[kept], 2 * clean[kept], rtol=1e-6)
    module.eval()
    np.testing.assert_array_equal(np.asarray(step(module, x)), clean)
    with pytest.raises(TypeError, match=r"'dropout' \(or 'default'\) stream"):
        layers.AbsolutePositionalEmbedding(8, 4, dropout=0.1, rngs=nnx.Rngs(params=0))


def test_dropout_without_rngs_is_a_clear_error():
    module = layers.SinusoidalPositionalEmbedding(8, dropout=0.1)
    x = jnp.ones((1, 3, 8))
    with pytest.raises(TypeError, match=r"dropout=0.1 and is in training mode.*rngs=nnx.Rngs"):
        module(x)
    with pytest.raises(TypeError, match="needs randomness"):
        nnx.jit(lambda m, x: m(x))(module, x)
    assert module(x, rngs=jax.random.key(0)).shape == x.shape  # per-call randomness
    assert module(x, deterministic=True).shape == x.shape
    module.eval()
    np.testing.assert_array_equal(np.asarray(module(x)), np.asarray(module(x)))


# -- state dicts -------------------------------------------------------------------------------
def test_state_dict_round_trip_with_torch_and_numpy():
    torch = pytest.importorskip("torch")
    from olm_xp.layers import torch as torch_layers

    source = torch_layers.AbsolutePositionalEmbedding(6, 4, seed=2)
    module = layers.AbsolutePositionalEmbedding(6, 4, rngs=nnx.Rngs(0))
    module.load_state_dict(source.state_dict())
    np.testing.assert_array_equal(
        np.asarray(module.pos_embedding.weight[...]), source.pos_embedding.weight.detach().numpy()
    )
    back = torch_layers.AbsolutePositionalEmbedding(6, 4)
    back.load_state_dict(module.state_dict())
    assert torch.equal(back.pos_embedding.weight, source.pos_embedding.weight)
    module.load_state_dict({"pos_embedding.weight": np.ones((6, 4))})  # float64 -> float32
    assert module.pos_embedding.weight.dtype == jnp.float32


def test_state_dict_errors_are_clear_and_leave_the_module_unchanged():
    module = layers.AbsolutePositionalEmbedding(6, 4, seed=0)
    before = np.asarray(module.pos_embedding.weight[...]).copy()
    bad = [
        ({"pos_embedding.wieght": np.zeros((6, 4))}, ValueError, r"missing \['pos_embedding"),
        ({"pos_embedding.weight": np.zeros((5, 4))}, ValueError, r"shape \(6, 4\); got \(5, 4\)"),
        ({"pos_embedding.weight": np.zeros((6, 4), np.int64)}, TypeError, "floating"),
    ]
    for state, error, match in bad:
        with pytest.raises(error, match=match):
            module.load_state_dict(state)
    np.testing.assert_array_equal(np.asarray(module.pos_embedding.weight[...]), before)


def test_loading_from_another_device_needs_map_location():
    torch = pytest.importorskip("torch")
    module = layers.AbsolutePositionalEmbedding(6, 4, seed=0)
    on_meta = {"pos_embedding.weight": torch.empty(6, 4, device="meta")}
    with pytest.raises(ValueError, match=r"is on device 'meta' but .* on 'cpu'.*map_location"):
        module.load_state_dict(on_meta)
    with pytest.raises(ValueError, match=r"map_location='cuda:0' but .* on 'cpu'"):
        module.load_state_dict({"pos_embedding.weight": np.zeros((6, 4))}, map_location="cuda")
    module.load_state_dict({"pos_embedding.weight": np.zeros((6, 4))}, map_location="cpu")
    # Every JAX CPU device is host memory: no map_location needed.
    other = jax.devices("cpu")[-1]
    module.load_state_dict({"pos_embedding.weight": jax.device_put(jnp.ones((6, 4)), other)})


def test_modules_copy():
    rope = layers.RotaryPositionalEmbedding(8, 32)
    q = jnp.ones((1, 3, 2, 8))
    np.testing.assert_array_equal(np.asarray(copy.deepcopy(rope)(q)), np.asarray(rope(q)))
    module = layers.AbsolutePositionalEmbedding(6, 4, seed=0)
    clone = nnx.clone(module)
    clone.pos_embedding.weight[...] = jnp.zeros((6, 4))
    assert float(jnp.abs(module.pos_embedding.weight[...]).sum()) > 0


# -- attention biases ----------------------------------------------------------------------------
def test_alibi_matches_the_core_eager_and_under_nnx_jit():
    module = layers.ALiBiPositionalBias(6, 64, causal=True)
    reference = core.ALiBiPositionalBias(6, 64, causal=True, xp=jnp, dtype=jnp.float32)
    expected = np.asarray(reference(4, 9))
    np.testing.assert_array_equal(np.asarray(module(4, 9)), expected)
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m: m(4, 9))(module)), expected)
    assert module.state_dict() == {}


def test_t5_bias_table_is_an_nnx_param_and_gets_gradients():
    module = layers.T5RelativePositionBias(4, 16, 32, seed=1)
    reference = core.T5RelativePositionBias(4, 16, 32, seed=1, xp=jnp, dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(module(5, 7)), np.asarray(reference(5, 7)))
    assert list(module.state_dict()) == ["relative_attention_bias.weight"]
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(5, 7))))(module)
    assert float(grads.relative_attention_bias.weight[...].sum()) == 4 * 5 * 7
    with pytest.raises(TypeError, match="needs randomness"):
        layers.T5RelativePositionBias(4)
