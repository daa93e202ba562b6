"""The README's backend table is the generated one, and its commands are the real ones."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from olm_xp import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_support_table_is_generated_from_the_profiles(capsys):
    assert cli.main(["support-table"]) == 0
    generated = capsys.readouterr().out.strip()
    match = re.search(
        r"<!-- support-table:start -->\n(.*?)\n<!-- support-table:end -->", README, re.S
    )
    assert match, "README lacks the support-table markers"
    assert match.group(1).strip() == generated, "run `olm-xp support-table` and paste it"


def test_ci_runs_the_readme_test_command():
    assert "python -m pip install nox && nox" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*python3? -m nox\b", ci, re.M)


def test_readme_examples_run():
    """Every Python example that needs no GPU runs as written (in one shared namespace)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    namespace: dict[str, object] = {}
    ran = 0
    for block in blocks:
        if "cuda" in block:
            continue
        if "olm_xp.layers" in block or "jax_model" in block:
            continue  # the framework-layer examples: tests/layers/test_readme_layers.py
        frameworks = [name for name in ("torch", "jax") if re.search(rf"\b{name}\b", block)]
        if any(importlib.util.find_spec(name) is None for name in frameworks):
            continue  # shown for a framework this environment does not have
        exec(compile(block, "README.md", "exec"), namespace)
        ran += 1
    assert ran >= 3
