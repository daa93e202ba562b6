"""T5 relative position bias (Hugging Face ``T5Attention``'s ``relative_attention_bias``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from olm_xp._compat import array_namespace, device_of, dtype_name, namespace_name
from olm_xp._typing import Array, Device, DType
from olm_xp._validation import check_positive_int
from olm_xp.absolute import normal_table
from olm_xp.nn.embeddings.positional.base import Embedding, PositionalEmbeddingBase
from olm_xp.t5_bias import t5_bias_with_spec, t5_bucket_spec

__all__ = ["T5RelativePositionBias"]


class T5RelativePositionBias(PositionalEmbeddingBase):
    """T5's learned relative position bias (Raffel et al. 2020).

    Each relative position ``p_k - p_q`` falls in one of ``num_buckets`` buckets (exact for
    small distances, logarithmic up to ``max_distance``, shared beyond) and a learned
    ``(num_buckets, num_heads)`` table gives one bias per bucket and head. The table is
    ``relative_attention_bias.weight``, Hugging Face T5's key, so a T5 checkpoint's table loads
    with :meth:`load_state_dict` (from a torch state dict, any backend).

    Parameters
    ----------
    num_heads
        Number of attention heads.
    num_buckets, max_distance
        T5's ``relative_attention_num_buckets`` (32) and ``relative_attention_max_distance``
        (128); ``max_distance`` must exceed the exact-bucket count.
    bidirectional
        ``True`` for an encoder, ``False`` for a causal decoder.
    xp, device, dtype
        Where the table lives (default: NumPy, its default device and default float dtype).
    seed
        Seeds the N(0, 1) initialisation (drawn on the host, identical on every backend).
    """

    def __init__(
        self,
        num_heads: int,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
        *,
        xp: Any = None,
        device: Device = None,
        dtype: DType = None,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = check_positive_int("num_heads", num_heads)
        self._spec = t5_bucket_spec(num_buckets, max_distance, bidirectional)
        self.num_buckets = int(num_buckets)
        self.max_distance = int(max_distance)
        self.bidirectional = bool(bidirectional)
        self._set_placement(xp, device, dtype)
        weight = normal_table(
            self.num_buckets, self.num_heads, seed=seed, xp=self.xp, device=device, dtype=self.dtype
        )
        self.device = device_of(weight)
        self.relative_attention_bias = Embedding(weight)

    def forward(
        self,
        seq_len_q: int,
        seq_len_k: int,
        *,
        query_positions: Array | None = None,
        key_positions: Array | None = None,
    ) -> Array:
        """The bias for ``seq_len_q`` queries and ``seq_len_k`` keys.

        Without explicit positions the keys sit at ``0..k-1`` and the queries at the last
        ``seq_len_q`` positions, so a KV-cache decode step (``q=1``) gets the last row of the
        full bias. ``query_positions``/``key_positions``: optional integer ``(q,)``/``(batch,
        q)`` and ``(k,)``/``(batch, k)`` arrays in the table's namespace and on its device.

        Returns ``(1, num_heads, seq_len_q, seq_len_k)`` (``(batch, ...)`` for 2-D positions)
        in the table's namespace, device and dtype.
        """
        weight = self.relative_attention_bias.weight
        table_xp = array_namespace(weight)
        for name, positions in (
            ("query_positions", query_positions),
            ("key_positions", key_positions),
        ):
            if positions is None:
                continue
            try:
                positions_xp = array_namespace(positions)
            except TypeError:
                raise TypeError(
                    f"{name} must be an integer array; got {type(positions).__name__}"
                ) from None
            if namespace_name(positions_xp) != namespace_name(table_xp):
                raise TypeError(
                    f"{name} is a {namespace_name(positions_xp)} array but "
                    f"relative_attention_bias.weight is a {namespace_name(table_xp)} array; move "
                    f"the module with .to(xp=<the positions' namespace>)"
                )
        return t5_bias_with_spec(
            table_xp, weight, seq_len_q, seq_len_k, self._spec, query_positions, key_positions
        )

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, bidirectional={self.bidirectional}, "
            f"dtype={dtype_name(self.dtype)}, device={self.device}"
        )
