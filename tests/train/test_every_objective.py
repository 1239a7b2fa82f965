"""Every registered objective trains one step from a recipe (a tiny model, tiny data).

The rows come from the formats ``lmloss describe`` names for the objective
(:func:`lmloss.train.formats.objective_formats`), so an objective registered without a way
to train (a new input kind, a column no format holds, an input no mode computes) fails
here. The only objectives left out are named, with the reason, by ``_waits``.
"""

from __future__ import annotations

import math

import pytest
from train_testkit import recipe, write_jsonl

from lmloss import registry
from lmloss.classify import PAIRWISE_SCORE_OBJECTIVES
from lmloss.train.formats import objective_formats
from lmloss.train.loop import train


def _waits(name: str) -> str | None:
    """Why lmloss train does not train ``name`` yet (None: it does). The classify family
    trains its pairwise score losses as reward models; the others are losses over class
    logits, which need a sequence-classification mode with class labels (not built yet:
    they train through lmloss.classification_loss, as examples/classifier.py does)."""
    entry = registry.get(name)
    if entry.family == "classify" and name not in PAIRWISE_SCORE_OBJECTIVES:
        return "a loss over class logits: no class-label mode in lmloss train yet"
    return None


PROMPTS = ("is a ok?", "is b ok?")
ROWS = {
    "prompt_completion": [{"prompt": p, "completion": "yes a"} for p in PROMPTS],
    "prompt": [{"prompt": p} for p in PROMPTS],
    "preference": [{"prompt": p, "chosen": "yes", "rejected": "no way"} for p in PROMPTS],
    "unpaired": [
        {"prompt": p, "completion": answer, "label": good}
        for p in PROMPTS
        for answer, good in (("yes", True), ("no way", False))
    ],
    "listwise": [
        {"prompt": p, "completions": ["yes", "no way", "maybe"], "scores": [2.0, 0.0, 1.0]}
        for p in PROMPTS
    ],
    "negative": [{"prompt": p, "rejected": "no way"} for p in PROMPTS],
}
SECTIONS = {
    "policy": {
        "policy": {
            "group_size": 2,
            "max_new_tokens": 3,
            "rewards": ["train_testkit:letter_a_reward"],
        }
    },
    "preference": {"preference": {"samples": 2, "max_new_tokens": 3}},
}
TRAINED = [name for name in registry.list_objectives() if _waits(name) is None]


def test_every_registered_objective_is_trained_here_or_waits_with_a_reason():
    families = {registry.get(name).family for name in registry.list_objectives()}
    assert families == {registry.get(n).family for n in TRAINED}
    for name in TRAINED:
        formats, _ = objective_formats(registry.get(name))
        assert formats and formats[0] in ROWS, f"{name!r}: no data format trains it"


@pytest.mark.parametrize("name", TRAINED)
def test_objective_trains_one_step_from_a_recipe(name, tiny_model, tiny_teacher, tmp_path):
    entry = registry.get(name)
    formats, extra = objective_formats(entry)
    rows = [{**row, **{column: 1.0 for column in extra}} for row in ROWS[formats[0]]]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    sections = dict(SECTIONS.get(entry.family, {}))
    if entry.family == "distill":
        sections["distill"] = {"teacher": str(tiny_teacher)}
    run = recipe(
        tiny_model,
        data,
        tmp_path / "run",
        {"name": name},
        train={"max_steps": 1, "batch_size": 2, "precision": "fp32"},
        **sections,
    )
    summary = train(run, echo=lambda *_: None)
    assert summary.steps == 1 and math.isfinite(summary.losses[0]), summary.losses
