"""ALiBi: attention with linear biases (Press et al. 2021, arXiv 2108.12409).

Head ``h`` adds ``-m_h * distance`` to the pre-softmax score of a query and a key. The slopes
``m_h`` follow the paper's reference rule (ofirpress/attention_with_linear_biases
``get_slopes``) for any head count; the bias is computed from the positions on the fly, so
memory is the output only (olm precomputes a ``(heads, max_seq_len, max_seq_len)`` buffer: 512
MiB at 32 heads x 2048).

Alignment: without explicit positions the keys sit at ``0..k-1`` and the queries are the *last*
``q`` of them, ``k-q..k-1`` -- the query of a decode step (``q=1``) is the newest token, and a
prefill chunk is the newest ``q`` tokens. (olm slices its buffer from the top-left, which puts a
decode query at position 0.) With ``q == k`` this is the usual square bias.

Forms, each added to scores of shape ``(batch, heads, q, k)``:

* symmetric (``causal=False``, olm's): ``-m * |p_q - p_k|``, shape ``(1, heads, q, k)``;
* causal (``causal=True``): ``-m * (p_q - p_k)`` for keys at or before the query and ``-inf``
  for later keys, so ``scores + bias`` is already causally masked;
* row-constant (``causal=True, broadcastable=True``): ``-m * (p_last - p_k)``, shape
  ``(1, heads, 1, k)``. It differs from the causal form by a constant per row, which softmax
  ignores, so it gives the same attention once the future keys are masked (by the caller's
  causal mask); it costs ``heads * k`` elements instead of ``heads * q * k``;
* factored: ``slopes (heads, 1, 1) * alibi_distances(...) (q, k)`` -- two small factors whose
  product a fusing consumer (``jax.jit``, ``torch.compile``, ``torch.addcmul``) adds to the
  scores without materialising ``(heads, q, k)``.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

import numpy as np

from olm_xp._compat import (
    array_namespace,
    compute_dtype,
    default_float_dtype,
    device_of,
    dtype_name,
    is_floating,
    namespace_name,
    resolve_namespace,
    torch_out_kernels_ok,
    traced_on_jax,
)
from olm_xp._relative import default_positions, relative_positions, signed_positions
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp._validation import (
    check_bool,
    check_positive_int,
    check_query_key_positions,
    check_slopes,
)

__all__ = ["alibi_bias", "alibi_distances", "alibi_slope_values", "alibi_slopes"]


def alibi_slope_values(num_heads: int) -> list[float]:
    """The paper's slopes for ``num_heads`` heads as Python floats (float64), head 0 first.

    For ``n`` a power of two: ``2**(-8 * i / n)`` for ``i = 1..n``. Otherwise, with ``c`` the
    largest power of two below ``n``: the ``c`` slopes of ``c`` heads, then every other slope of
    ``2c`` heads (``2**(-8 * (2j + 1) / (2c))``) for the remaining ``n - c`` heads. Each value
    is ``2**x`` for an exact ``x``, so it is correctly rounded (ofirpress's ``start * ratio**i``
    accumulates a few float64 ulp).
    """
    num_heads = check_positive_int("num_heads", num_heads)
    closest = 1 << (num_heads.bit_length() - 1)  # largest power of two <= num_heads
    slopes = [2.0 ** (-8.0 * i / closest) for i in range(1, closest + 1)]
    extra = num_heads - closest
    slopes += [2.0 ** (-4.0 * (2 * j + 1) / closest) for j in range(extra)]
    return slopes


def alibi_slopes(
    num_heads: int, *, xp: Any = None, device: Device = None, dtype: DType = None
) -> Array:
    """The ALiBi slope of each head, shape ``(num_heads,)``, by the paper's exact rule.

    ``xp``/``device``/``dtype`` place the result (default: NumPy, its default float dtype);
    the float64 values of :func:`alibi_slope_values` are rounded once to ``dtype``.
    """
    values = alibi_slope_values(num_heads)
    xp = resolve_namespace(xp)
    dtype = default_float_dtype(xp, device) if dtype is None else dtype
    return xp.asarray(values, dtype=dtype, device=device)


def _placement(
    slopes: Array | None,
    query_positions: Array | None,
    key_positions: Array | None,
    xp: Any,
    device: Device,
    dtype: DType,
) -> tuple[ArrayNamespace, Device, DType]:
    """Namespace, device and dtype of the result: from the arrays given, else the arguments."""
    arrays = [a for a in (slopes, query_positions, key_positions) if a is not None]
    if arrays:
        xp = array_namespace(*arrays)
        device = device_of(arrays[0])
        if dtype is None and slopes is not None:
            dtype = slopes.dtype
    else:
        xp = resolve_namespace(xp)
    if dtype is None:
        dtype = default_float_dtype(xp, device)
    if not is_floating(xp, dtype):
        raise TypeError(f"dtype must be a real floating dtype; got {dtype_name(dtype)}")
    return xp, device, dtype


def _check_lengths(seq_len_q: Any, seq_len_k: Any, *, causal: bool) -> tuple[int, int]:
    """Positive int lengths; ``q <= k`` where the causal form aligns the queries itself."""
    seq_len_q = check_positive_int("seq_len_q", seq_len_q)
    seq_len_k = check_positive_int("seq_len_k", seq_len_k)
    if causal and seq_len_q > seq_len_k:
        raise ValueError(
            f"the causal form needs seq_len_q <= seq_len_k (the queries are the last seq_len_q "
            f"of the seq_len_k positions); got seq_len_q={seq_len_q} > seq_len_k={seq_len_k}"
        )
    return seq_len_q, seq_len_k


def alibi_distances(
    seq_len_q: int,
    seq_len_k: int,
    *,
    causal: bool = False,
    query_positions: Array | None = None,
    key_positions: Array | None = None,
    xp: Any = None,
    device: Device = None,
    dtype: DType = None,
) -> Array:
    """The slope-free ALiBi factor: ``-|p_q - p_k|``, or for ``causal=True`` ``-(p_q - p_k)``
    with ``-inf`` for keys after the query.

    ``reshape(alibi_slopes(h), (h, 1, 1)) * alibi_distances(q, k)`` is
    :func:`alibi_bias` (for positive slopes): the factored form, whose two factors
    ``(h, 1, 1)`` and ``(q, k)`` a fusing consumer multiplies into the scores without
    materialising ``(h, q, k)``. Arguments as in :func:`alibi_bias`; the result has shape
    ``(q, k)`` (``(batch, q, k)`` for 2-D positions).
    """
    causal = check_bool("causal", causal)
    seq_len_q, seq_len_k = _check_lengths(
        seq_len_q, seq_len_k, causal=causal and query_positions is None
    )
    xp, device, dtype = _placement(None, query_positions, key_positions, xp, device, dtype)
    check_query_key_positions(
        xp, query_positions, key_positions, seq_len_q=seq_len_q, seq_len_k=seq_len_k
    )
    return traced_on_jax(
        _distances,
        xp,
        query_positions,
        key_positions,
        seq_len_q=seq_len_q,
        seq_len_k=seq_len_k,
        causal=causal,
        device=device,
        dtype=dtype,
    )


def _distances(
    query_positions: Array | None,
    key_positions: Array | None,
    *,
    xp: ArrayNamespace,
    seq_len_q: int,
    seq_len_k: int,
    causal: bool,
    device: Device,
    dtype: DType,
) -> Array:
    work = compute_dtype(xp, dtype)
    relative = relative_positions(
        xp, seq_len_q, seq_len_k, query_positions, key_positions, device=device, dtype=work
    )
    return xp.astype(_slope_free(xp, relative, causal=causal, device=device), dtype, copy=False)


def _slope_free(xp: ArrayNamespace, relative: Array, *, causal: bool, device: Device) -> Array:
    """``p_k - p_q`` to the slope-free factor: ``-|d|``, or causal ``d`` with ``-inf`` after
    the query."""
    if causal:
        minus_inf = xp.asarray(-math.inf, dtype=relative.dtype, device=device)
        return xp.where(relative <= 0, relative, minus_inf)
    return -xp.abs(relative)


def alibi_bias(
    seq_len_q: int,
    seq_len_k: int,
    heads: int | Array,
    *,
    causal: bool = False,
    query_positions: Array | None = None,
    key_positions: Array | None = None,
    broadcastable: bool = False,
    xp: Any = None,
    device: Device = None,
    dtype: DType = None,
) -> Array:
    """The ALiBi bias to add to attention scores ``(batch, heads, q, k)`` before softmax.

    Parameters
    ----------
    seq_len_q, seq_len_k
        Query and key counts (positive ints). Without explicit positions the keys sit at
        ``0..k-1`` and the queries at the last ``q`` positions, ``k-q..k-1`` (a decode step,
        ``q=1``, is the newest token; with ``q == k`` this is the square bias).
    heads
        The number of heads (the paper's slopes, :func:`alibi_slopes`) or a ``(heads,)``
        floating array of per-head slopes (the result then takes its namespace, device and,
        by default, dtype).
    causal
        ``False``: olm's symmetric ``-m * |p_q - p_k|``. ``True``: ``-m * (p_q - p_k)`` for
        keys at or before the query and ``-inf`` after it (needs ``q <= k`` by default).
    query_positions, key_positions
        Optional integer positions, ``(q,)``/``(k,)`` or ``(batch, q)``/``(batch, k)`` (e.g.
        left-padded batches); either may be given alone. The result takes their namespace and
        device; ``xp``/``device`` are then ignored.
    broadcastable
        With ``causal=True``: return the row-constant form ``-m * (p_last - p_k)`` of shape
        ``(1, heads, 1, k)`` (``p_last`` the largest key position), which gives the same
        softmax as the causal form once future keys are masked -- by the caller or by
        :func:`~olm_xp.scaled_dot_product_attention` ``(causal=True)``. The query positions
        do not enter it. Not available for the symmetric form (it has no row-constant form;
        use the factored form of :func:`alibi_distances`).
    xp, device, dtype
        Namespace and device of the result when no array is given (default NumPy, its default
        device) and its dtype (default: the namespace's default float dtype).

    Returns
    -------
    ``(1, heads, q, k)`` (``(batch, heads, q, k)`` with 2-D positions; ``q`` is 1 in the
    broadcastable form). Computed in at least float32 (slopes rounded once from float64) and
    returned in ``dtype``. Works under ``jax.jit`` and ``torch.compile`` (the lengths are
    static Python ints); nothing is cached.
    """
    causal = check_bool("causal", causal)
    broadcastable = check_bool("broadcastable", broadcastable)
    if broadcastable and not causal:
        raise ValueError(
            "broadcastable=True needs causal=True: the symmetric bias -m*|i-j| has no "
            "row-constant form; use the full form, or the factored form "
            "alibi_slopes(...) * alibi_distances(...)"
        )
    seq_len_q, seq_len_k = _check_lengths(
        seq_len_q, seq_len_k, causal=causal and query_positions is None
    )
    slopes_array, num_heads = None, None
    if isinstance(heads, numbers.Integral) or not hasattr(heads, "shape"):
        num_heads = check_positive_int("heads", heads)
    else:
        slopes_array = heads
        check_slopes(array_namespace(heads), heads, name="heads")
    xp, device, dtype = _placement(slopes_array, query_positions, key_positions, xp, device, dtype)
    check_query_key_positions(
        xp, query_positions, key_positions, seq_len_q=seq_len_q, seq_len_k=seq_len_k
    )
    return traced_on_jax(
        _bias,
        xp,
        slopes_array,
        query_positions,
        key_positions,
        seq_len_q=seq_len_q,
        seq_len_k=seq_len_k,
        num_heads=num_heads,
        causal=causal,
        broadcastable=broadcastable,
        device=device,
        dtype=dtype,
    )


def _bias(
    slopes_array: Array | None,
    query_positions: Array | None,
    key_positions: Array | None,
    *,
    xp: ArrayNamespace,
    seq_len_q: int,
    seq_len_k: int,
    num_heads: int | None,
    causal: bool,
    broadcastable: bool,
    device: Device,
    dtype: DType,
) -> Array:
    """:func:`alibi_bias` for checked arguments (``num_heads`` None: ``slopes_array``)."""
    work = compute_dtype(xp, dtype)
    if num_heads is not None:
        slopes = xp.asarray(alibi_slope_values(num_heads), dtype=work, device=device)
    else:
        slopes = xp.astype(slopes_array, work)
    slopes = xp.reshape(slopes, (-1, 1, 1))  # (heads, 1, 1)

    if broadcastable:
        if key_positions is None:
            # -(k-1 - j) for j in 0..k-1
            distances = xp.arange(1 - seq_len_k, 1, dtype=work, device=device)
        else:
            keys = xp.astype(signed_positions(xp, key_positions, device), work)
            distances = keys - xp.max(keys, axis=-1, keepdims=True)
        bias = slopes * distances[..., None, None, :]  # (batch?, 1, 1, k) * (heads, 1, 1)
    elif (
        query_positions is None
        and key_positions is None
        and (num_heads is not None or not causal)
        and dtype == work
        and (native := _out_kernels(xp, slopes)) is not None
    ):
        return _bias_in_place(
            native, xp, slopes, seq_len_q, seq_len_k, causal=causal, device=device
        )
    else:
        relative = relative_positions(
            xp, seq_len_q, seq_len_k, query_positions, key_positions, device=device, dtype=work
        )
        relative = relative[..., None, :, :]  # p_k - p_q: (batch?, 1, q, k)
        if causal and num_heads is None:  # any slope (0 * -inf would be NaN): mask the product
            minus_inf = xp.asarray(-math.inf, dtype=work, device=device)
            bias = xp.where(relative <= 0, slopes * relative, minus_inf)
        else:  # slopes > 0: mask the (q, k) distances, then one product
            bias = slopes * _slope_free(xp, relative, causal=causal, device=device)
    if bias.ndim == 3:
        bias = bias[None, ...]
    return xp.astype(bias, dtype, copy=False)


def _out_kernels(xp: ArrayNamespace, slopes: Array) -> Any:
    """The module whose ``out=`` kernels can build the bias in its own output, or None: NumPy,
    or torch where :func:`torch_out_kernels_ok` (the slopes need no gradient, no transform, no
    compile); never for zero heads."""
    if slopes.shape[0] == 0:
        return None
    name = namespace_name(xp)
    if name == "numpy":
        return np
    return sys.modules["torch"] if name == "torch" and torch_out_kernels_ok(slopes) else None


def _bias_in_place(
    native: Any,
    xp: ArrayNamespace,
    slopes: Array,
    seq_len_q: int,
    seq_len_k: int,
    *,
    causal: bool,
    device: Device,
) -> Array:
    """The ``(1, heads, q, k)`` bias for default positions and slopes ``(heads, 1, 1)`` (positive
    where ``causal``) with nothing beside the output: the slope-free distances are built in the
    last head's slot, every other head's product is written from them, and the last head is
    scaled in place (the same single rounding as ``slopes * distances``; performance issue:
    ALiBi never materialises more than its output). ``native``: :func:`_out_kernels`."""
    heads, work = slopes.shape[0], slopes.dtype
    out = xp.empty((1, heads, seq_len_q, seq_len_k), dtype=work, device=device)
    last = out[0, heads - 1]
    queries, keys = default_positions(xp, seq_len_q, seq_len_k, device=device, dtype=work)
    native.subtract(keys[None, :], queries[:, None], out=last)  # p_k - p_q
    if causal:  # keys after the query: -inf (a bool mask, a quarter of one head's bytes)
        if native is np:
            np.copyto(last, -math.inf, where=last > 0)
        else:
            last.masked_fill_(last > 0, -math.inf)
    else:
        native.negative(native.abs(last, out=last), out=last)
    if heads > 1:
        native.multiply(last, slopes[: heads - 1], out=out[0, : heads - 1])
    last *= slopes[heads - 1]
    return out
