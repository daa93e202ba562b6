"""olm's ``olm.nn.embeddings.positional``, written once against the array API standard.

Class names, module paths, constructor parameters and ``forward`` signatures follow olm
(``openlanguagemodel``); see the README's "Differences from olm" for where olm_xp follows the
paper instead.
"""

from olm_xp.nn.embeddings.positional.absolute import AbsolutePositionalEmbedding
from olm_xp.nn.embeddings.positional.alibi import ALiBiPositionalBias
from olm_xp.nn.embeddings.positional.base import PositionalEmbeddingBase
from olm_xp.nn.embeddings.positional.llama3_rope import Llama3RotaryPositionalEmbedding
from olm_xp.nn.embeddings.positional.rope import (
    PartialRotaryPositionalEmbedding,
    PartialScaledRotaryPositionalEmbedding,
    RotaryPositionalEmbedding,
    ScaledRotaryPositionalEmbedding,
)
from olm_xp.nn.embeddings.positional.sinusoidal import SinusoidalPositionalEmbedding
from olm_xp.nn.embeddings.positional.t5_bias import T5RelativePositionBias

__all__ = [
    "ALiBiPositionalBias",
    "AbsolutePositionalEmbedding",
    "Llama3RotaryPositionalEmbedding",
    "PartialRotaryPositionalEmbedding",
    "PartialScaledRotaryPositionalEmbedding",
    "PositionalEmbeddingBase",
    "RotaryPositionalEmbedding",
    "ScaledRotaryPositionalEmbedding",
    "SinusoidalPositionalEmbedding",
    "T5RelativePositionBias",
]
