"""Embeddings; the positional ones live in :mod:`olm_xp.nn.embeddings.positional`."""
