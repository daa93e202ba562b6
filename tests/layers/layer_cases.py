"""One catalogue of layer configurations for the torch and Flax layer tests.

Each case names an olm class and its constructor arguments (olm's positional parameters, then
keyword extras); the framework tests build the core object and the framework module from the
same case and compare them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BATCH, SEQ, HEADS = 2, 6, 2


@dataclass(frozen=True)
class LayerCase:
    id: str
    cls: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def adds(self) -> bool:
        """True for embeddings added to ``x`` (absolute, sinusoidal), False for RoPE."""
        return self.cls in ("AbsolutePositionalEmbedding", "SinusoidalPositionalEmbedding")

    @property
    def learned(self) -> bool:
        return self.cls == "AbsolutePositionalEmbedding"

    @property
    def features(self) -> int:
        return int(self.args[1] if self.learned else self.args[0])

    @property
    def max_position(self) -> int:
        """Positions below this are valid for every case (learned tables have 32 rows)."""
        return 32

    def input(self, rng: np.random.Generator) -> np.ndarray:
        shape = (BATCH, SEQ, self.features) if self.adds else (BATCH, SEQ, HEADS, self.features)
        return rng.standard_normal(shape).astype(np.float32)


CASES = [
    LayerCase("absolute", "AbsolutePositionalEmbedding", (32, 8)),
    LayerCase("sinusoidal", "SinusoidalPositionalEmbedding", (8,)),
    LayerCase("sinusoidal-odd", "SinusoidalPositionalEmbedding", (7, 16)),
    LayerCase("rope", "RotaryPositionalEmbedding", (8, 32)),
    LayerCase(
        "rope-half-split-partial",
        "RotaryPositionalEmbedding",
        (8, 32),
        {"interleaved": False, "rotary_dim": 4},
    ),
    LayerCase("partial", "PartialRotaryPositionalEmbedding", (8, 0.5)),
    LayerCase(
        "scaled-yarn",
        "ScaledRotaryPositionalEmbedding",
        (8, 32),
        {"scaling_type": "yarn", "scaling_factor": 4.0, "original_max_seq_len": 8},
    ),
    LayerCase(
        "scaled-dynamic",
        "ScaledRotaryPositionalEmbedding",
        (8, 16),
        {"scaling_type": "dynamic_ntk", "scaling_factor": 2.0},
    ),
    LayerCase("scaled-xpos", "ScaledRotaryPositionalEmbedding", (8, 32), {"scaling_type": "xpos"}),
    LayerCase(
        "partial-scaled",
        "PartialScaledRotaryPositionalEmbedding",
        (8, 0.5, 32),
        {"scaling_type": "linear", "scaling_factor": 2.0},
    ),
    LayerCase(
        "llama3", "Llama3RotaryPositionalEmbedding", (8,), {"max_seq_len": 64, "factor": 8.0}
    ),
]

CLASSES = sorted({case.cls for case in CASES})
"""The classes that add to or rotate ``x`` (the attention biases are tested on their own)."""
BIAS_CLASSES = ["ALiBiPositionalBias", "T5RelativePositionBias"]

POSITION_MODES = ("default", "positions", "batched", "offset")


def positions(mode: str, rng: np.random.Generator) -> Any:
    """Host positions for a mode: None, ``(seq,)``, ``(batch, seq)`` or an int offset."""
    if mode == "default":
        return None
    if mode == "positions":
        return np.sort(rng.choice(26, SEQ, replace=False)).astype(np.int64)
    if mode == "batched":
        return rng.integers(0, 26, (BATCH, SEQ)).astype(np.int64)
    return 20
