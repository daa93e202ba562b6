"""JAX: arrays sharded across devices, under ``jax.jit`` and eagerly, and context parallelism.

Runs on 8 host CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set by
``nox -s distributed``). In a process with fewer devices (a plain ``pytest``, where the root
conftest asks for 2) these tests skip and :func:`test_in_a_subprocess_with_8_devices` runs this
file again in a subprocess that has 8.

For every public function and class that takes arrays, with inputs sharded along the batch,
along the sequence, or both (a 2-D mesh), under ``jax.jit``:

* the output keeps the input's sharding (for biases: batch and query rows);
* the values equal the unsharded result;
* the compiled program has no all-gather, all-to-all, collective-permute or reduce-scatter: no
  device ever sees another's part of ``x`` (the only collective allowed is the scalar all-reduce
  of ``max(position)`` that dynamic NTK and LongRoPE need for their global length).

Context parallelism: each sequence shard rotated with its global positions (an int offset, a
traced ``axis_index`` offset inside ``shard_map``, or explicit positions) equals the unsharded
result.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import olm_xp  # noqa: E402
from olm_xp.nn.embeddings import positional  # noqa: E402

N_DEVICES = 8
B, S, H, D = 8, 16, 2, 8
ROOT = Path(__file__).resolve().parents[2]


def _cpu_devices() -> list[Any]:
    return jax.devices("cpu")


def test_in_a_subprocess_with_8_devices():
    """Where this process has fewer than 8 CPU devices, run this file where it has 8."""
    if len(_cpu_devices()) >= N_DEVICES:
        pytest.skip("this process has 8 CPU devices: the tests below ran here")
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={N_DEVICES}",
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert " passed" in output, output[-3000:]
    assert " failed" not in output, output[-3000:]


@pytest.fixture(scope="module")
def devices() -> list[Any]:
    found = _cpu_devices()
    if len(found) < N_DEVICES:
        pytest.skip(
            f"needs {N_DEVICES} CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{N_DEVICES}); test_in_a_subprocess_with_8_devices runs this file with them"
        )
    return found[:N_DEVICES]


@pytest.fixture(params=[False, True], ids=["x64-off", "x64-on"])
def x64(request: pytest.FixtureRequest) -> Iterator[bool]:
    """JAX's default (x64 off: traced positions use the exact byte-table path) and x64 on
    (tables computed in-graph in float64)."""
    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", request.param)
    yield request.param
    jax.config.update("jax_enable_x64", before)


# -- layouts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A mesh and the mesh axis (or None) that shards the batch and the sequence."""

    name: str
    shape: tuple[int, ...]
    names: tuple[str, ...]
    batch: str | None
    seq: str | None

    def mesh(self, devices: list[Any]) -> Mesh:
        return Mesh(np.array(devices).reshape(self.shape), self.names)

    def spec(self, kind: str) -> P:
        b, s = self.batch, self.seq
        return {
            "x3": P(b, s),  # (batch, seq, D)
            "x4": P(b, s),  # (batch, seq, heads, head_dim)
            "q4": P(b, None, s),  # (batch, heads, seq, head_dim): attention's layout
            "kv4": P(b),  # keys/values: every query shard needs all keys
            "p1": P(s),  # (seq,) positions
            "p2": P(b, s),  # (batch, seq) positions
            "pk": P(),  # (seq_k,) key positions, replicated
            "p0": P(),  # a 0-D offset
            "key": P(),
            "w": P(),  # a learned table, replicated
        }[kind]

    def out_spec(self, kind: str, ndim: int) -> tuple[str | None, ...]:
        """The sharding the output must keep, one entry per axis."""
        b, s = self.batch, self.seq
        lead = {
            "x": (b, s),  # like x (and like (batch, seq) positions for tables)
            "bias": (b, None, s),  # (batch, heads, q, k) biases and attention outputs
        }[kind]
        return (*lead, *(None,) * (ndim - len(lead)))


