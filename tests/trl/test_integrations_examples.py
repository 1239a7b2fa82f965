"""Every example in docs/integrations.md runs as written, on a tiny local model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "integrations.md"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
TITLES = ["transformers", "peft", "trl_sft", "trl_dpo", "trl_grpo", "trl_reward"]


def test_the_document_has_one_example_per_integration():
    assert len(EXAMPLES) == len(TITLES)
    assert all(MODEL in code for code in EXAMPLES)


@pytest.mark.parametrize("code", EXAMPLES, ids=TITLES)
def test_example_runs(code, tiny_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write to ./out
    namespace: dict = {}
    exec(compile(code.replace(MODEL, str(tiny_path)), str(DOC), "exec"), namespace)
    trainer = namespace.get("trainer")
    if trainer is not None:
        assert trainer.state.global_step == 2
