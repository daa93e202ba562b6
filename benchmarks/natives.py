"""The native code olm_xp is compared with: the idioms people write by hand, per backend.

* RoPE, half-split: Hugging Face's ``rotate_half`` / ``apply_rotary_pos_emb`` (Llama): ``q *
  cos + rotate_half(q) * sin``, with ``cos``/``sin`` of width ``d`` in ``q``'s dtype. The torch
  version imports ``rotate_half`` from ``transformers``; the NumPy and ``jax.numpy`` versions
  are the same code transcribed.
* RoPE, interleaved: Hugging Face's GPT-J ``rotate_every_two`` (imported for torch), with the
  ``repeat_interleave``-d tables precomputed (HF repeats them on every call; we do not).
* Sinusoidal / learned absolute add: ``x + pe[:seq]`` and ``x + pe[positions]``
  (``F.embedding`` on torch, as GPT-2).
* ALiBi: the materialised ``-m_h * |i - j|`` bias as MPT/BLOOM-style code builds it.

Every native gets its tables precomputed in its own dtype, as a model would cache them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def host_tables(positions: np.ndarray, head_dim: int, base: float = 10000.0) -> tuple[Any, Any]:
    """float64 ``cos``/``sin`` of shape ``(n, head_dim/2)`` (rounded by the caller)."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions.astype(np.float64)[:, None] * inv_freq
    return np.cos(angles), np.sin(angles)


def widen(cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> tuple[Any, Any]:
    """HF-style width-``d`` tables: ``cat((c, c))`` (Llama) or ``repeat_interleave(c, 2)``."""
    if interleaved:
        return np.repeat(cos, 2, axis=-1), np.repeat(sin, 2, axis=-1)
    return np.concatenate((cos, cos), -1), np.concatenate((sin, sin), -1)


# -- torch --------------------------------------------------------------------------------------


def torch_rope(interleaved: bool) -> Any:
    """``q * cos + rotate(q) * sin`` with HF's own ``rotate_half`` / GPT-J ``rotate_every_two``."""
    if interleaved:
        from transformers.models.gptj.modeling_gptj import rotate_every_two as rotate
    else:
        from transformers.models.llama.modeling_llama import rotate_half as rotate

    def rope(q: Any, cos: Any, sin: Any) -> Any:
        return (q * cos) + (rotate(q) * sin)

    return rope


def torch_decode(interleaved: bool) -> Any:
    """One decode step as HF models do it: look the position's row up in the cached table,
    ``unsqueeze`` it for the heads axis, rotate."""
    rope = torch_rope(interleaved)

    def step(q: Any, cos_cached: Any, sin_cached: Any, position: Any) -> Any:
        cos = cos_cached[position].unsqueeze(2)  # (batch, seq, 1, d)
        sin = sin_cached[position].unsqueeze(2)
        return rope(q, cos, sin)

    return step


# -- jax.numpy ----------------------------------------------------------------------------------


def jax_rope(interleaved: bool) -> Any:
    import jax.numpy as jnp

    def rotate_half(x: Any) -> Any:
        half = x.shape[-1] // 2
        return jnp.concatenate((-x[..., half:], x[..., :half]), axis=-1)

    def rotate_every_two(x: Any) -> Any:
        x1 = x[..., ::2]
        x2 = x[..., 1::2]
        return jnp.stack((-x2, x1), axis=-1).reshape(x.shape)

    rotate = rotate_every_two if interleaved else rotate_half

    def rope(q: Any, cos: Any, sin: Any) -> Any:
        return (q * cos) + (rotate(q) * sin)

    return rope


def jax_decode(interleaved: bool) -> Any:
    import jax.numpy as jnp

    rope = jax_rope(interleaved)

    def step(q: Any, cos_cached: Any, sin_cached: Any, position: Any) -> Any:
        cos = jnp.take(cos_cached, position, axis=0)[:, :, None, :]
        sin = jnp.take(sin_cached, position, axis=0)[:, :, None, :]
        return rope(q, cos, sin)

    return step


# -- NumPy ----------------------------------------------------------------------------------------


def numpy_rope(interleaved: bool) -> Any:
    def rotate_half(x: Any) -> Any:
        half = x.shape[-1] // 2
        return np.concatenate((-x[..., half:], x[..., :half]), axis=-1)

    def rotate_every_two(x: Any) -> Any:
        x1 = x[..., ::2]
        x2 = x[..., 1::2]
        return np.stack((-x2, x1), axis=-1).reshape(x.shape)

    rotate = rotate_every_two if interleaved else rotate_half

    def rope(q: Any, cos: Any, sin: Any) -> Any:
        return (q * cos) + (rotate(q) * sin)

    return rope


def numpy_decode(interleaved: bool) -> Any:
    rope = numpy_rope(interleaved)

    def step(q: Any, cos_cached: Any, sin_cached: Any, position: Any) -> Any:
        return rope(q, cos_cached[position][:, :, None, :], sin_cached[position][:, :, None, :])

    return step


# -- ALiBi ----------------------------------------------------------------------------------------


def alibi_slopes(heads: int) -> list[float]:
    """The paper's slopes for a power-of-two head count."""
    start = 2.0 ** (-8.0 / heads)
    return [start ** (i + 1) for i in range(heads)]


def torch_alibi(heads: int, q: int, k: int, device: str) -> Any:
    """MPT/BLOOM-style materialised bias ``(1, heads, q, k)``."""
    import torch

    slopes = torch.tensor(alibi_slopes(heads), device=device).view(1, heads, 1, 1)
    relative = torch.arange(k, device=device)[None, :] - torch.arange(q, device=device)[:, None]
    return -slopes * relative.abs()[None, None]


def jax_alibi(heads: int, q: int, k: int) -> Any:
    import jax.numpy as jnp

    slopes = jnp.asarray(alibi_slopes(heads), dtype=jnp.float32).reshape(1, heads, 1, 1)
    relative = jnp.arange(k)[None, :] - jnp.arange(q)[:, None]
    return -slopes * jnp.abs(relative)[None, None]


def numpy_alibi(heads: int, q: int, k: int) -> Any:
    slopes = np.asarray(alibi_slopes(heads), dtype=np.float32).reshape(1, heads, 1, 1)
    relative = np.arange(k)[None, :] - np.arange(q)[:, None]
    return -slopes * np.abs(relative).astype(np.float32)[None, None]
