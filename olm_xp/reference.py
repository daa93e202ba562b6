"""Float64 NumPy reference implementations, written straight from the formulas.

This module is the oracle for the conformance tests and for ``olm-xp compare``. It shares no
code with the implementations it checks (it imports nothing from ``olm_xp``), favours the
literal formula over speed, and works in float64 throughout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "absolute_reference",
    "alibi_reference",
    "alibi_slopes_reference",
    "attention_reference",
    "float64_allowance_eps",
    "rope_frequencies_reference",
    "rope_reference",
    "sinusoidal_reference",
    "t5_bias_reference",
    "t5_bucket_reference",
]

Float64Array = np.ndarray[Any, np.dtype[np.float64]]


def sinusoidal_reference(positions: Any, embed_dim: int, base: float = 10000.0) -> Float64Array:
    """Vaswani et al.: ``PE[p, 2i] = sin(p / base**(2i/D))``, ``PE[p, 2i+1] = cos(...)``.

    ``positions`` is an int ``n`` (for ``0..n-1``) or an integer array of any shape ``S``;
    the result has shape ``(n, D)`` or ``(*S, D)``. For odd ``D`` the last column is a sine.
    """
    p = np.arange(positions) if isinstance(positions, int) else np.asarray(positions)
    p = p.astype(np.float64)
    out = np.empty((*p.shape, embed_dim), dtype=np.float64)
    for column in range(embed_dim):
        i = column // 2
        angle = p / base ** (2 * i / embed_dim)
        out[..., column] = np.sin(angle) if column % 2 == 0 else np.cos(angle)
    return out


def float64_allowance_eps(max_angle: float) -> float:
    """Extra tolerance, in float64 eps, when a float64 result is compared with this reference.

    A float64 reference is not exact for a float64 result: both compute an angle ``p * w`` in
    float64, each off by up to ``|angle| * 2**-53`` radians, so sines of angles up to
    ``max_angle`` may differ by about ``max_angle`` eps plus their own rounding. For float32 and
    narrower dtypes the reference is exact to far below the result's eps and needs no allowance.
    """
    return 2.0 * max_angle + 2.0


def absolute_reference(x: Any, table: Any, positions: Any = None) -> Float64Array:
    """``x + table[positions]`` in float64; ``positions=None`` means ``0..seq-1``."""
    x = np.asarray(x, dtype=np.float64)
    table = np.asarray(table, dtype=np.float64)
    p = np.arange(x.shape[1]) if positions is None else np.asarray(positions)
    return np.asarray(x + table[p], dtype=np.float64)


def rope_frequencies_reference(
    rotary_dim: int, rope_type: str = "default", base: float = 10000.0, **params: Any
) -> tuple[Float64Array, float]:
    """RoPE inverse frequencies ``w_i`` (one per pair ``i < d/2``) and the attention factor,
    transcribed pair by pair from the papers and Hugging Face's ``modeling_rope_utils``."""
    d = rotary_dim
    pairs = range(d // 2)
    plain = [1.0 / base ** (2 * i / d) for i in pairs]
    if rope_type == "default":
        return np.array(plain), 1.0
    if rope_type == "linear":  # Chen et al.: positions divided by the factor
        return np.array([w / params["factor"] for w in plain]), 1.0
    if rope_type in ("ntk", "dynamic"):  # bloc97 / emozilla: a larger base
        s = params["factor"]
        if rope_type == "dynamic":
            l0 = params["original_max_position_embeddings"]
            length = max(params.get("seq_len") or l0, l0)
            s = s * length / l0 - (s - 1)
        new_base = base * s ** (d / (d - 2))
        return np.array([1.0 / new_base ** (2 * i / d) for i in pairs]), 1.0
    if rope_type == "yarn":  # Peng et al. 2023, as HF implements it
        s, l0 = params["factor"], params["original_max_position_embeddings"]
        fast, slow = params.get("beta_fast", 32.0), params.get("beta_slow", 1.0)

        def dim_for(rotations: float) -> float:
            return d * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = dim_for(fast), dim_for(slow)
        if params.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001
        out = []
        for i, w in enumerate(plain):
            gamma = min(max((i - low) / (high - low), 0.0), 1.0)  # 0: keep, 1: divide by s
            out.append(w * (1 - gamma) + (w / s) * gamma)

        def mscale(m: float) -> float:
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        factor = params.get("attention_factor")
        if factor is None:
            m, m_all = params.get("mscale"), params.get("mscale_all_dim")
            factor = mscale(m) / mscale(m_all) if m and m_all else mscale(1.0)
        return np.array(out), factor
    if rope_type == "longrope":  # Phi-3: per-pair rescaling, long factors past L0
        l0 = params["original_max_position_embeddings"]
        seq_len = params.get("seq_len")
        rescale = params["long_factor"] if seq_len and seq_len > l0 else params["short_factor"]
        s = params["factor"]
        factor = params.get("attention_factor")
        if factor is None:
            factor = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(l0))
        return np.array([w / r for w, r in zip(plain, rescale, strict=True)]), factor
    if rope_type == "llama3":  # Meta's Llama 3.1 frequency bands
        s, l0 = params.get("factor", 8.0), params.get("original_max_position_embeddings", 8192)
        lo, hi = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
        out = []
        for w in plain:
            wavelength = 2 * math.pi / w
            if wavelength < l0 / hi:
                out.append(w)
            elif wavelength > l0 / lo:
                out.append(w / s)
            else:
                t = (l0 / wavelength - lo) / (hi - lo)
                out.append((1 - t) * w / s + t * w)
        return np.array(out), 1.0
    raise ValueError(f"unknown rope_type {rope_type!r}")