LAYOUTS = [
    Layout("batch", (N_DEVICES,), ("d",), "d", None),
    Layout("sequence", (N_DEVICES,), ("d",), None, "d"),
    Layout("batch+sequence", (2, N_DEVICES // 2), ("b", "s"), "b", "s"),
]

# -- inputs and cases ---------------------------------------------------------------------------

RNG = np.random.default_rng(0)
HOST = {
    "x3": RNG.standard_normal((B, S, D)).astype(np.float32),
    "x4": RNG.standard_normal((B, S, H, D)).astype(np.float32),
    "q4": RNG.standard_normal((B, H, S, D)).astype(np.float32),
    "kv4": RNG.standard_normal((B, H, S, D)).astype(np.float32),
    "p1": np.arange(S) + 3,
    "p2": (np.arange(S)[None, :] + 5 * np.arange(B)[:, None]).astype(np.int64),
    "pk": np.arange(S),
    "p0": np.asarray(9),
    "w": RNG.standard_normal((32, H)).astype(np.float32),
}
INV_FREQ, _ = olm_xp.rope_inverse_frequencies(D, base=500.0)


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[..., Any]
    kinds: tuple[str, ...]
    out: str = "x"  # "x" or "bias": which sharding the output keeps
    global_length: bool = False  # needs max(position) over every shard: one scalar all-reduce


def _rope_modules() -> dict[str, Any]:
    longrope = {
        "short_factor": [1.0, 1.5, 2.0, 3.0],
        "long_factor": [2.0, 3.0, 5.0, 7.0],
        "original_max_position_embeddings": 8,
        "factor": 4.0,
    }
    modules = {
        "Rotary": positional.RotaryPositionalEmbedding(D, 64),
        "Rotary-halfsplit": positional.RotaryPositionalEmbedding(D, 64, interleaved=False),
        "Rotary-longrope": positional.RotaryPositionalEmbedding(
            D, 64, rope_type="longrope", rope_parameters=longrope
        ),
        "Llama3": positional.Llama3RotaryPositionalEmbedding(D, original_max_seq_len=8),
        "Partial": positional.PartialRotaryPositionalEmbedding(D, 0.5),
        "PartialScaled-xpos": positional.PartialScaledRotaryPositionalEmbedding(
            D, 0.5, 8, scaling_type="xpos"
        ),
    }
    for kind in ("linear", "ntk", "dynamic_ntk", "yarn", "xpos"):
        modules[f"Scaled-{kind}"] = positional.ScaledRotaryPositionalEmbedding(
            D, 8, scaling_type=kind, scaling_factor=2.0
        )
    return modules


def _cases() -> list[Case]:
    table = jnp.asarray(RNG.standard_normal((64, D)), dtype=jnp.float32)
    sinusoidal = positional.SinusoidalPositionalEmbedding(D)
    absolute = positional.AbsolutePositionalEmbedding(64, D, xp=jnp, seed=0)
    alibi = positional.ALiBiPositionalBias(H, causal=True)
    t5 = positional.T5RelativePositionBias(H, xp=jnp, seed=1)
    cases = [
        Case("sinusoidal_table", lambda p: olm_xp.sinusoidal_table(p, D), ("p2",)),
        Case("rope_cos_sin", lambda p: olm_xp.rope_cos_sin(p, INV_FREQ), ("p2",)),
        Case(
            "add_position_embeddings-(seq,)",
            lambda x, p: olm_xp.add_position_embeddings(x, table, p),
            ("x3", "p1"),
        ),
        Case(
            "add_position_embeddings-(batch,seq)",
            lambda x, p: olm_xp.add_position_embeddings(x, table, p),
            ("x3", "p2"),
        ),
        Case("dropout", lambda x, key: olm_xp.dropout(x, 0.5, key=key), ("x3", "key")),
        Case(
            "apply_rope",
            lambda x, p: olm_xp.apply_rope(x, *olm_xp.rope_cos_sin(p, INV_FREQ)),
            ("x4", "p2"),
        ),
        Case("rope-none", lambda x: olm_xp.rope(x, inv_freq=INV_FREQ), ("x4",)),
        Case("rope-offset", lambda x: olm_xp.rope(x, 7, inv_freq=INV_FREQ), ("x4",)),
        Case("rope-0-D", lambda x, p: olm_xp.rope(x, p, inv_freq=INV_FREQ), ("x4", "p0")),
        Case("rope-(seq,)", lambda x, p: olm_xp.rope(x, p, inv_freq=INV_FREQ), ("x4", "p1")),
        Case("rope-(batch,seq)", lambda x, p: olm_xp.rope(x, p, inv_freq=INV_FREQ), ("x4", "p2")),
        Case("Sinusoidal", lambda x: sinusoidal(x), ("x3",)),
        # max(positions) < max_seq_len picks the cached table (one scalar all-reduce)
        Case(
            "Sinusoidal-positions",
            lambda x, p: sinusoidal(x, p),
            ("x3", "p2"),
            global_length=True,
        ),
        Case("Absolute", lambda x: absolute(x), ("x3",)),
        Case("Absolute-positions", lambda x, p: absolute(x, p), ("x3", "p2")),
        Case(
            "alibi_bias",
            lambda q, k: olm_xp.alibi_bias(S, S, H, query_positions=q, key_positions=k),
            ("p2", "pk"),
            out="bias",
        ),
        Case(
            "ALiBiPositionalBias",
            lambda q, k: alibi(S, S, query_positions=q, key_positions=k),
            ("p2", "pk"),
            out="bias",
        ),
        Case(
            "t5_relative_position_bucket",
            lambda q, k: olm_xp.t5_relative_position_bucket(k[None, None, :] - q[:, :, None]),
            ("p2", "pk"),
        ),
        Case(
            "t5_relative_position_bias",
            lambda w, q, k: olm_xp.t5_relative_position_bias(
                w, S, S, query_positions=q, key_positions=k
            ),
            ("w", "p2", "pk"),
            out="bias",
        ),
        Case(
            "T5RelativePositionBias",
            lambda q, k: t5(S, S, query_positions=q, key_positions=k),
            ("p2", "pk"),
            out="bias",
        ),
        Case(
            "scaled_dot_product_attention",
            lambda q, kv: olm_xp.scaled_dot_product_attention(q, kv, kv, causal=True),
            ("q4", "kv4"),
            out="bias",
        ),
    ]
    for name, module in _rope_modules().items():
        data_dependent = module.rope_type in ("dynamic", "longrope")
        role = "key" if "xpos" in name else "query"
        if name in ("Rotary", "Rotary-longrope", "Scaled-dynamic_ntk"):  # cached / in-graph
            cases += [
                Case(f"{name}-none", lambda x, m=module: m(x), ("x4",)),
                Case(f"{name}-offset", lambda x, m=module: m(x, 5), ("x4",)),
            ]
        cases.append(
            Case(
                f"{name}-(batch,seq)",
                lambda x, p, m=module, r=role: m(x, p, role=r),
                ("x4", "p2"),
                global_length=data_dependent,
            )
        )
    return cases


CASES = _cases()
COLLECTIVE = re.compile(
    r"=\s*(?P<type>\S+)\s+(?P<op>all-gather|all-to-all|all-reduce|collective-permute|"
    r"reduce-scatter)(?:-start)?\("
)


def collectives(hlo: str) -> list[tuple[str, str]]:
    """``(op, result type)`` of every cross-device collective in compiled HLO text."""
    return [(m["op"], m["type"]) for m in COLLECTIVE.finditer(hlo)]


def _inputs(case: Case, layout: Layout, mesh: Mesh, *, sharded: bool) -> list[Any]:
    arrays = []
    for kind in case.kinds:
        if kind == "key":
            value = jax.random.key(3)
        else:
            host = HOST[kind]
            dtype = (
                jnp.int32
                if host.dtype.kind == "i" and not jax.config.read("jax_enable_x64")
                else host.dtype
            )
            value = jnp.asarray(host, dtype=dtype)
        where = NamedSharding(mesh, layout.spec(kind)) if sharded else mesh.devices.flat[0]
        arrays.append(jax.device_put(value, where))
    return arrays


def _outputs(out: Any) -> tuple[Any, ...]:
    return out if isinstance(out, tuple) else (out,)


def _spec_of(array: Any) -> tuple[str | None, ...]:
    spec = tuple(array.sharding.spec)
    return (*spec, *(None,) * (array.ndim - len(spec)))


def _check(case: Case, layout: Layout, got: Any, expected: Any) -> None:
    for g, e in zip(_outputs(got), _outputs(expected), strict=True):
        assert (g.shape, g.dtype) == (e.shape, e.dtype)
        assert isinstance(g.sharding, NamedSharding), g.sharding
        assert _spec_of(g) == layout.out_spec(case.out, g.ndim), (
            f"{case.name}: output sharding {g.sharding.spec} lost the input's "
            f"{layout.out_spec(case.out, g.ndim)}"
        )
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-6, atol=2e-6)


def _takes_positions(case: Case) -> bool:
    return any(kind.startswith("p") for kind in case.kinds)


# x64 changes only how traced positions become tables: x64 on runs the cases with position
# arrays, on the 2-D mesh (both axes sharded at once).
JIT_PARAMS = [
    pytest.param(False, layout, case, id=f"x64-off-{case.name}-{layout.name}")
    for case in CASES
    for layout in LAYOUTS
] + [
    pytest.param(True, LAYOUTS[-1], case, id=f"x64-on-{case.name}-{LAYOUTS[-1].name}")
    for case in CASES
    if _takes_positions(case)
]


@pytest.fixture
def x64_mode(request: pytest.FixtureRequest) -> Iterator[None]:
    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", request.param)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize(("x64_mode", "layout", "entry"), JIT_PARAMS, indirect=["x64_mode"])
def test_jit_keeps_sharding_and_gathers_nothing(devices, x64_mode, layout, entry):
    case = entry
    mesh = layout.mesh(devices)
    sharded = _inputs(case, layout, mesh, sharded=True)
    compiled = jax.jit(case.fn).lower(*sharded).compile()  # one compilation: run and inspect
    expected = case.fn(*_inputs(case, layout, mesh, sharded=False))  # eager, one device
    _check(case, layout, compiled(*sharded), expected)
    found = collectives(compiled.as_text())
    allowed = [
        (op, kind)
        for op, kind in found
        if case.global_length and op == "all-reduce" and re.fullmatch(r"\w+\[\]", kind)
    ]
    assert found == allowed, f"{case.name} ({layout.name}): collectives {found}"


EAGER = (
    "add_position_embeddings-(batch,seq)",
    "apply_rope",
    "rope-(batch,seq)",
    "Sinusoidal",
    "Sinusoidal-positions",
    "Absolute-positions",
    "Rotary-none",
    "Rotary-(batch,seq)",
    "Scaled-dynamic_ntk-(batch,seq)",
    "alibi_bias",
    "T5RelativePositionBias",
    "scaled_dot_product_attention",
)


@pytest.mark.parametrize("entry", [c for c in CASES if c.name in EAGER], ids=lambda c: c.name)
def test_eager_on_sharded_arrays(devices, entry):
    """Outside ``jit`` (both axes sharded): tables are made uncommitted and follow x onto its
    devices; the output keeps x's sharding."""
    case, layout = entry, LAYOUTS[-1]
    mesh = layout.mesh(devices)
    got = case.fn(*_inputs(case, layout, mesh, sharded=True))
    expected = case.fn(*_inputs(case, layout, mesh, sharded=False))
    _check(case, layout, got, expected)


@pytest.mark.parametrize("name", ["sinusoidal_table", "rope_cos_sin"])
def test_eager_tables_of_sharded_positions(devices, name):
    """Tables of concrete positions: where the device has no float64 (JAX's default) they are
    computed on the host, exactly rounded, and come back unsharded (only the positions travel);
    with x64 they are computed on the positions' devices and keep their sharding."""
    case, layout = next(c for c in CASES if c.name == name), LAYOUTS[-1]
    mesh = layout.mesh(devices)
    for x64 in (False, True):
        before = jax.config.read("jax_enable_x64")
        jax.config.update("jax_enable_x64", x64)
        try:
            got = case.fn(*_inputs(case, layout, mesh, sharded=True))
            expected = case.fn(*_inputs(case, layout, mesh, sharded=False))
            for g, e in zip(_outputs(got), _outputs(expected), strict=True):
                np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-6, atol=2e-6)
                if x64:
                    assert _spec_of(g) == layout.out_spec("x", g.ndim)
        finally:
            jax.config.update("jax_enable_x64", before)


