"""olm_xp: olm's positional embeddings on every array-API backend.

The pure functions live here; the olm-compatible classes in
:mod:`olm_xp.nn.embeddings.positional`. Importing ``olm_xp`` imports no framework (torch,
JAX, CuPy, Dask, Flax): a backend is only touched when you hand olm_xp one of its arrays.
"""

from olm_xp.absolute import add_position_embeddings, normal_table
from olm_xp.alibi import alibi_bias, alibi_distances, alibi_slopes
from olm_xp.attention import scaled_dot_product_attention
from olm_xp.dropout import dropout
from olm_xp.rope import apply_rope, rope, rope_cos_sin
from olm_xp.rope_frequencies import ROPE_TYPES, rope_inverse_frequencies
from olm_xp.sinusoidal import sinusoidal_table
from olm_xp.t5_bias import t5_relative_position_bias, t5_relative_position_bucket

__version__ = "0.1.0"

__all__ = [
    "ROPE_TYPES",
    "__version__",
    "add_position_embeddings",
    "alibi_bias",
    "alibi_distances",
    "alibi_slopes",
    "apply_rope",
    "dropout",
    "normal_table",
    "rope",
    "rope_cos_sin",
    "rope_inverse_frequencies",
    "scaled_dot_product_attention",
    "sinusoidal_table",
    "t5_relative_position_bias",
    "t5_relative_position_bucket",
]
