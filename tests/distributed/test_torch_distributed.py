"""torch.distributed: sequence-parallel RoPE on a CPU ``gloo`` group of 2 ranks.

Two processes (``_torch_worker.py``) on 127.0.0.1 each rotate one shard of the sequence with
its global positions (int offset, explicit positions, a ``DTensor``'s local shard), gather the
shards and compare with the single-process result. Bounded: the group times out after 60 s and
the processes are killed after 240 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("_torch_worker.py")
ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend")
    result = tmp_path_factory.mktemp("torch-distributed") / "errors.json"
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OLM_XP_RESULT": str(result),
            "OMP_NUM_THREADS": "1",
        }
        if Path("/sys/class/net/lo").exists():  # keep gloo on the loopback interface
            env["GLOO_SOCKET_IFNAME"] = "lo"
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"the {WORLD} ranks did not finish within {TIMEOUT_S} s")
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output[-4000:]}"
    return dict(json.loads(result.read_text()))


def test_every_check_ran(errors):
    names = {name.split("-")[0] for name in errors}
    assert {"Rotary", "Llama3", "Partial", "Scaled", "rope", "Sinusoidal", "Absolute"} <= names
    assert any(name.startswith("DTensor-") for name in errors)


def test_sequence_shards_with_global_positions_equal_one_process(errors):
    """Shards rotated from their global offsets, gathered, equal the single-process result
    (float32: the same operations on the same values, so the same bits up to fusion)."""
    worst = {name: error for name, error in errors.items() if error > 1e-6}
    assert not worst, worst