# -- context parallelism ------------------------------------------------------------------------

STATIC_ROPE = [
    name for name, m in _rope_modules().items() if m.rope_type not in ("dynamic", "longrope")
]


def _shard_map() -> Callable[..., Any]:
    found = getattr(jax, "shard_map", None)
    if found is None:  # JAX < 0.7
        from jax.experimental.shard_map import shard_map as found
    return found


@pytest.mark.parametrize("name", ["Rotary-halfsplit", "Scaled-xpos"])
def test_context_parallel_shards_with_global_offsets(devices, name):
    """Sequence shard ``i`` on device ``i``, rotated with its global positions (an int offset,
    then explicit ``(seq,)`` positions), equals the unsharded rotation."""
    module = _rope_modules()[name]
    x = HOST["x4"]
    expected = np.asarray(module(jnp.asarray(x)))
    length = S // N_DEVICES
    by_offset, by_positions = [], []
    for i, device in enumerate(devices):
        start = i * length
        shard = jax.device_put(x[:, start : start + length], device)
        by_offset.append(np.asarray(module(shard, start)))
        positions = jax.device_put(jnp.arange(start, start + length), device)
        by_positions.append(np.asarray(module(shard, positions)))
    np.testing.assert_allclose(np.concatenate(by_offset, axis=1), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(by_positions, axis=1), expected, rtol=1e-6, atol=1e-6)


