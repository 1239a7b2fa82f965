"""``--set train.max_steps=N`` on a recipe that sets ``train.epochs``: the command line wins
(the epochs are dropped, with a warning) instead of being silently ignored."""

from __future__ import annotations

from pathlib import Path

from lmloss.train.recipe import load

CHAT = str(Path(__file__).resolve().parents[2] / "examples" / "sft_chat.toml")


def test_max_steps_on_the_command_line_replaces_the_recipes_epochs():
    said = []
    recipe = load(CHAT, ["train.max_steps=2"], warn=said.append)
    assert recipe.train.max_steps == 2 and recipe.train.epochs is None
    assert said == [
        "--set train.max_steps=2 replaces the recipe's train.epochs = 2 (epochs would "
        "otherwise decide the number of steps)"
    ]


def test_without_the_override_the_epochs_stay():
    said = []
    recipe = load(CHAT, [], warn=said.append)
    assert recipe.train.epochs == 2 and said == []
    assert load(CHAT, ["train.epochs=1"], warn=said.append).train.epochs == 1 and said == []


def test_both_on_the_command_line_keep_the_rule_that_epochs_decide():
    said = []
    recipe = load(CHAT, ["train.max_steps=2", "train.epochs=1"], warn=said.append)
    assert recipe.train.epochs == 1 and said == []
