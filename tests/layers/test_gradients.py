"""Gradients through the core, without the layers: torch autograd and ``jax.grad``.

For the learned table and for ``x``, checked against finite differences in float64:
``torch.autograd.gradcheck`` on torch tensors, and on JAX a central difference along random
directions compared with ``jax.grad``.
"""

from __future__ import annotations

import numpy as np
import pytest

from olm_xp import add_position_embeddings, rope, rope_inverse_frequencies, sinusoidal_table
from olm_xp.nn.embeddings import positional as core

ROPE_CLASSES = {
    "rope": lambda: core.RotaryPositionalEmbedding(8, 32),
    "rope-half-split-partial": lambda: core.RotaryPositionalEmbedding(
        8, 32, interleaved=False, rotary_dim=4
    ),
    "partial": lambda: core.PartialRotaryPositionalEmbedding(8, 0.5),
    "yarn": lambda: core.ScaledRotaryPositionalEmbedding(
        8, 32, scaling_type="yarn", scaling_factor=4.0, original_max_seq_len=8
    ),
    "dynamic": lambda: core.ScaledRotaryPositionalEmbedding(
        8, 4, scaling_type="dynamic_ntk", scaling_factor=2.0
    ),
    "xpos": lambda: core.ScaledRotaryPositionalEmbedding(8, 32, scaling_type="xpos"),
    "partial-scaled": lambda: core.PartialScaledRotaryPositionalEmbedding(
        8, 0.5, 32, scaling_type="ntk", scaling_factor=2.0
    ),
    "llama3": lambda: core.Llama3RotaryPositionalEmbedding(8, original_max_seq_len=4),
}
POSITIONS = np.array([[0, 3, 3, 7, 1], [5, 2, 2, 2, 9]])  # repeated positions accumulate


