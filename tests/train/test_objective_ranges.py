"""Out-of-range objective hyper-parameters are refused by `lmloss validate` (and by `train`
before the model loads), by the objective's own check on a synthetic batch (issue 26).

The ranges live only in the objectives; these tests hold the dry call to three promises:
it refuses what the objective refuses, naming the recipe key; it never refuses a valid
recipe (every example, every bundled recipe, every objective's defaults); it runs for every
objective `lmloss train` can train (a skipped objective would be an unchecked one).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from train_testkit import write_jsonl

import lmloss
from lmloss import cli, registry
from lmloss.train import formats, model_loading
from lmloss.train.loop import Trainer
from lmloss.train.objective_check import RangeError, check_ranges, check_recipe_ranges
from lmloss.train.recipe import load, parse

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "examples").glob("*.toml")) + sorted(
    (ROOT / "src" / "lmloss" / "train" / "recipes").glob("*.toml")
)
PAIRS = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2
PROMPTS = [{"prompt": "1+1", "answer": "2"}] * 2
TEXT = [{"prompt": "p", "completion": "c"}] * 2


def _trainer_values(spec) -> dict:
    """What the trainer's policy mode sets from [policy] (max_new_tokens, group_size)."""
    values = {"max_tokens": 24, "group_size": 4}
    return {k: v for k, v in values.items() if k in spec.hyper_defaults}


@pytest.mark.parametrize("name", lmloss.list_objectives())
def test_every_objectives_defaults_pass_and_trainable_ones_run(name):
    entry = registry.get(name)
    ran = check_ranges(name, {}, fixed=_trainer_values(entry.spec))
    trainable = bool(formats.objective_formats(entry)[0])
    assert ran == trainable, f"{name}: ran {ran}, trainable {trainable}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_passes_and_is_checked(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    line = check_recipe_ranges(load(str(path)))
    assert "not checked" not in line, line


def test_the_check_is_the_objectives_own():
    """A refusal quotes the objective's message, so the range lives in one place: the same
    value given to the front door raises the same words."""
    with pytest.raises(RangeError) as found:
        check_ranges("cdpo", {"beta": 0.2, "eps": 0.7})
    assert str(found.value).startswith("objective.eps = 0.7 is refused by 'cdpo': ")
    logps = torch.full((2, 3), -0.5)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError) as direct:
        lmloss.loss(
            "cdpo",
            **{f"{side}logps": logps for side in ("chosen_", "rejected_")},
            **{f"ref_{side}logps": logps for side in ("chosen_", "rejected_")},
            chosen_mask=mask,
            rejected_mask=mask,
            eps=0.7,
        )
    assert str(found.value).endswith(str(direct.value))


def _sections(tiny_model, tmp_path, objective, rows, **extra) -> dict:
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    sections = {
        "model": {"name": str(tiny_model)},
        "data": {"path": str(data)},
        "objective": objective,
        "output": {"dir": str(tmp_path / "run")},
    }
    return sections | extra


def _toml(sections: dict) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if key == "add":
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        for term in values.get("add", []):
            lines.append("[[objective.add]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in term.items()]
    return "\n".join(lines) + "\n"


def _bad_recipes(tiny_model, tmp_path):
    """(recipe sections, the start of the refusal) of each out-of-range value."""
    grpo = {"policy": {"rewards": ["exact_numeric"], "group_size": 2}}
    return [
        (_sections(tiny_model, tmp_path, {"name": "dpo", "beta": -1.0}, PAIRS), "objective.beta"),
        (_sections(tiny_model, tmp_path, {"name": "cdpo", "eps": 0.7}, PAIRS), "objective.eps"),
        (
            _sections(tiny_model, tmp_path, {"name": "grpo", "eps_low": -0.1}, PROMPTS, **grpo),
            "objective.eps_low",
        ),
        (
            _sections(
                tiny_model,
                tmp_path,
                {"name": "jsd", "beta": 1.5},
                TEXT,
                distill={"teacher": str(tiny_model)},
            ),
            "objective.beta",
        ),
        (
            _sections(
                tiny_model,
                tmp_path,
                {"name": "dpo", "add": [{"name": "focal", "weight": 0.1, "gamma": -1.0}]},
                PAIRS,
            ),
            "objective.add[0].gamma",
        ),
    ]


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the bad value was found")

    monkeypatch.setattr(model_loading, "load", refuse)


def test_out_of_range_values_are_one_line_before_any_weights_load(
    tiny_model, tmp_path, no_model_load, capsys
):
    for sections, key in _bad_recipes(tiny_model, tmp_path):
        path = tmp_path / "recipe.toml"
        path.write_text(_toml(sections))
        assert cli.main(["validate", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"lmloss: error: {key} = ") and "\n" not in err, err
        assert "must be" in err  # the objective's words: the allowed range
        with pytest.raises(RangeError, match="^" + re.escape(key)):
            Trainer(parse(sections), echo=lambda *_: None)
        assert not (tmp_path / "run").exists()  # the run directory is untouched


def test_a_refused_value_leaves_an_existing_run_directory_as_it_was(
    tiny_model, tmp_path, no_model_load
):
    sections, _ = _bad_recipes(tiny_model, tmp_path)[0]
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RangeError):
        Trainer(parse(sections), echo=lambda *_: None)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
