"""A reference scaled dot-product attention, written against the array API standard.

This is a *reference*, not a kernel: it materialises the ``(batch, heads, q, k)`` scores and
runs on every backend (NumPy, PyTorch, JAX, CuPy, array-api-strict), so that tests -- and
readers -- can see exactly how a positional scheme enters attention. For speed use the
backend's fused kernel (``torch.nn.functional.scaled_dot_product_attention``,
``jax.nn.dot_product_attention``, FlashAttention), which takes the same ``bias``.

Where each scheme goes:

* absolute / sinusoidal embeddings: added to the token embeddings before ``q, k, v`` are
  projected (``forward(x)`` of their classes);
* RoPE: rotates ``q`` and ``k`` (by their own positions) before this function;
* ALiBi and the T5 bias: the ``bias`` argument, added to the scores.

With a KV cache, ``q`` holds the new tokens and ``k``/``v`` every token so far; the queries are
the *last* ``q`` positions, which is where the ``causal`` mask and both biases put them.
"""

from __future__ import annotations

import math

from olm_xp._compat import array_namespace, compute_dtype, device_of, traced_on_jax
from olm_xp._relative import relative_positions
from olm_xp._typing import Array, ArrayNamespace
from olm_xp._validation import (
    check_attention_bias,
    check_attention_inputs,
    check_bool,
    check_positive_number,
)

__all__ = ["scaled_dot_product_attention"]


def scaled_dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    bias: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> Array:
    """``softmax(q @ k^T * scale + bias [+ causal mask]) @ v`` -- a reference implementation.

    Parameters
    ----------
    q
        Queries ``(batch, heads, seq_q, head_dim)`` (torch SDPA's layout).
    k, v
        Keys ``(batch, heads, seq_k, head_dim)`` and values ``(batch, heads, seq_k, value_dim)``.
    bias
        Optional additive floating bias that broadcasts to the scores
        ``(batch, heads, seq_q, seq_k)``: ALiBi's ``(1, heads, q, k)`` or row-constant
        ``(1, heads, 1, k)``, the T5 bias, or a ``0``/``-inf`` padding mask.
    causal
        Mask the keys after each query. The queries are the last ``seq_q`` of the ``seq_k``
        positions (query ``i`` sits at position ``seq_k - seq_q + i``: a KV-cache decode step
        sees every cached key), so ``seq_q <= seq_k`` is required.
    scale
        Multiplies ``q @ k^T``; default ``1 / sqrt(head_dim)`` (T5 uses ``1.0``).

    Returns
    -------
    ``(batch, heads, seq_q, value_dim)`` in ``q``/``k``/``v``'s namespace and device and their
    promoted dtype, computed in at least float32 with a max-subtracted softmax. A row whose
    every key is masked (by ``bias``) is NaN, as in a plain softmax. No value-dependent
    control flow: runs under ``jax.jit`` and ``torch.compile``.
    """
    xp = array_namespace(q, k, v, bias)
    check_attention_inputs(xp, q, k, v)
    causal = check_bool("causal", causal)
    batch, heads, seq_len_q, head_dim = (int(n) for n in q.shape)
    seq_len_k = int(k.shape[2])
    if causal and seq_len_q > seq_len_k:
        raise ValueError(
            f"causal attention needs seq_len_q <= seq_len_k (the queries are the last seq_len_q "
            f"positions); got q with seq_len_q={seq_len_q} and k with seq_len_k={seq_len_k}"
        )
    scale = 1.0 / math.sqrt(head_dim) if scale is None else check_positive_number("scale", scale)
    if bias is not None:
        check_attention_bias(xp, bias, (batch, heads, seq_len_q, seq_len_k))
    return traced_on_jax(_attention, xp, q, k, v, bias, causal=causal, scale=scale)


def _attention(
    q: Array,
    k: Array,
    v: Array,
    bias: Array | None,
    *,
    xp: ArrayNamespace,
    causal: bool,
    scale: float,
) -> Array:
    """:func:`scaled_dot_product_attention` for checked arguments."""
    seq_len_q, seq_len_k = int(q.shape[2]), int(k.shape[2])
    out_dtype = xp.result_type(q.dtype, k.dtype, v.dtype)
    work = compute_dtype(xp, out_dtype)
    qw, kw, vw = (xp.astype(a, work, copy=False) for a in (q, k, v))
    scores = xp.matmul(qw, xp.matrix_transpose(kw)) * scale
    if bias is not None:
        scores = scores + xp.astype(bias, work, copy=False)
    if causal:
        device = device_of(q)
        relative = relative_positions(xp, seq_len_q, seq_len_k, None, None, device=device)
        minus_inf = xp.asarray(-math.inf, dtype=work, device=device)
        scores = xp.where(relative <= 0, scores, minus_inf)
    weights = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
    weights = weights / xp.sum(weights, axis=-1, keepdims=True)
    return xp.astype(xp.matmul(weights, vw), out_dtype, copy=False)