def _host(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


# -- torch ---------------------------------------------------------------------------------------
class TestTorch:
    @pytest.fixture(autouse=True)
    def _torch(self):
        self.torch = pytest.importorskip("torch")

    def _tensor(self, seed, shape):
        return self.torch.asarray(_host(seed, shape), dtype=self.torch.float64).requires_grad_()

    def test_add_position_embeddings_x_and_table(self):
        torch = self.torch
        x, table = self._tensor(0, (2, 5, 4)), self._tensor(1, (10, 4))
        for positions in (None, torch.asarray(POSITIONS), torch.asarray(POSITIONS[0])):
            assert torch.autograd.gradcheck(
                lambda x, t, p=positions: add_position_embeddings(x, t, p), (x, table)
            )

    def test_core_absolute_class_through_its_table(self):
        torch = self.torch
        module = core.AbsolutePositionalEmbedding(10, 4, xp=torch, dtype=torch.float64, seed=0)
        module.eval()
        table = module.pos_embedding.weight.requires_grad_()
        x = self._tensor(2, (2, 5, 4))
        assert torch.autograd.gradcheck(
            lambda x, t: module(x, torch.asarray(POSITIONS)), (x, table)
        )
        out = module(x, torch.asarray(POSITIONS))
        (grad,) = torch.autograd.grad(out.sum(), table)
        expected = np.zeros((10, 4))
        np.add.at(expected, POSITIONS, 1.0)
        np.testing.assert_array_equal(grad.numpy(), expected)

    def test_sinusoidal(self):
        torch = self.torch
        x = self._tensor(3, (2, 5, 6))
        module = core.SinusoidalPositionalEmbedding(6)
        assert torch.autograd.gradcheck(lambda x: module(x, torch.asarray(POSITIONS) + 100), (x,))
        pe = sinusoidal_table(torch.asarray(POSITIONS), 6, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda x: x * pe, (x,))

    @pytest.mark.parametrize("name", sorted(ROPE_CLASSES))
    def test_rope_classes(self, name):
        torch = self.torch
        module = ROPE_CLASSES[name]()
        x = self._tensor(4, (2, 5, 2, 8))
        positions = torch.asarray(POSITIONS)
        for role in ("query", "key"):
            assert torch.autograd.gradcheck(lambda x, r=role: module(x, positions, role=r), (x,))
        assert torch.autograd.gradcheck(lambda x: module(x, 3), (x,))

    def test_rope_function(self):
        torch = self.torch
        inv_freq, _factor = rope_inverse_frequencies(6, rope_type="linear", factor=2.0)
        x = self._tensor(5, (2, 5, 2, 8))
        for interleaved in (True, False):
            assert torch.autograd.gradcheck(
                lambda x, i=interleaved: rope(
                    x, torch.asarray(POSITIONS), inv_freq=inv_freq, interleaved=i
                ),
                (x,),
            )

    def test_torch_layers(self):
        torch = self.torch
        from olm_xp.layers import torch as layers

        module = layers.AbsolutePositionalEmbedding(10, 4, seed=0, dtype=torch.float64).eval()
        x, table = self._tensor(6, (2, 5, 4)), self._tensor(7, (10, 4))
        positions = torch.asarray(POSITIONS)
        assert torch.autograd.gradcheck(
            lambda x, t: torch.func.functional_call(
                module, {"pos_embedding.weight": t}, (x, positions)
            ),
            (x, table),
        )
        rotary = layers.ScaledRotaryPositionalEmbedding(8, 32, scaling_type="xpos")
        q = self._tensor(8, (2, 5, 2, 8))
        assert torch.autograd.gradcheck(lambda q: rotary(q, positions, role="key"), (q,))


# -- JAX -----------------------------------------------------------------------------------------
class TestJax:
    @pytest.fixture(autouse=True)
    def _x64(self):
        """float64 inside the test, whatever the profile; the previous setting is restored."""
        self.jax = pytest.importorskip("jax")
        import jax.numpy as jnp

        self.jnp = jnp
        with self.jax.enable_x64(True):
            yield

    def _check(self, f, *args, positions=None, directions=3, eps=1e-6, rtol=1e-7):
        """``jax.grad`` of ``sum(w * f(*args, positions))`` against central differences along
        random directions, for every argument (``positions`` is passed through, traced)."""
        jax, jnp = self.jax, self.jnp
        rng = np.random.default_rng(42)
        weights = jnp.asarray(rng.standard_normal(jax.eval_shape(f, *args, positions).shape))

        def loss(*a):
            return jnp.sum(weights * f(*a[:-1], a[-1]))

        argnums = tuple(range(len(args)))
        grads = jax.jit(jax.grad(loss, argnums=argnums))(*args, positions)
        loss = jax.jit(loss)
        for index, (arg, grad) in enumerate(zip(args, grads, strict=True)):
            assert grad.dtype == jnp.float64
            assert grad.shape == arg.shape
            for _ in range(directions):
                v = jnp.asarray(rng.standard_normal(arg.shape))
                plus = list(args)
                minus = list(args)
                plus[index] = arg + eps * v
                minus[index] = arg - eps * v
                numeric = (loss(*plus, positions) - loss(*minus, positions)) / (2 * eps)
                analytic = jnp.sum(grad * v)
                assert abs(float(numeric - analytic)) <= rtol * max(1.0, abs(float(analytic)))

    def test_add_position_embeddings_x_and_table(self):
        jnp = self.jnp
        x, table = jnp.asarray(_host(0, (2, 5, 4))), jnp.asarray(_host(1, (10, 4)))
        for positions in (None, jnp.asarray(POSITIONS), jnp.asarray(POSITIONS[1])):
            self._check(add_position_embeddings, x, table, positions=positions)

    def test_sinusoidal(self):
        jnp = self.jnp
        x = jnp.asarray(_host(3, (2, 5, 6)))
        module = core.SinusoidalPositionalEmbedding(6)
        self._check(module, x, positions=jnp.asarray(POSITIONS))
        pe = sinusoidal_table(jnp.asarray(POSITIONS) + 1000, 6, dtype=jnp.float64)
        self._check(lambda x, _: x * pe, x)

    @pytest.mark.parametrize("name", ["dynamic", "llama3", "rope-half-split-partial", "xpos"])
    def test_rope_classes(self, name):
        jnp = self.jnp
        module = ROPE_CLASSES[name]()
        x = jnp.asarray(_host(4, (2, 5, 2, 8)))
        self._check(lambda x, p: module(x, p, role="key"), x, positions=jnp.asarray(POSITIONS))

    def test_rope_function_both_layouts(self):
        jnp = self.jnp
        inv_freq, factor = rope_inverse_frequencies(
            6, rope_type="yarn", factor=4.0, original_max_position_embeddings=8
        )
        x = jnp.asarray(_host(5, (2, 5, 2, 8)))
        for interleaved in (True, False):
            self._check(
                lambda x, p, i=interleaved: rope(
                    x, p, inv_freq=inv_freq, attention_factor=factor, interleaved=i
                ),
                x,
                positions=jnp.asarray(POSITIONS),
            )

    def test_core_absolute_class_and_its_table(self):
        jnp = self.jnp
        module = core.AbsolutePositionalEmbedding(10, 4, xp=jnp, dtype=jnp.float64, seed=0)
        table = module.pos_embedding.weight
        x = jnp.asarray(_host(6, (2, 5, 4)))
        positions = jnp.asarray(POSITIONS)
        self._check(add_position_embeddings, x, table, positions=positions)
        self._check(module.eval(), x, positions=positions)
