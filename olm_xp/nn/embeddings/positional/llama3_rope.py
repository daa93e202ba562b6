"""Llama 3.1 frequency-band RoPE (olm's ``Llama3RotaryPositionalEmbedding``)."""

from __future__ import annotations

from olm_xp._validation import check_positive_int
from olm_xp.nn.embeddings.positional.rope import RotaryBase

__all__ = ["Llama3RotaryPositionalEmbedding"]


class Llama3RotaryPositionalEmbedding(RotaryBase):
    """Llama 3.1-style RoPE: high frequencies kept, low ones divided by ``factor``, a smooth
    blend between (HF's ``llama3`` variant).

    The defaults are Meta's Llama 3.1 values (``base=500000``, ``factor=8``,
    ``original_max_seq_len=8192``, ``low_freq_factor=1``, ``high_freq_factor=4``,
    ``max_seq_len=131072``); olm's defaults (``factor=2``, ``original_max_seq_len=131072``,
    ``high_freq_factor=32``, ``max_seq_len=262144``, ``base=10000``) match no released model --
    pass them explicitly for olm's numbers. ``max_seq_len`` allocates nothing: tables grow
    lazily. Keyword-only extras as in :class:`RotaryPositionalEmbedding`.
    """

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int = 131072,
        base: float = 500000.0,
        factor: float = 8.0,
        original_max_seq_len: int = 8192,
        low_freq_factor: float = 1.0,
        high_freq_factor: float = 4.0,
        *,
        interleaved: bool = True,
        seq_axis: int = 1,
        feature_axis: int = -1,
    ) -> None:
        super().__init__()
        head_dim = check_positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (features rotate in pairs); got {head_dim}")
        self.factor = factor
        self.original_max_seq_len = original_max_seq_len
        self.low_freq_factor = low_freq_factor
        self.high_freq_factor = high_freq_factor
        self._configure(
            head_dim=head_dim,
            rotary_dim=head_dim,
            max_seq_len=max_seq_len,
            base=base,
            rope_type="llama3",
            rope_parameters={
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_seq_len,
            },
            interleaved=interleaved,
            seq_axis=seq_axis,
            feature_axis=feature_axis,
        )
