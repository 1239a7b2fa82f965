"""Bad recipes and bad data fail early with messages that name the problem."""

from __future__ import annotations

import pytest
from train_testkit import recipe, write_jsonl

from lmloss.train.loop import Trainer, train
from lmloss.train.recipe import apply_overrides, parse
from lmloss.train.rewards import RewardError

QUIET = {"echo": lambda *_: None}
BASE = {"model": {"name": "smollm2"}, "data": {"task": "arithmetic"}, "objective": {"name": "grpo"}}


def _with(section: str, **values) -> dict:
    data = {k: dict(v) for k, v in BASE.items()}
    data.setdefault(section, {}).update(values)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with("objective", name="dpoo"), "did you mean 'dpo'"),
        (_with("objective", betta=0.1), "objective.betta.*did you mean 'beta'"),
        (_with("objective", num_items=3), "objective.num_items.*trainer"),
        (_with("train", lerning_rate=0.1), "train.lerning_rate"),
        (_with("train", max_step=3), "did you mean 'max_steps'"),
        ({**BASE, "trian": {}}, r"unknown section \[trian\].*did you mean 'train'"),
        (_with("train", lr="fast"), "train.lr must be float"),
        (_with("train", batch_size=0), "train.batch_size must be > 0"),
        (_with("train", schedule="linear"), "train.schedule must be one of constant, cosine, wsd"),
        (_with("data", path="x.jsonl"), "exactly one of data.path"),
        (_with("data", max_prompt_length=600), "max_prompt_length"),
        (_with("policy", rewards=["a", "b"], reward_weights=[1.0]), "reward_weights"),
        (_with("reference", kind="adapters_off"), "lora.enabled"),
        ({"data": {"task": "arithmetic"}, "objective": {"name": "dpo"}}, r"\[model\]"),
        ({"model": {"name": "smollm2"}}, r"\[objective\] needs name"),
    ],
)
def test_bad_recipe_is_named(data, message):
    with pytest.raises((ValueError, TypeError), match=message):
        parse(data)


def test_overrides_parse_toml_values():
    data = apply_overrides(BASE, ["train.lr=3e-4", "objective.beta=0.04", "model.name=other"])
    assert data["train"]["lr"] == 3e-4 and data["objective"]["beta"] == 0.04
    assert data["model"]["name"] == "other"
    with pytest.raises(ValueError, match=r"section\.key=value"):
        apply_overrides(BASE, ["lr=3"])


def test_unknown_model_is_named(tmp_path):
    run = parse(
        {**_with("model", name=str(tmp_path / "nowhere")), "output": {"dir": str(tmp_path / "run")}}
    )
    with pytest.raises(ValueError, match=r"nowhere.*neither"):
        Trainer(run, **QUIET)


def test_missing_columns_are_named(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "other": "b"}])
    run = recipe(tiny_model, data, tmp_path / "run", {"name": "dpo"})
    with pytest.raises(ValueError, match=r"lacks column\(s\) 'rejected'.*'other'"):
        Trainer(run, **QUIET)
    renamed = recipe(
        tiny_model,
        data,
        tmp_path / "run",
        {"name": "dpo"},
        data={"columns": {"rejected": "other"}},
        train={"max_steps": 1},
    )
    train(renamed, **QUIET)  # data.columns renames it


def test_long_prompt_is_named_or_dropped(tiny_model, tmp_path):
    rows = [{"prompt": "x" * 50, "completion": "y"}, {"prompt": "short", "completion": "ok"}]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    with pytest.raises(
        ValueError, match=r"sft.jsonl:1: the prompt has 52 tokens.*data\.max_prompt_length = 32"
    ):
        Trainer(recipe(tiny_model, data, tmp_path / "run", {"name": "ce"}), **QUIET)
    lines = []
    trainer = Trainer(
        recipe(tiny_model, data, tmp_path / "run", {"name": "ce"}, data={"long_prompts": "drop"}),
        echo=lines.append,
    )
    assert len(trainer.examples) == 1
    assert any("dropped 1 rows" in line for line in lines)


def test_truncated_completions_are_reported(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "hi", "completion": "z" * 80}])
    lines = []
    trainer = Trainer(recipe(tiny_model, data, tmp_path / "run", {"name": "ce"}), echo=lines.append)
    assert any("truncated 1 completions" in line for line in lines)
    assert (
        len(trainer.examples[0].tokens["prompt"]) + len(trainer.examples[0].tokens["completion"])
        == 64
    )


def test_raising_reward_is_named(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "go"}] * 4)
    run = recipe(
        tiny_model,
        data,
        tmp_path / "run",
        {"name": "grpo"},
        policy={"group_size": 2, "max_new_tokens": 3, "rewards": ["train_testkit:raising_reward"]},
    )
    with pytest.raises(RewardError, match="'train_testkit:raising_reward' raised KeyError"):
        train(run, **QUIET)


def test_unimportable_reward_is_named(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "go"}] * 4)
    run = recipe(
        tiny_model,
        data,
        tmp_path / "run",
        {"name": "grpo"},
        policy={"rewards": ["no_such_module:f"]},
    )
    with pytest.raises(ValueError, match="reward 'no_such_module:f' cannot be loaded"):
        Trainer(run, **QUIET)


def test_untrainable_classify_objective_is_named(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "go"}])
    with pytest.raises(ValueError, match="'infonce' is a loss over generic logits"):
        Trainer(recipe(tiny_model, data, tmp_path / "run", {"name": "infonce"}), **QUIET)


def test_resume_without_checkpoint_is_named(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "hi", "completion": "yo"}])
    with pytest.raises(ValueError, match="--resume: no checkpoint"):
        Trainer(recipe(tiny_model, data, tmp_path / "run", {"name": "ce"}), resume=True, **QUIET)
