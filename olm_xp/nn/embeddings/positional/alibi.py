"""ALiBi positional bias (olm's ``ALiBiPositionalBias``)."""

from __future__ import annotations

from typing import Any

from olm_xp._compat import (
    array_namespace,
    default_float_dtype,
    dtype_name,
    namespace_name,
    namespace_of_device,
    resolve_namespace,
)
from olm_xp._typing import Array, ArrayNamespace, Device, DType
from olm_xp._validation import check_bool, check_positive_int
from olm_xp.alibi import alibi_bias, alibi_slopes
from olm_xp.nn.embeddings.positional.base import PositionalEmbeddingBase

__all__ = ["ALiBiPositionalBias"]


class ALiBiPositionalBias(PositionalEmbeddingBase):
    """Attention with Linear Biases (Press et al. 2021): a per-head bias for attention scores,
    ``-m_h * |i - j|`` (olm's symmetric form) or, with ``causal=True``, ``-m_h * (i - j)`` for
    keys at or before the query and ``-inf`` after it.

    The slopes ``m_h`` follow the paper's exact rule for any head count. Nothing is
    precomputed: each call computes its ``(1, heads, q, k)`` output from the positions (olm
    holds a ``(heads, max_seq_len, max_seq_len)`` buffer, 512 MiB at 32 heads x 2048). When
    ``q < k`` the queries are the *last* ``q`` positions (a KV-cache decode step or a prefill
    chunk); olm slices from the top-left there, which puts a decode query at position 0.

    Parameters
    ----------
    num_heads
        Number of attention heads (any positive int; not only powers of two).
    max_seq_len
        Kept for olm compatibility; no buffer is built and longer sequences just work.
    causal
        The form :meth:`forward` returns (default olm's symmetric form).
    xp, device, dtype
        Default namespace, device and dtype of the bias (NumPy, its default device and default
        float dtype unless given); :meth:`forward` can override each per call.
    """

    def __init__(
        self,
        num_heads: int,
        max_seq_len: int = 2048,
        *,
        causal: bool = False,
        xp: Any = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.max_seq_len = check_positive_int("max_seq_len", max_seq_len)
        self.causal = check_bool("causal", causal)
        self._set_placement(xp, device, dtype)

    @property
    def slopes(self) -> Array:
        """The per-head slopes ``(num_heads,)`` in the module's namespace, device and dtype."""
        return alibi_slopes(self.num_heads, xp=self.xp, device=self.device, dtype=self.dtype)

    def _placement(
        self, xp: Any, device: Device, dtype: DType, arrays: list[Array]
    ) -> tuple[ArrayNamespace, Device, DType]:
        """Where the result goes: explicit positions, else ``xp=``, else the namespace of a
        framework ``device`` object, else the module's; dtype: ``dtype=``, else the module's
        within its namespace, else the target namespace's default float dtype."""
        assert self.xp is not None
        if arrays:
            target = array_namespace(*arrays)
        elif xp is not None:
            target = resolve_namespace(xp)
        else:
            target = namespace_of_device(device) or self.xp
        same = namespace_name(target) == namespace_name(self.xp)
        if device is None and same and not arrays:
            device = self.device
        if dtype is None:
            dtype = self.dtype if same else default_float_dtype(target, device)
        return target, device, dtype

    def forward(
        self,
        seq_len_q: int,
        seq_len_k: int,
        device: Device = None,
        *,
        xp: Any = None,
        dtype: DType = None,
        query_positions: Array | None = None,
        key_positions: Array | None = None,
        broadcastable: bool = False,
    ) -> Array:
        """The ALiBi bias for ``seq_len_q`` queries and ``seq_len_k`` keys.

        Parameters
        ----------
        seq_len_q, seq_len_k
            Query and key counts; the queries are the last ``seq_len_q`` of the ``seq_len_k``
            positions (``seq_len_q <= seq_len_k`` for the causal form).
        device
            Device of the result (olm's argument); a ``torch.device`` or JAX device also picks
            its framework when ``xp`` is not given. Default: the module's.
        xp, dtype
            Namespace and dtype of the result; default the module's.
        query_positions, key_positions
            Optional integer positions ``(q,)``/``(batch, q)`` and ``(k,)``/``(batch, k)``; the
            result then follows their namespace and device.
        broadcastable
            Causal form only: the row-constant ``(1, heads, 1, k)`` form, equivalent under a
            causal mask (see :func:`olm_xp.alibi_bias`).

        Returns
        -------
        ``(1, num_heads, seq_len_q, seq_len_k)`` (``(batch, ...)`` for 2-D positions; ``1``
        query row when ``broadcastable``), to add to the attention scores before softmax.
        """
        arrays = [a for a in (query_positions, key_positions) if a is not None]
        target, device, dtype = self._placement(xp, device, dtype, arrays)
        return alibi_bias(
            seq_len_q,
            seq_len_k,
            self.num_heads,
            causal=self.causal,
            query_positions=query_positions,
            key_positions=key_positions,
            broadcastable=broadcastable,
            xp=target,
            device=device,
            dtype=dtype,
        )

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, max_seq_len={self.max_seq_len}, causal={self.causal}, "
            f"dtype={dtype_name(self.dtype)}, device={self.device}"
        )
