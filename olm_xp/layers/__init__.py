"""Framework layers: olm_xp's positional embeddings as framework modules.

* :mod:`olm_xp.layers.torch` -- ``torch.nn.Module`` classes (``pip install 'olm-xp[torch]'``);
* :mod:`olm_xp.layers.flax` -- ``flax.nnx.Module`` classes (``pip install 'olm-xp[flax]'``).

Each adapter class holds one core object from :mod:`olm_xp.nn.embeddings.positional` (the
configuration, validation and maths) and adds what its framework owns: learned tables as
parameters under olm's state-dict keys, dropout through the framework's RNG, and caches.
This package imports nothing; import the submodule for your framework.
"""
