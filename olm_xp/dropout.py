"""Inverted dropout on any backend, deterministic given a seed or a JAX key.

The array API standard has no random numbers, so the keep-mask comes from the backend's own
generator where it has one (``jax.random``, ``torch.Generator``, ``cupy.random``) and from
NumPy's PCG64 on the host otherwise (NumPy, array-api-strict, Dask), then moves to ``x``'s
device. The same seed gives the same mask on the same backend and device.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from olm_xp._compat import (
    array_namespace,
    device_of,
    is_concrete,
    is_torch_compiling,
    namespace_name,
)
from olm_xp._typing import Array, ArrayNamespace
from olm_xp._validation import check_probability

__all__ = ["dropout"]

RandomKey = Any
"""An int seed, a ``numpy.random.Generator``, a JAX PRNG key or a ``torch.Generator``."""


def _keep_mask(xp: ArrayNamespace, x: Array, keep_prob: float, key: RandomKey) -> Array:
    """Boolean array shaped like ``x``: True with probability ``keep_prob``."""
    name = namespace_name(xp)
    shape = tuple(x.shape)
    if name == "jax":
        import jax  # the caller already uses JAX

        if isinstance(key, numbers.Integral):
            key = jax.random.key(int(key))
        return jax.random.bernoulli(key, keep_prob, shape)
    if name == "torch":
        import torch  # the caller already uses torch

        if x.device.type == "meta":
            return torch.empty(shape, dtype=torch.bool, device=x.device)
        if isinstance(key, numbers.Integral):
            key = torch.Generator(device=x.device).manual_seed(int(key))
        # key None (only while torch.compile traces): torch's global generator.
        uniform = torch.rand(shape, generator=key, device=x.device, dtype=torch.float32)
        return uniform < keep_prob
    if name == "cupy":
        import cupy  # the caller already uses CuPy

        with x.device:
            return cupy.random.default_rng(key).random(shape, dtype=cupy.float32) < keep_prob
    host = np.random.default_rng(key).random(shape, dtype=np.float32) < keep_prob
    return xp.asarray(host, device=device_of(x))


def dropout(x: Array, rate: float, *, key: RandomKey, training: bool = True) -> Array:
    """Zero each element of ``x`` with probability ``rate`` and scale the rest by 1/(1-rate).

    Parameters
    ----------
    x
        Floating array of any shape, namespace and device.
    rate
        Drop probability in [0, 1); 0 (or ``training=False``) returns ``x`` unchanged.
    key
        Randomness: an int seed, a ``numpy.random.Generator``, a JAX PRNG key (required inside
        ``jax.jit``: a host seed would bake one fixed mask into the compiled function) or a
        ``torch.Generator`` on ``x``'s device. Under ``torch.compile`` ``key=None`` draws from
        torch's global generator (seeded by ``torch.manual_seed``), fresh on every call.
    """
    rate = check_probability("rate", rate)
    if not training or rate == 0.0:
        return x
    xp = array_namespace(x)
    if key is None and not is_torch_compiling():
        raise TypeError("dropout needs key=: an int seed, a numpy Generator or a JAX/torch key")
    if namespace_name(xp) == "jax" and not is_concrete(x) and not hasattr(key, "dtype"):
        raise TypeError(
            "dropout inside jax.jit needs key= as a JAX PRNG key (jax.random.key(...)) passed "
            f"into the jitted function; got {type(key).__name__}, which would freeze one mask "
            "into the compiled function"
        )
    keep = _keep_mask(xp, x, 1.0 - rate, key)
    return xp.where(keep, x * (1.0 / (1.0 - rate)), xp.zeros_like(x))
