"""Query/key positions for attention biases and masks: the one place the alignment lives.

Without explicit positions the keys sit at ``0..k-1`` and the ``q`` queries are the *last* ``q``
of them, ``k-q..k-1``: a decode step (``q=1``) is the newest token and a prefill chunk is the
newest ``q`` tokens (FlashAttention's bottom-right alignment; with ``q == k`` the usual square).
ALiBi, the T5 bias and the reference attention's causal mask all use these helpers.
"""

from __future__ import annotations

from olm_xp._compat import has_float64
from olm_xp._typing import Array, ArrayNamespace, Device, DType

__all__ = ["default_positions", "relative_positions", "signed_positions"]


def signed_positions(xp: ArrayNamespace, positions: Array, device: Device) -> Array:
    """Integer ``positions`` in a signed dtype, so that differences may be negative."""
    if xp.isdtype(positions.dtype, "unsigned integer"):
        return xp.astype(positions, xp.int64 if has_float64(xp, device) else xp.int32)
    return positions


def default_positions(
    xp: ArrayNamespace, seq_len_q: int, seq_len_k: int, *, device: Device, dtype: DType = None
) -> tuple[Array, Array]:
    """The default query and key positions: ``k-q..k-1`` and ``0..k-1`` (in ``dtype``, exact
    for integers and for floats up to ``2**24`` in float32; ``None``: the default integer)."""
    queries = xp.arange(seq_len_k - seq_len_q, seq_len_k, dtype=dtype, device=device)
    return queries, xp.arange(seq_len_k, dtype=dtype, device=device)


def relative_positions(
    xp: ArrayNamespace,
    seq_len_q: int,
    seq_len_k: int,
    query_positions: Array | None,
    key_positions: Array | None,
    *,
    device: Device,
    dtype: DType = None,
) -> Array:
    """``p_k - p_q`` (T5's ``memory_position - query_position``) in ``dtype``, shape
    ``(q, k)`` (``(batch, q, k)`` for 2-D positions).

    Default positions are built as ``arange``s directly in ``dtype`` (exact for integers, and
    for floats up to ``2**24`` in float32); explicit integer positions are subtracted exactly
    in a signed integer dtype and then converted. ``dtype=None`` keeps that integer dtype.
    """
    if query_positions is None and key_positions is None:
        queries, keys = default_positions(xp, seq_len_q, seq_len_k, device=device, dtype=dtype)
        return keys[None, :] - queries[:, None]
    if query_positions is None or key_positions is None:  # the other one is given
        default_queries, default_keys = default_positions(xp, seq_len_q, seq_len_k, device=device)
        query_positions = default_queries if query_positions is None else query_positions
        key_positions = default_keys if key_positions is None else key_positions
    queries = signed_positions(xp, query_positions, device)
    keys = signed_positions(xp, key_positions, device)
    difference = keys[..., None, :] - queries[..., :, None]
    return difference if dtype is None else xp.astype(difference, dtype, copy=False)