def rope_reference(
    x: Any,
    positions: Any,
    inv_freq: Any,
    *,
    interleaved: bool = True,
    attention_factor: float = 1.0,
    xpos: tuple[float, float, int] | None = None,
) -> Float64Array:
    """RoPE on ``x`` of shape ``(batch, seq, heads, head_dim)`` in float64, pair by pair.

    ``positions`` is ``(seq,)`` or ``(batch, seq)``; ``inv_freq`` has ``d/2`` entries and only
    the first ``d`` features rotate. Pair ``i`` is ``(x[2i], x[2i+1])`` when ``interleaved``,
    else ``(x[i], x[i + d/2])``; it turns by ``p * w_i`` and is scaled by ``attention_factor``
    (and, with ``xpos=(gamma, center, sign)``, by ``zeta_i ** (sign * (p - center) / gamma)``).
    """
    x = np.asarray(x, dtype=np.float64)
    batch, seq, _, _ = x.shape
    p = np.broadcast_to(np.asarray(positions, dtype=np.float64), (batch, seq))
    w = np.asarray(inv_freq, dtype=np.float64)
    half = w.shape[0]
    d = 2 * half
    out = x.copy()
    for i in range(half):
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
        angle = p * w[i]
        amplitude = np.full_like(angle, attention_factor)
        if xpos is not None:
            gamma, center, sign = xpos
            zeta = (2 * i + 0.4 * d) / (1.4 * d)
            amplitude = amplitude * zeta ** (sign * (p - center) / gamma)
        c = (np.cos(angle) * amplitude)[:, :, None]
        s = (np.sin(angle) * amplitude)[:, :, None]
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., a] * s + x[..., b] * c
    return np.asarray(out, dtype=np.float64)


# -- attention biases (ALiBi, T5) and attention ----------------------------------------------


def alibi_slopes_reference(num_heads: int) -> list[float]:
    """The ALiBi paper's slopes: ``get_slopes`` of ofirpress/attention_with_linear_biases,
    transcribed literally (Press et al. 2021)."""

    def get_slopes_power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return get_slopes_power_of_2(num_heads)
    closest_power_of_2 = 2 ** math.floor(math.log2(num_heads))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + alibi_slopes_reference(2 * closest_power_of_2)[0::2][: num_heads - closest_power_of_2]
    )


def _default_positions(seq_len_q: int, seq_len_k: int, query: Any, key: Any) -> tuple[Any, Any]:
    """Queries at the last ``q`` of the ``k`` key positions unless given."""
    q = np.arange(seq_len_k - seq_len_q, seq_len_k) if query is None else np.asarray(query)
    k = np.arange(seq_len_k) if key is None else np.asarray(key)
    return q, k


