"""olm-compatible, framework-neutral classes (``olm_xp.nn.embeddings.positional``)."""