def _under_shard_map(devices: list[Any], fn: Callable[[Any, Any], Any], x: Any) -> Any:
    """``fn(local_x, global_offset)`` on each sequence shard inside ``shard_map``, jitted;
    returns the result and the compiled HLO."""
    mesh = Mesh(np.array(devices), ("seq",))
    spec = P(None, "seq")

    def body(local: Any) -> Any:
        offset = jax.lax.axis_index("seq") * local.shape[1]  # the shard's first position
        return fn(local, offset)

    mapped = jax.jit(_shard_map()(body, mesh=mesh, in_specs=spec, out_specs=spec))
    x = jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec))
    return mapped(x), mapped.lower(x).compile().as_text()


@pytest.mark.parametrize("name", [*STATIC_ROPE, "rope", "Sinusoidal", "Absolute"])
def test_context_parallel_under_shard_map(devices, x64, name):
    """Each device sees only its shard and rotates it from its global offset
    (``axis_index * shard length``, a traced 0-D int): no collective at all."""
    if name in ("Sinusoidal", "Absolute"):
        module = (
            positional.SinusoidalPositionalEmbedding(D)
            if name == "Sinusoidal"
            else positional.AbsolutePositionalEmbedding(64, D, xp=jnp, seed=0)
        )
        x = HOST["x3"]

        def fn(local: Any, offset: Any) -> Any:
            return module(local, offset + jnp.arange(local.shape[1]))

    elif name == "rope":
        module = functools.partial(olm_xp.rope, inv_freq=INV_FREQ)
        x = HOST["x4"]
        fn = module
    else:
        module = _rope_modules()[name]
        x = HOST["x4"]
        fn = module
    got, hlo = _under_shard_map(devices, fn, x)
    expected = module(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-6, atol=2e-6)
    assert collectives(hlo) == []


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_context_parallel_data_dependent_variants_take_the_global_length(devices, rope_type):
    """Dynamic NTK and LongRoPE pick their frequencies from the *global* length: a shard sees
    only its own positions, so per-shard code passes the global length to
    ``rope_inverse_frequencies(seq_len=...)`` and rotates with the pure ``rope``."""
    params: dict[str, Any] = {"original_max_position_embeddings": 8, "factor": 2.0}
    if rope_type == "longrope":
        params.update(short_factor=[1.0, 1.5, 2.0, 3.0], long_factor=[2.0, 3.0, 5.0, 7.0])
    module = positional.RotaryPositionalEmbedding(
        D, 64, rope_type=rope_type, rope_parameters=params
    )
    x = HOST["x4"]
    expected = module(jnp.asarray(x))  # positions 0..S-1: length S
    inv_freq, factor = olm_xp.rope_inverse_frequencies(D, rope_type=rope_type, **params, seq_len=S)
    got, hlo = _under_shard_map(
        devices,
        lambda local, offset: olm_xp.rope(
            local, offset, inv_freq=inv_freq, attention_factor=factor
        ),
        x,
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-6, atol=2e-6)
    assert collectives(hlo) == []


