"""Decoding with a KV cache equals the full causal pass, for every positional scheme.

One attention layer, written with the reference :func:`olm_xp.scaled_dot_product_attention`:
token embeddings ``x`` get the scheme's embedding (absolute, sinusoidal), are projected to
``q, k, v`` (``(batch, heads, seq, head_dim)``), ``q`` and ``k`` get the scheme's rotation
(RoPE), and the scores get the scheme's bias (ALiBi, T5). The full pass runs all ``T`` tokens at
once; the cached pass runs a prefill chunk and then one token at a time, appending ``k``/``v``
to the cache and passing the new tokens' positions. Both must give the same outputs.

A scheme is one :class:`Scheme` entry in :data:`SCHEMES`: ``build`` makes its module(s) for a
case, and up to three hooks say where it enters -- ``embed(state, x, positions)`` on
``(batch, n, EMBED)`` token embeddings, ``rotate(state, q, k, positions)`` on ``q``/``k`` of
shape ``(batch, HEADS, n, HEAD_DIM)`` (RoPE), ``bias(state, seq_len_q, seq_len_k)`` for the
scores. ``positions`` are the new tokens' integer positions, shape ``(n,)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from olm_xp import scaled_dot_product_attention
from olm_xp._compat import to_numpy
from olm_xp.nn.embeddings.positional import (
    AbsolutePositionalEmbedding,
    ALiBiPositionalBias,
    RotaryPositionalEmbedding,
    ScaledRotaryPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    T5RelativePositionBias,
)

BATCH, HEADS, HEAD_DIM, EMBED = 2, 4, 8, 16
TOKENS, PREFILL = 5, 3  # full pass over 5 tokens; cached: a 3-token prefill, then 2 steps
DECODE_TOL_EPS = 16.0  # the same arithmetic in differently shaped matmuls and reductions


@dataclass(frozen=True)
class Scheme:
    """How one positional scheme enters attention (see the module docstring)."""

    build: Callable[[Any], Any]
    embed: Callable[[Any, Any, Any], Any] | None = None
    rotate: Callable[[Any, Any, Any, Any], tuple[Any, Any]] | None = None
    bias: Callable[[Any, int, int], Any] | None = None
    scale: float | None = None


def _placed(case) -> dict[str, Any]:
    return {"xp": case.xp, "device": case.device, "dtype": case.dtype}


SCHEMES: dict[str, Scheme] = {
    "absolute": Scheme(
        build=lambda case: AbsolutePositionalEmbedding(TOKENS, EMBED, seed=0, **_placed(case)),
        embed=lambda module, x, positions: module(x, positions),
    ),
    "sinusoidal": Scheme(
        build=lambda case: SinusoidalPositionalEmbedding(EMBED),
        embed=lambda module, x, positions: module(x, positions),
    ),
    # olm's symmetric form under the attention's causal mask.
    "alibi": Scheme(
        build=lambda case: ALiBiPositionalBias(HEADS, **_placed(case)),
        bias=lambda module, seq_len_q, seq_len_k: module(seq_len_q, seq_len_k),
    ),
    # The row-constant (1, heads, 1, k) form: only correct together with the causal mask.
    "alibi-row-constant": Scheme(
        build=lambda case: ALiBiPositionalBias(HEADS, causal=True, **_placed(case)),
        bias=lambda module, seq_len_q, seq_len_k: module(seq_len_q, seq_len_k, broadcastable=True),
    ),
    # T5's decoder bias (unscaled logits, as T5 computes them).
    "t5-causal": Scheme(
        build=lambda case: T5RelativePositionBias(
            HEADS, num_buckets=6, max_distance=5, bidirectional=False, seed=0, **_placed(case)
        ),
        bias=lambda module, seq_len_q, seq_len_k: module(seq_len_q, seq_len_k),
        scale=1.0,
    ),
    # RoPE on q and k laid out (batch, heads, seq, head_dim): seq_axis=2, both layouts.
    "rope": Scheme(
        build=lambda case: RotaryPositionalEmbedding(HEAD_DIM, TOKENS, seq_axis=2),
        rotate=lambda module, q, k, positions: (module(q, positions), module(k, positions)),
    ),
    "rope-half-split-yarn": Scheme(
        build=lambda case: RotaryPositionalEmbedding.from_hf(
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2},
            head_dim=HEAD_DIM,
            max_position_embeddings=TOKENS,
            seq_axis=2,
        ),
        rotate=lambda module, q, k, positions: (module(q, positions), module(k, positions)),
    ),
    "xpos": Scheme(
        build=lambda case: ScaledRotaryPositionalEmbedding(
            HEAD_DIM, TOKENS, scaling_type="xpos", xpos_scale_base=8, seq_axis=2
        ),
        rotate=lambda module, q, k, positions: (
            module(q, positions, role="query"),
            module(k, positions, role="key"),
        ),
    ),
}


def _layer(case, scheme: Scheme, state: Any, weights: Any) -> Callable[..., Any]:
    """The attention layer for new tokens ``x`` at ``start``, given the cached ``k``/``v``."""
    xp = case.xp

    def heads_first(a: Any, n: int) -> Any:  # (batch, n, heads*dim) -> (batch, heads, n, dim)
        return xp.permute_dims(xp.reshape(a, (BATCH, n, HEADS, HEAD_DIM)), (0, 2, 1, 3))

    def step(x: Any, positions: Any, cached_k: Any, cached_v: Any, *, start: int) -> Any:
        n = x.shape[1]
        if scheme.embed is not None:
            x = scheme.embed(state, x, positions)
        q, k, v = (heads_first(xp.matmul(x, w), n) for w in weights)
        if scheme.rotate is not None:
            q, k = scheme.rotate(state, q, k, positions)
        if cached_k is not None:
            k = xp.concat([cached_k, k], axis=2)
            v = xp.concat([cached_v, v], axis=2)
        bias = None if scheme.bias is None else scheme.bias(state, n, start + n)
        out = scaled_dot_product_attention(q, k, v, bias=bias, causal=True, scale=scheme.scale)
        return out, k, v

    return step


def _full_and_cached(step: Callable[..., Any], xp: Any, x: Any, *positions: Any) -> Any:
    """The full pass over every token, and the cached pass: a prefill chunk, then one token
    at a time. ``positions``: every token's, the prefill's, then each decode step's."""
    full, _, _ = step(x, positions[0], None, None, start=0)
    out, cached_k, cached_v = step(x[:, :PREFILL, :], positions[1], None, None, start=0)
    outputs = [out]
    for t, step_positions in zip(range(PREFILL, TOKENS), positions[2:], strict=True):
        x_t = x[:, t : t + 1, :]
        out, cached_k, cached_v = step(x_t, step_positions, cached_k, cached_v, start=t)
        outputs.append(out)
    return full, xp.concat(outputs, axis=2)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_decoding_with_a_kv_cache_equals_the_full_pass(placement, name, rng):
    case = placement
    scheme = SCHEMES[name]
    state = scheme.build(case)
    if hasattr(state, "eval"):
        state.eval()
    weights = [
        case.asarray(rng.standard_normal((EMBED, HEADS * HEAD_DIM)) / np.sqrt(EMBED))
        for _ in range(3)
    ]
    x = case.asarray(rng.standard_normal((BATCH, TOKENS, EMBED)))
    step = _layer(case, scheme, state, weights)
    positions = [case.positions(np.arange(TOKENS)), case.positions(np.arange(PREFILL))]
    positions += [case.positions(np.arange(t, t + 1)) for t in range(PREFILL, TOKENS)]
    run = functools.partial(_full_and_cached, step, case.xp)
    if case.profile.jit == "jax":  # one trace of both passes (eager JAX is tested elsewhere)
        import jax

        run = jax.jit(run)
    full, cached = run(x, *positions)

    case.check_placement(full, (BATCH, HEADS, TOKENS, HEAD_DIM))
    case.check_placement(cached, (BATCH, HEADS, TOKENS, HEAD_DIM))
    if case.shape_only:
        return
    error = case.error_eps(cached, to_numpy(full).astype(np.float64))
    assert error <= DECODE_TOL_EPS, f"cached pass off by {error:.3g} eps ({name}, {case.id})"
    if case.profile.module != "numpy":
        return
    # The scheme did something: position-free attention gives a different answer.
    plain = Scheme(build=scheme.build, scale=scheme.scale)
    without, _, _ = _layer(case, plain, state, weights)(x, positions[0], None, None, start=0)
    assert case.error_eps(without, to_numpy(full).astype(np.float64)) > 1000
