"""Every recipe in examples/ validates and trains one step (on the tiny test model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmloss.train.loop import train
from lmloss.train.recipe import load, read_toml
from lmloss.train.validate import check

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def test_there_is_an_example_per_family_and_common_case():
    names = {p.stem for p in EXAMPLES}
    assert {"sft_chat", "dpo", "simpo", "kto", "orpo", "grpo", "distill", "lipo", "npo"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_and_trains_one_step(
    path, tiny_model, tiny_teacher, tiny_reward_model, tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)  # examples name their data relative to the repository root
    data, _ = read_toml(str(path))
    overrides = [
        f"model.name={json.dumps(str(tiny_model))}",
        f"output.dir={json.dumps(str(tmp_path / 'run'))}",
        "output.progress=false",
        "output.plot=false",
        "output.save_model=false",
        "train.max_steps=1",
        "model.trainable_blocks=-1",  # the tiny model has 2 blocks
        "eval.max_new_tokens=2",
    ]
    if "epochs" in data.get("train", {}):
        overrides.append("train.epochs=0.01")  # one step
    if "teacher" in data.get("distill", {}):
        overrides.append(f"distill.teacher={json.dumps(str(tiny_teacher))}")
    if "task" in data.get("data", {}):  # the character tokenizer spends a token per letter
        overrides += [
            "data.max_prompt_length=200",
            "data.max_length=260",
            "data.task_size=8",
            "eval.size=4",
        ]
    for section in ("policy", "online"):
        if section in data:
            overrides.append(f"{section}.max_new_tokens=3")
        if "reward_model" in data.get(section, {}):
            overrides.append(f"{section}.reward_model={json.dumps(str(tiny_reward_model))}")
    if "overlong_buffer" in data.get("policy", {}):
        overrides.append("policy.overlong_buffer=2")  # within the 3 tokens
    recipe = load(str(path), overrides)
    report = check(recipe)
    assert any(line.startswith("data:") for line in report.lines)
    summary = train(recipe, echo=lambda *_: None)
    assert summary.steps == 1 and summary.losses[0] == summary.losses[0]


def test_classifier_example_trains(tiny_model):
    import importlib.util

    spec = importlib.util.spec_from_file_location("classifier", ROOT / "examples" / "classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    losses = module.main(["--model", str(tiny_model), "--steps", "5", "--lr", "0.05"])
    assert len(losses) == 5 and losses[-1] < losses[0]
