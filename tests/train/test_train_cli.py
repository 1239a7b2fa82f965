"""The command line: help documents every recipe key; list, train, eval, plot run."""

from __future__ import annotations

import dataclasses
import json

import pytest
from train_testkit import write_jsonl

from lmloss.cli import main
from lmloss.train.config import SECTIONS


def test_train_help_documents_every_key(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        if cls is not dict:
            for field in dataclasses.fields(cls):
                assert f"  {field.name} (" in text, f"{section}.{field.name} undocumented"
    assert "main" in text  # the bundled main-job recipe


def test_list_prints_every_family(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for family in ("likelihood:", "preference:", "policy:", "distill:"):
        assert family in text
    assert "dpo" in text and "grpo" in text


def test_cli_error_is_one_line(capsys, tmp_path):
    assert (
        main(
            [
                "train",
                "--set",
                "model.name=smollm2",
                "--set",
                "objective.name=dpoo",
                "--set",
                "data.task=arithmetic",
            ]
        )
        == 2
    )
    assert "did you mean 'dpo'" in capsys.readouterr().err


def test_train_eval_plot_end_to_end(tiny_model, tmp_path, capsys):
    data = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"what is {i}?", "answer": str(i)} for i in range(6)]
    )
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
[model]
name = "{tiny_model}"
[data]
path = "{data}"
[objective]
name = "grpo"
[train]
max_steps = 2
batch_size = 2
[policy]
group_size = 2
max_new_tokens = 4
rewards = ["exact_numeric", "format_number"]
[eval]
task = "arithmetic"
size = 4
max_new_tokens = 4
[output]
progress = false
""")
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--output", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| accuracy (exact numeric answer) |" in out and "before | after" in out
    for name in ("metrics.jsonl", "eval.jsonl", "curves.png", "summary.md", "recipe.json"):
        assert (run / name).is_file(), name
    assert (run / "model" / "model.safetensors").is_file()
    assert (
        main(["eval", str(run), "--task", "arithmetic", "--size", "3", "--max-new-tokens", "3"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["problems"] == 3
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
