"""Dask: every public function and class forward builds a graph and computes nothing.

Each call runs under :func:`no_dask_compute` (a scheduler that fails the test if any graph is
computed or persisted -- ``.compute()``, ``int()``, ``bool()``, ``np.asarray()`` all go through
it), on inputs chunked along batch and sequence. Only afterwards does the test compute the
result and compare it with the same call on NumPy inputs. Value checks on Dask positions are
skipped (they would compute), so even invalid positions build a graph without raising.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

_WANTED = os.environ.get("OLM_XP_BACKENDS", "cpu").strip()
if _WANTED not in ("", "cpu", "all") and "dask" not in _WANTED.split(","):
    pytest.skip("the dask profile is not selected (OLM_XP_BACKENDS)", allow_module_level=True)
da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import olm_xp  # noqa: E402
from olm_xp.nn.embeddings import positional  # noqa: E402

B, S, H, D = 2, 10, 3, 8  # S = 10 in chunks of 5: every sequence is split across chunks


@contextlib.contextmanager
def no_dask_compute() -> Iterator[None]:
    """Fail on any Dask computation inside the block (compute, persist, int/bool/float of a
    Dask array, ``np.asarray``): every local scheduler call goes through this one."""

    def forbidden(graph: Any, keys: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            f"a Dask graph was computed inside no_dask_compute() (keys {list(keys)[:3]}): "
            "olm_xp must stay lazy on Dask inputs"
        )

    with dask.config.set(scheduler=forbidden):
        yield


def test_no_dask_compute_catches_every_way_to_compute():
    x = da.ones((4,), chunks=2)
    for force in (
        lambda: x.compute(),
        lambda: x.persist(),
        lambda: int(x.sum()),
        lambda: bool(x[0] > 0),
        lambda: np.asarray(x),
    ):
        with no_dask_compute(), pytest.raises(AssertionError, match="was computed"):
            force()


def _chunked(values: np.ndarray) -> Any:
    """A Dask array chunked along batch (1) and sequence (half) like the conformance suite."""
    if values.ndim == 0:
        return da.from_array(values)
    if values.ndim == 1:
        return da.from_array(values, chunks=max(1, -(-values.shape[0] // 2)))
    chunks = (1, max(1, -(-values.shape[1] // 2)), *values.shape[2:])
    return da.from_array(values, chunks=chunks)


def _as(kind: str, values: Any) -> Any:
    if isinstance(values, np.ndarray):
        return _chunked(values) if kind == "dask" else values
    return values


def _host(out: Any) -> Any:
    if isinstance(out, tuple):
        return tuple(_host(o) for o in out)
    return np.asarray(out.compute()) if isinstance(out, da.Array) else np.asarray(out)


RNG = np.random.default_rng(7)
X3 = RNG.standard_normal((B, S, D))
X4 = RNG.standard_normal((B, S, H, D))
Q = RNG.standard_normal((B, H, S, D))
P1 = np.arange(S) + 3
P2 = np.stack([np.arange(S) + 11, np.arange(S) + 2])
P0 = np.asarray(5)
INV_FREQ, _ = olm_xp.rope_inverse_frequencies(D, base=500.0)
T5_WEIGHT = RNG.standard_normal((32, H))
TABLE = RNG.standard_normal((64, D))

Call = Callable[[str], Any]
"""``call(kind)`` runs one public entry point on ``kind`` ("numpy" or "dask") inputs."""


def _rope_modules() -> dict[str, Any]:
    longrope = {
        "short_factor": [1.0, 1.5, 2.0, 3.0],
        "long_factor": [2.0, 3.0, 5.0, 7.0],
        "original_max_position_embeddings": 8,
        "factor": 4.0,
    }
    return {
        "Rotary": positional.RotaryPositionalEmbedding(D, 64),
        "Rotary-halfsplit": positional.RotaryPositionalEmbedding(D, 64, interleaved=False),
        "Rotary-longrope": positional.RotaryPositionalEmbedding(
            D, 64, rope_type="longrope", rope_parameters=longrope
        ),
        "Rotary-from_hf-yarn": positional.RotaryPositionalEmbedding.from_hf(
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
            head_dim=D,
            max_position_embeddings=32,
        ),
        "Llama3": positional.Llama3RotaryPositionalEmbedding(D, original_max_seq_len=8),
        "Partial": positional.PartialRotaryPositionalEmbedding(D, 0.5),
        **{
            f"Scaled-{kind}": positional.ScaledRotaryPositionalEmbedding(
                D, 8, scaling_type=kind, scaling_factor=2.0
            )
            for kind in ("linear", "ntk", "dynamic_ntk", "yarn", "xpos")
        },
        "PartialScaled-xpos": positional.PartialScaledRotaryPositionalEmbedding(
            D, 0.5, 8, scaling_type="xpos"
        ),
    }


def _calls() -> dict[str, Call]:
    calls: dict[str, Call] = {
        "sinusoidal_table-int": lambda k: olm_xp.sinusoidal_table(S, D, xp=_ns(k)),
        "sinusoidal_table-positions": lambda k: olm_xp.sinusoidal_table(_as(k, P2), D),
        "normal_table": lambda k: olm_xp.normal_table(16, D, seed=3, xp=_ns(k)),
        "add_position_embeddings": lambda k: olm_xp.add_position_embeddings(
            _as(k, X3), _as(k, TABLE)
        ),
        "add_position_embeddings-(seq,)": lambda k: olm_xp.add_position_embeddings(
            _as(k, X3), _as(k, TABLE), _as(k, P1)
        ),
        "add_position_embeddings-(batch,seq)": lambda k: olm_xp.add_position_embeddings(
            _as(k, X3), _as(k, TABLE), _as(k, P2)
        ),
        "dropout": lambda k: olm_xp.dropout(_as(k, X3), 0.25, key=4),
        "rope_inverse_frequencies": lambda k: olm_xp.rope_inverse_frequencies(
            D, rope_type="yarn", factor=4.0, original_max_position_embeddings=8, xp=_ns(k)
        )[0],
        "rope_cos_sin-int": lambda k: olm_xp.rope_cos_sin(S, INV_FREQ, xp=_ns(k)),
        "rope_cos_sin-positions": lambda k: olm_xp.rope_cos_sin(_as(k, P2), INV_FREQ),
        "apply_rope": lambda k: olm_xp.apply_rope(
            _as(k, X4), *olm_xp.rope_cos_sin(_as(k, P2), INV_FREQ), interleaved=False
        ),
        "alibi_slopes": lambda k: olm_xp.alibi_slopes(H, xp=_ns(k)),
        "alibi_bias": lambda k: olm_xp.alibi_bias(S, S, H, xp=_ns(k)),
        "alibi_bias-positions": lambda k: olm_xp.alibi_bias(
            S, S, H, causal=True, query_positions=_as(k, P2), key_positions=_as(k, P2)
        ),
        "alibi_distances": lambda k: olm_xp.alibi_distances(
            S, S, query_positions=_as(k, P1), key_positions=_as(k, P1)
        ),
        "t5_relative_position_bucket": lambda k: olm_xp.t5_relative_position_bucket(
            _as(k, P2) - _as(k, P1)
        ),
        "t5_relative_position_bias": lambda k: olm_xp.t5_relative_position_bias(
            _as(k, T5_WEIGHT), S, S, query_positions=_as(k, P2), key_positions=_as(k, P2)
        ),
        "scaled_dot_product_attention": lambda k: olm_xp.scaled_dot_product_attention(
            _as(k, Q), _as(k, Q), _as(k, Q), causal=True
        ),
        "SinusoidalPositionalEmbedding": lambda k: positional.SinusoidalPositionalEmbedding(D)(
            _as(k, X3)
        ),
        "SinusoidalPositionalEmbedding-positions": lambda k: (
            positional.SinusoidalPositionalEmbedding(D)(_as(k, X3), _as(k, P2))
        ),
        "SinusoidalPositionalEmbedding-dropout": lambda k: positional.SinusoidalPositionalEmbedding(
            D, dropout=0.5, seed=1
        )(_as(k, X3)),
        "AbsolutePositionalEmbedding": lambda k: positional.AbsolutePositionalEmbedding(
            64, D, 0.5, xp=_ns(k), seed=2
        )(_as(k, X3), _as(k, P2)),
        "ALiBiPositionalBias": lambda k: positional.ALiBiPositionalBias(H, causal=True)(
            S, S, query_positions=_as(k, P1), key_positions=_as(k, P1)
        ),
        "T5RelativePositionBias": lambda k: positional.T5RelativePositionBias(
            num_heads=H, xp=_ns(k), seed=5
        )(S, S, query_positions=_as(k, P2)),
    }
    for name in _rope_modules():
        for label, positions in (
            ("none", None),
            ("offset", 7),
            ("0-D", P0),
            ("(seq,)", P1),
            ("(batch,seq)", P2),
        ):

            def call(k: str, name: str = name, positions: Any = positions) -> Any:
                module = _rope_modules()[name]
                return module(_as(k, X4), _as(k, positions), role="key")

            calls[f"{name}-{label}"] = call
    calls["rope"] = lambda k: olm_xp.rope(_as(k, X4), _as(k, P0), inv_freq=INV_FREQ)
    return calls


def _ns(kind: str) -> Any:
    return da if kind == "dask" else np


CALLS = _calls()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_lazy_and_equal_to_numpy(name):
    call = CALLS[name]
    with no_dask_compute():
        out = call("dask")
        for array in out if isinstance(out, tuple) else (out,):
            assert isinstance(array, da.Array), type(array)
    expected = _host(call("numpy"))
    got = _host(out)  # computed only now
    for g, e in zip(
        got if isinstance(got, tuple) else (got,),
        expected if isinstance(expected, tuple) else (expected,),
        strict=True,
    ):
        assert (g.shape, g.dtype) == (e.shape, e.dtype)
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_every_public_entry_point_is_covered():
    covered = {name.split("-")[0] for name in CALLS}
    public = set(olm_xp.__all__) | set(positional.__all__)
    not_array_functions = {"ROPE_TYPES", "__version__", "PositionalEmbeddingBase"}
    # The RoPE classes are covered under their short names (Rotary, Scaled, ...).
    rope_classes = {
        "RotaryPositionalEmbedding": "Rotary",
        "ScaledRotaryPositionalEmbedding": "Scaled",
        "PartialRotaryPositionalEmbedding": "Partial",
        "PartialScaledRotaryPositionalEmbedding": "PartialScaled",
        "Llama3RotaryPositionalEmbedding": "Llama3",
    }
    missing = {
        name
        for name in public - not_array_functions
        if name not in covered and rope_classes.get(name) not in covered
    }
    assert not missing, f"add a Dask laziness case for {sorted(missing)}"


@pytest.mark.parametrize("positions", [np.array([0, -1, 2, 3, 4, 5, 6, 7, 8, 99])])
def test_position_values_are_not_checked_on_dask(positions):
    """Negative or out-of-table positions cannot be seen without computing: no error, no
    compute (the concrete NumPy call raises)."""
    module = positional.AbsolutePositionalEmbedding(16, D, xp=da, seed=0)
    with no_dask_compute():
        module(_chunked(X3), _chunked(positions))
        positional.RotaryPositionalEmbedding(D, 16)(_chunked(X4), _chunked(positions))
    with pytest.raises(ValueError, match="seq_positions must be >= 0"):
        positional.AbsolutePositionalEmbedding(16, D, seed=0)(X3, positions)


def test_chunks_stay_along_batch_and_sequence():
    """The output keeps the input's batch and sequence chunks (no rechunk to one block)."""
    x = _chunked(X4)
    with no_dask_compute():
        out = positional.RotaryPositionalEmbedding(D, 64)(x, _chunked(P2))
        pe = positional.SinusoidalPositionalEmbedding(D)(_chunked(X3))
    assert out.chunks[:3] == x.chunks[:3]
    assert pe.chunks[:2] == _chunked(X3).chunks[:2]