def alibi_reference(
    slopes: Any,
    seq_len_q: int,
    seq_len_k: int,
    *,
    causal: bool = False,
    query_positions: Any = None,
    key_positions: Any = None,
) -> Float64Array:
    """ALiBi bias ``(1, heads, q, k)``: ``-m * |i - j|``, or causal ``-m * (i - j)`` for
    ``j <= i`` and ``-inf`` for ``j > i``; 1-D positions, queries at the last ``q`` of ``k``
    positions by default."""
    qp, kp = _default_positions(seq_len_q, seq_len_k, query_positions, key_positions)
    out = np.empty((1, len(slopes), len(qp), len(kp)), dtype=np.float64)
    for h, m in enumerate(slopes):
        for i, p_i in enumerate(qp.tolist()):
            for j, p_j in enumerate(kp.tolist()):
                distance = p_i - p_j
                if causal:
                    out[0, h, i, j] = -m * distance if distance >= 0 else -math.inf
                else:
                    out[0, h, i, j] = -m * abs(distance)
    return out


def t5_bucket_reference(
    relative_position: int,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> int:
    """Mesh TensorFlow / T5's ``_relative_position_bucket`` for one relative position
    ``key - query``, with ``floor(log(n/e) / log(max_distance/e) * (B - e))`` evaluated
    exactly: the largest ``s`` with ``(n/e)**(B-e) >= (max_distance/e)**s``."""
    bucket = 0
    n_buckets = num_buckets
    if bidirectional:
        n_buckets //= 2
        if relative_position > 0:
            bucket += n_buckets
        n = abs(relative_position)
    else:
        n = max(-relative_position, 0)
    max_exact = n_buckets // 2
    if n < max_exact:
        return bucket + n
    log_buckets = n_buckets - max_exact
    s = 0
    while (
        s + 1 < log_buckets
        and n**log_buckets * max_exact ** (s + 1)
        >= max_distance ** (s + 1) * max_exact**log_buckets
    ):
        s += 1
    return bucket + max_exact + s


def t5_bias_reference(
    table: Any,
    seq_len_q: int,
    seq_len_k: int,
    *,
    bidirectional: bool = True,
    max_distance: int = 128,
    query_positions: Any = None,
    key_positions: Any = None,
) -> Float64Array:
    """T5 bias ``(1, heads, q, k)``: ``table[bucket(p_k - p_q), h]`` for a ``(num_buckets,
    heads)`` table; 1-D positions, queries at the last ``q`` of ``k`` positions by default."""
    table = np.asarray(table, dtype=np.float64)
    num_buckets, heads = table.shape
    qp, kp = _default_positions(seq_len_q, seq_len_k, query_positions, key_positions)
    out = np.empty((1, heads, len(qp), len(kp)), dtype=np.float64)
    for i, p_i in enumerate(qp.tolist()):
        for j, p_j in enumerate(kp.tolist()):
            b = t5_bucket_reference(p_j - p_i, bidirectional, num_buckets, max_distance)
            out[0, :, i, j] = table[b, :]
    return out


def attention_reference(
    q: Any, k: Any, v: Any, *, bias: Any = None, causal: bool = False, scale: Any = None
) -> Float64Array:
    """``softmax(q k^T * scale + bias) v`` in float64, query by query; ``(batch, heads, seq,
    dim)`` inputs; ``causal`` hides key ``j`` from query ``i`` when ``j > k_len - q_len + i``."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    batch, heads, q_len, dim = q.shape
    k_len = k.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    full_bias = np.zeros((batch, heads, q_len, k_len))
    if bias is not None:
        full_bias = full_bias + np.asarray(bias, dtype=np.float64)
    out = np.empty((batch, heads, q_len, v.shape[3]), dtype=np.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(q_len):
                scores = k[b, h] @ q[b, h, i] * scale + full_bias[b, h, i]
                if causal:
                    scores[k_len - q_len + i + 1 :] = -math.inf
                weights = np.exp(scores - scores.max())
                out[b, h, i] = weights @ v[b, h] / weights.sum()
    return out
