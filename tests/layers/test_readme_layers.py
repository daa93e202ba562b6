"""The README's framework-layer examples run as written and train.

The examples live in README.md once merged (until then in ``.readme_issue5.md``); every
```python block that uses ``olm_xp.layers`` runs here, in order, in one namespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _layer_blocks() -> list[str]:
    for name in ("README.md", ".readme_issue5.md"):
        path = ROOT / name
        if not path.exists():
            continue
        blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
        chosen = [b for b in blocks if "olm_xp.layers" in b or "jax_model" in b]
        if chosen:
            return chosen
    return []


def test_layer_examples_train_on_torch_and_jax():
    pytest.importorskip("torch")
    pytest.importorskip("flax.nnx")
    pytest.importorskip("optax")
    blocks = _layer_blocks()
    if not blocks:
        pytest.skip("no olm_xp.layers examples in README.md or .readme_issue5.md")
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "README", "exec"), namespace)
    for name in ("torch_losses", "jax_losses"):
        losses = namespace[name]
        assert isinstance(losses, list)
        assert len(losses) >= 5
        assert losses[-1] < losses[0] - 0.5, (name, losses)  # it learns
