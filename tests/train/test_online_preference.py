"""Online preference: pairs sampled from the policy, best vs worst by the judge, ties dropped."""

from __future__ import annotations

import pytest
import torch
from train_testkit import recipe, write_jsonl

from lmloss.train.loop import Trainer, train
from lmloss.train.progress import read_jsonl

ONLINE = {
    "samples": 4,
    "max_new_tokens": 6,
    "temperature": 1.0,
    "rewards": ["train_testkit:letter_a_reward"],
}


def _prompts(tmp_path, n=8):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"go {x}"} for x in "abcdefgh"[:n]])


def _online(tiny_model, tmp_path, objective=None, **online):
    return recipe(
        tiny_model,
        _prompts(tmp_path),
        tmp_path / "run",
        objective or {"name": "dpo", "beta": 0.5},
        train={"max_steps": 12, "batch_size": 2, "lr": 3e-2, "precision": "fp32"},
        online={**ONLINE, **online},
    )


def _sppo_rounds(tiny_model, tmp_path, run_dir: str, steps: int, **sections):
    """An online SPPO recipe of ``steps`` steps writing to ``tmp_path / run_dir``."""
    return recipe(
        tiny_model,
        _prompts(tmp_path),
        tmp_path / run_dir,
        {"name": "sppo_hard"},
        train={"max_steps": steps, "batch_size": 2, "lr": 3e-2, "precision": "fp32"},
        online=ONLINE,
        **sections,
    )


@pytest.mark.parametrize("objective", ["dpo", "simpo"])
def test_online_reward_rises(tiny_model, tmp_path, objective):
    train(_online(tiny_model, tmp_path, {"name": objective}), echo=lambda *_: None)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    rewards = [r["reward"] for r in rows]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
    for key in ("online/chosen_score", "online/rejected_score", "online/score_margin"):
        assert key in rows[0]
    assert all(r["online/score_margin"] > 0 for r in rows if "online/score_margin" in r)


class _Scores:
    """A judge whose totals are fixed: a row of scores per prompt."""

    def __init__(self, table):
        self.table = torch.tensor(table, dtype=torch.float32)

    def grade(self, rows, completions, group_size):
        return self.table.flatten(), {}


def test_pairs_are_best_against_worst_and_ties_are_dropped(tiny_model, tmp_path):
    trainer = Trainer(_online(tiny_model, tmp_path), echo=lambda *_: None)
    try:
        mode = trainer.mode
        mode.judge = _Scores([[0.1, 0.9, 0.5, 0.2], [0.3, 0.3, 0.3, 0.3]])
        torch.manual_seed(0)
        batch = mode.prepare(trainer.examples[:2])
        assert batch.examples == 1  # the tied prompt gave no pair
        assert batch.metrics["online/tied_prompts"] == 0.5
        assert batch.metrics["online/chosen_score"] == pytest.approx(0.9)
        assert batch.metrics["online/rejected_score"] == pytest.approx(0.1)
        assert batch.metrics["online/score_margin"] == pytest.approx(0.8)
        # chosen is sample 1 and rejected sample 0 of prompt 0: re-draw them to compare
        torch.manual_seed(0)
        from lmloss.train.generation import generate

        out = generate(
            trainer.model,
            trainer.ctx.tokenizer,
            [trainer.examples[0].tokens["prompt"], trainer.examples[1].tokens["prompt"]],
            max_new_tokens=6,
            group_size=4,
            sampling={"temperature": 1.0, "top_p": 1.0, "top_k": 0},
        )
        pair = batch.tensors["examples"][0]
        assert pair.tokens["chosen"] == out.completions[1][out.mask[1]].tolist()
        assert pair.tokens["rejected"] == out.completions[0][out.mask[0]].tolist()

        mode.judge = _Scores([[1.0] * 4, [2.0] * 4])
        empty = mode.prepare(trainer.examples[:2])
        assert empty.examples == 0 and empty.metrics["online/tied_prompts"] == 1.0
        before = [p.detach().clone() for p in trainer.trainable.values()]
        row = trainer.train_step()  # every group tied: no update, still a logged step
        assert row["loss"] == 0.0 and row["online/tied_prompts"] == 1.0
        after = list(trainer.trainable.values())
        assert all(torch.equal(a, b) for a, b in zip(before, after))
    finally:
        trainer.close()


def test_online_recipe_checks(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"online\.samples must be >= 2"):
        _online(tiny_model, tmp_path, samples=1)
    with pytest.raises(ValueError, match=r"online\.rewards is empty and online.reward_model"):
        _online(tiny_model, tmp_path, rewards=[])
    with pytest.raises(ValueError, match="pairwise preference objectives"):
        _online(tiny_model, tmp_path, {"name": "kto"})
    with pytest.raises(ValueError, match="per-pair data"):
        _online(tiny_model, tmp_path, {"name": "osp"})
    with pytest.raises(ValueError, match=r"online\.reward_weights has 2 entries"):
        _online(tiny_model, tmp_path, reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"online\.top_p"):
        _online(tiny_model, tmp_path, top_p=0.0)
    off = _online(tiny_model, tmp_path, enabled=False)
    assert not off.online.enabled


def test_iterative_rounds_start_from_the_last_rounds_model(tiny_model, tmp_path):
    """A round is a run whose model.name is the previous round's model/: its reference (a
    frozen copy of the starting model) is then the previous round's policy."""
    first = _sppo_rounds(tiny_model, tmp_path, "round1", 2, output={"save_model": True})
    train(first, echo=lambda *_: None)
    second = recipe(
        tmp_path / "round1" / "model",
        _prompts(tmp_path),
        tmp_path / "round2",
        {"name": "sppo_hard"},
        train={"max_steps": 1, "batch_size": 2, "precision": "fp32"},
        online=ONLINE,
    )
    trainer = Trainer(second, echo=lambda *_: None)
    try:
        from lmloss.train.model_loading import load_pretrained

        trained, _ = load_pretrained(str(tmp_path / "round1" / "model"))
        reference = dict(trainer.ctx.reference.model.named_parameters())
        for name, value in trained.named_parameters():
            torch.testing.assert_close(reference[name], value)
        initial, _ = load_pretrained(str(tiny_model))
        assert not torch.equal(
            dict(initial.named_parameters())["model.layers.0.mlp.up_proj.weight"],
            reference["model.layers.0.mlp.up_proj.weight"],
        )
    finally:
        trainer.close()


def test_rounds_inside_one_run_refresh_the_reference(tiny_model, tmp_path):
    """Iterative rounds in one run: `reference.sync_steps = k`, `sync_alpha = 1` makes the
    reference the policy of the last round every k steps (SPPO / INPO style)."""
    run = _sppo_rounds(
        tiny_model, tmp_path, "run", 4, reference={"sync_steps": 2, "sync_alpha": 1.0}
    )
    trainer = Trainer(run, echo=lambda *_: None)
    try:
        start = [p.clone() for p in trainer.ctx.reference.model.parameters()]

        def reference_is(params):
            pairs = zip(trainer.ctx.reference.model.parameters(), params)
            return all(torch.equal(a, b) for a, b in pairs)

        trainer.train_step()
        assert reference_is(start)  # round 1 still runs against the starting model
        trainer.train_step()
        assert reference_is(list(trainer.model.parameters()))  # round 2 starts from here
        assert not reference_is(start)
    finally:
        trainer.close()