def test_explicit_mesh_axes_through_auto_axes(devices):
    """``jax.make_mesh`` makes *explicit* axes by default in recent JAX; JAX cannot infer the
    output sharding of some gathers and reshapes there, so olm_xp runs inside
    ``jax.sharding.auto_axes`` (the README's recipe): sharding kept, nothing gathered."""
    axis_type = getattr(jax.sharding, "AxisType", None)
    auto_axes = getattr(jax.sharding, "auto_axes", None)
    set_mesh = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)
    if axis_type is None or auto_axes is None or set_mesh is None:
        pytest.skip("this JAX has no explicit mesh axes")
    mesh = jax.make_mesh((N_DEVICES,), ("seq",), axis_types=(axis_type.Explicit,))
    rotary = positional.RotaryPositionalEmbedding(D, 64)
    sinusoidal = positional.SinusoidalPositionalEmbedding(D)
    with set_mesh(mesh):
        # the sinusoidal class checks max(positions) < max_seq_len: one scalar all-reduce
        for fn, x, scalar_reduces in ((rotary, HOST["x4"], 0), (sinusoidal, HOST["x3"], 1)):
            x = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P(None, "seq")))
            p = jax.device_put(jnp.arange(S) + 3, NamedSharding(mesh, P("seq")))
            wrapped = jax.jit(auto_axes(lambda x, p, f=fn: f(x, p), out_sharding=P(None, "seq")))
            out = wrapped(x, p)
            assert _spec_of(out)[:2] == (None, "seq")
            np.testing.assert_allclose(
                np.asarray(out), np.asarray(fn(np.asarray(x), np.asarray(p))), rtol=2e-6
            )
            found = collectives(wrapped.lower(x, p).compile().as_text())
            scalar = [c for c in found if c[0] == "all-reduce" and re.fullmatch(r"\w+\[\]", c[1])]
            assert found == scalar, found  # nothing but scalar all-reduces
            assert len(scalar) == scalar_reduces, found
