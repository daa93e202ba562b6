"""T5 relative position buckets and bias (Raffel et al. 2020; Mesh TensorFlow, Hugging Face
``T5Attention._relative_position_bucket`` and ``compute_bias``).

A relative position ``r = p_k - p_q`` maps to one of ``num_buckets`` buckets; a learned
``(num_buckets, heads)`` table gives each bucket one bias per head.

* Bidirectional (encoder): half the buckets for ``r > 0``, half for ``r <= 0``; ``n = |r|``.
* Causal (``bidirectional=False``, decoder): all buckets for ``r <= 0``; ``n = max(-r, 0)``
  (later keys share bucket 0; a causal mask hides them anyway).
* With ``B`` buckets per side and ``e = B // 2`` exact buckets: ``n < e`` is bucket ``n``;
  otherwise ``e + floor(log(n / e) / log(max_distance / e) * (B - e))``, at most ``B - 1``.

The logarithmic buckets are evaluated exactly: the smallest ``n`` of each bucket is found with
integer arithmetic on the host (``n**(B-e) >= max_distance**s * e**(B-e-s)``) and each ``n`` is
placed by comparing it with those thresholds. No ``log`` runs on the device, so every backend
and device puts every relative position in the same bucket. Hugging Face evaluates the ``log``
in float32; that agrees with the exact buckets for T5's configuration (32 buckets,
``max_distance=128``) and for all but a handful of other configurations, where a float32
``log`` that is one ulp low puts one boundary distance one bucket lower (``tests/parity``
lists them).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from olm_xp._compat import array_namespace, device_of, dtype_name, take_rows, traced_on_jax
from olm_xp._relative import relative_positions, signed_positions
from olm_xp._typing import Array, ArrayNamespace
from olm_xp._validation import (
    check_device,
    check_positive_int,
    check_query_key_positions,
    check_t5_buckets,
    check_table,
)

__all__ = [
    "BucketSpec",
    "t5_bias_with_spec",
    "t5_bucket_spec",
    "t5_relative_position_bias",
    "t5_relative_position_bucket",
]


def _threshold(exact: int, log_buckets: int, max_distance: int, step: int) -> int:
    """The smallest integer ``n`` with ``log(n/e) / log(max_distance/e) * L >= step``, i.e.
    ``n**L >= max_distance**step * e**(L - step)``, in exact integer arithmetic."""
    target = max_distance**step * exact ** (log_buckets - step)
    guess = exact * float((max_distance / exact) ** (step / log_buckets))
    n = max(exact + 1, math.floor(guess) - 1)
    while n**log_buckets < target:
        n += 1
    while n - 1 > exact and (n - 1) ** log_buckets >= target:
        n -= 1
    return n


class BucketSpec(NamedTuple):
    """A validated bucket configuration and its exact logarithmic-bucket thresholds."""

    num_buckets: int
    bidirectional: bool
    exact: int
    """Exact buckets per side: distances ``0..exact-1`` get a bucket each."""
    thresholds: tuple[int, ...]
    """The smallest distance of each logarithmic bucket after the first (non-decreasing)."""


def t5_bucket_spec(
    num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
) -> BucketSpec:
    """Validate T5's configuration and find, in exact integer arithmetic, where each
    logarithmic bucket starts: a distance ``n >= exact`` falls in bucket
    ``exact + #{t in thresholds : t <= n}`` (plus ``num_buckets // 2`` for later keys when
    bidirectional)."""
    num_buckets, max_distance, bidirectional = check_t5_buckets(
        num_buckets, max_distance, bidirectional
    )
    per_side = num_buckets // 2 if bidirectional else num_buckets
    exact = per_side // 2
    log_buckets = per_side - exact
    thresholds = tuple(
        _threshold(exact, log_buckets, max_distance, step) for step in range(1, log_buckets)
    )
    return BucketSpec(num_buckets, bidirectional, exact, thresholds)


def _buckets(xp: ArrayNamespace, relative: Array, spec: BucketSpec) -> Array:
    """Buckets of integer ``relative`` positions (any shape), in ``relative``'s dtype."""
    dtype = relative.dtype
    zero = xp.zeros_like(relative)
    if spec.bidirectional:
        offset = xp.where(relative > 0, zero + spec.num_buckets // 2, zero)
        distance = xp.abs(relative)
    else:
        offset = zero
        distance = xp.where(relative < 0, -relative, zero)
    # One comparison per logarithmic bucket boundary (<= num_buckets / 2 of them): no host
    # array to place, no searchsorted (whose torch version warns on strided input), and no
    # (..., buckets) temporary.
    large = zero + spec.exact
    top = int(xp.iinfo(dtype).max)
    for threshold in spec.thresholds:
        if threshold <= top:
            large = large + xp.astype(distance >= threshold, dtype)
    return offset + xp.where(distance < spec.exact, distance, large)


def t5_relative_position_bucket(
    relative_positions: Array,
    *,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Array:
    """T5's bucket of each relative position ``p_key - p_query``.

    Parameters
    ----------
    relative_positions
        Integer array of any shape (``memory_position - query_position`` in T5's words).
    bidirectional
        ``True`` for an encoder (buckets on both sides), ``False`` for a causal decoder.
    num_buckets, max_distance
        T5's ``relative_attention_num_buckets`` and ``relative_attention_max_distance``;
        ``max_distance`` must exceed the exact-bucket count (``num_buckets // 4``
        bidirectional, ``num_buckets // 2`` causal).

    Returns
    -------
    Buckets in ``[0, num_buckets)``, same namespace, device, shape and dtype. Exact on every
    backend (see the module docstring); works under ``jax.jit`` and ``torch.compile``.
    """
    xp = array_namespace(relative_positions)
    if not xp.isdtype(relative_positions.dtype, "integral"):
        raise TypeError(
            f"relative_positions must have an integer dtype; got "
            f"{dtype_name(relative_positions.dtype)}"
        )
    spec = t5_bucket_spec(num_buckets, max_distance, bidirectional)
    return _buckets(
        xp, signed_positions(xp, relative_positions, device_of(relative_positions)), spec
    )


def t5_relative_position_bias(
    weight: Array,
    seq_len_q: int,
    seq_len_k: int,
    *,
    bidirectional: bool = True,
    max_distance: int = 128,
    query_positions: Array | None = None,
    key_positions: Array | None = None,
) -> Array:
    """T5's relative attention bias: ``weight[bucket(p_k - p_q)]`` laid out per head.

    Parameters
    ----------
    weight
        The learned ``(num_buckets, heads)`` table (Hugging Face's
        ``relative_attention_bias.weight``).
    seq_len_q, seq_len_k
        Query and key counts. Without explicit positions the keys sit at ``0..k-1`` and the
        queries at the last ``q`` positions (``k-q..k-1``): a decode step with a KV cache gets
        the last row of the full bias, as Hugging Face's ``past_seen_tokens`` gives.
    bidirectional, max_distance
        As in :func:`t5_relative_position_bucket` (``num_buckets`` is ``weight.shape[0]``).
    query_positions, key_positions
        Optional integer positions ``(q,)``/``(batch, q)`` and ``(k,)``/``(batch, k)``, on the
        table's device.

    Returns
    -------
    ``(1, heads, q, k)`` (``(batch, heads, q, k)`` with 2-D positions) in ``weight``'s
    namespace, device and dtype: a gather, so the values are the table's exactly. Without
    explicit positions the buckets are computed for the ``q + k - 1`` distinct offsets only and
    the result is one gather.
    """
    xp = array_namespace(weight, query_positions, key_positions)
    check_table(xp, weight, name="weight")
    spec = t5_bucket_spec(int(weight.shape[0]), max_distance, bidirectional)
    return t5_bias_with_spec(xp, weight, seq_len_q, seq_len_k, spec, query_positions, key_positions)


def t5_bias_with_spec(
    xp: ArrayNamespace,
    weight: Array,
    seq_len_q: int,
    seq_len_k: int,
    spec: BucketSpec,
    query_positions: Array | None = None,
    key_positions: Array | None = None,
) -> Array:
    """:func:`t5_relative_position_bias` for a checked table and a precomputed ``spec`` (the
    class keeps its spec, so a decode step does no host-side bucket arithmetic)."""
    seq_len_q = check_positive_int("seq_len_q", seq_len_q)
    seq_len_k = check_positive_int("seq_len_k", seq_len_k)
    check_query_key_positions(
        xp, query_positions, key_positions, seq_len_q=seq_len_q, seq_len_k=seq_len_k
    )
    device = device_of(weight)
    for name, positions in (("query_positions", query_positions), ("key_positions", key_positions)):
        if positions is not None:
            check_device(name, positions, device, what="the table's device")
    return traced_on_jax(
        _bias,
        xp,
        weight,
        query_positions,
        key_positions,
        seq_len_q=seq_len_q,
        seq_len_k=seq_len_k,
        spec=spec,
        device=device,
    )


def _bias(
    weight: Array,
    query_positions: Array | None,
    key_positions: Array | None,
    *,
    xp: ArrayNamespace,
    seq_len_q: int,
    seq_len_k: int,
    spec: BucketSpec,
    device: Any,
) -> Array:
    heads = int(weight.shape[1])
    if query_positions is None and key_positions is None:
        # The bias is Toeplitz: it depends on j - i only. Bucket the q + k - 1 distinct
        # relative positions -(k-1)..q-1, then gather each (i, j) from column j - i + q - 1.
        relative = xp.arange(seq_len_q + seq_len_k - 1, device=device) - (seq_len_k - 1)
        rows = xp.take(weight, _buckets(xp, relative, spec), axis=0)  # (q+k-1, heads)
        per_head = xp.permute_dims(rows, (1, 0))  # (heads, q+k-1)
        keys = xp.arange(seq_len_k, device=device)
        queries = xp.arange(seq_len_q, device=device)
        column = keys[None, :] - queries[:, None] + (seq_len_q - 1)  # (q, k)
        out = xp.take(per_head, xp.reshape(column, (-1,)), axis=1)  # (heads, q*k)
        return xp.reshape(out, (1, heads, seq_len_q, seq_len_k))
    relative = relative_positions(
        xp, seq_len_q, seq_len_k, query_positions, key_positions, device=device
    )
    buckets = _buckets(xp, relative, spec)  # (q, k) or (batch, q, k)
    values = take_rows(xp, weight, buckets)  # (*buckets.shape, heads); a sharded q stays so
    if values.ndim == 3:
        return xp.permute_dims(values, (2, 0, 1))[None, ...]
    return xp.permute_dims(values, (0, 3, 1, 2))
