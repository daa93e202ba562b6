"""Learned absolute position embedding (olm's ``AbsolutePositionalEmbedding``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from olm_xp._compat import array_namespace, device_of, dtype_name
from olm_xp._typing import Array, Device, DType
from olm_xp._validation import check_positive_int, check_same_placement
from olm_xp.absolute import add_position_embeddings, normal_table
from olm_xp.dropout import RandomKey
from olm_xp.nn.embeddings.positional.base import Dropout, Embedding, PositionalEmbeddingBase

__all__ = ["AbsolutePositionalEmbedding", "PositionalEmbeddingBase"]


class AbsolutePositionalEmbedding(PositionalEmbeddingBase):
    """Absolute (learned) positional embedding, as in the original Transformer and GPT-2.

    Learns one vector per position up to ``max_seq_len`` and adds it to the token embeddings,
    then applies dropout (training mode only).

    Parameters
    ----------
    max_seq_len, embed_dim
        Table shape ``(max_seq_len, embed_dim)``, stored as ``pos_embedding.weight`` (olm's
        state-dict key, so olm checkpoints load).
    dropout
        Dropout probability in [0, 1) applied to ``x + pe`` in training mode.
    xp, device, dtype
        Where the table lives (default: NumPy, its default device and default float dtype).
    seed
        Seeds the N(0, 1) initialisation (drawn on the host, so identical on every backend) and
        then the dropout stream.
    """

    def __init__(
        self,
        max_seq_len: int,
        embed_dim: int,
        dropout: float = 0.0,
        *,
        xp: Any = None,
        device: Device = None,
        dtype: DType = None,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.max_seq_len = check_positive_int("max_seq_len", max_seq_len)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        rng = np.random.default_rng(seed)
        dropout_layer = Dropout(dropout, seed=rng)
        self._set_placement(xp, device, dtype)
        weight = normal_table(
            max_seq_len, embed_dim, seed=rng, xp=self.xp, device=device, dtype=self.dtype
        )
        self.device = device_of(weight)
        self.pos_embedding = Embedding(weight)
        self.dropout = dropout_layer

    def forward(
        self, x: Array, seq_positions: Array | None = None, *, key: RandomKey = None
    ) -> Array:
        """Add the learned embedding of each position to ``x``.

        Parameters
        ----------
        x
            ``(batch, seq, embed_dim)`` token embeddings, in the table's namespace and device.
        seq_positions
            Optional integer positions ``(batch, seq)`` or ``(seq,)``; default ``0..seq-1``.
        key
            Optional randomness for this call's dropout (an int seed or a JAX/torch key);
            default: the module's seeded stream.

        Returns
        -------
        ``x + pe`` (then dropout), with ``x``'s namespace, device, dtype and shape.
        """
        xp = array_namespace(x)
        weight = self.pos_embedding.weight
        check_same_placement(xp, x, array_namespace(weight), weight, what="pos_embedding.weight")
        out = add_position_embeddings(x, weight, seq_positions)
        return self.dropout(out, training=self.training, key=key)

    def extra_repr(self) -> str:
        return (
            f"max_seq_len={self.max_seq_len}, embed_dim={self.embed_dim}, "
            f"dtype={dtype_name(self.dtype)}, device={self.device}"
        )
