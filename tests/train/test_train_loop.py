"""The loop's guarantees: exact resume, crash-safe checkpoints, the global normalizer."""

from __future__ import annotations

import pytest
import torch
from train_testkit import recipe, write_jsonl

from lmloss.train import checkpoint
from lmloss.train.loop import Trainer, train
from lmloss.train.progress import read_jsonl

QUIET = {"echo": lambda *_: None}


def _sft_data(tmp_path):
    # completions of different lengths: a wrong normalizer changes the loss
    rows = [
        {"prompt": f"say {w}", "completion": w * n}
        for w, n in (("ab", 1), ("cd", 5), ("ef", 2), ("gh", 7), ("ij", 3), ("kl", 4))
    ]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


def _losses(run_dir):
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("family", ["sft", "policy"])
def test_resume_continues_exactly(tiny_model, tmp_path, family):
    if family == "sft":
        data, objective, extra = _sft_data(tmp_path), {"name": "ce"}, {}
        extra["train"] = {"grad_accum": 2, "batch_size": 2, "schedule": "cosine", "warmup_steps": 1}
    else:
        data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"go {x}"} for x in "abcdef"])
        objective = {"name": "dapo"}
        extra = {
            "train": {"batch_size": 2, "schedule": "wsd"},
            "policy": {
                "group_size": 3,
                "max_new_tokens": 5,
                "rewards": ["train_testkit:letter_a_reward"],
            },
        }
    steps = {**extra["train"], "max_steps": 6}
    whole = recipe(tiny_model, data, tmp_path / "whole", objective, **{**extra, "train": steps})
    train(whole, **QUIET)
    split = recipe(
        tiny_model,
        data,
        tmp_path / "split",
        objective,
        **{**extra, "train": steps},
        output={"save_every": 1},
    )
    interrupted = Trainer(split, **QUIET)
    real_step = interrupted.train_step

    def stop_at_four():
        if interrupted.step == 3:
            raise KeyboardInterrupt  # the run is killed during step 4
        return real_step()

    interrupted.train_step = stop_at_four
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    train(split, resume=True, **QUIET)
    uninterrupted, resumed = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    assert len(resumed) == 6
    assert resumed == pytest.approx(uninterrupted, abs=1e-6)


def test_crash_while_saving_keeps_previous_checkpoint(tiny_model, tmp_path, monkeypatch):
    run = recipe(
        tiny_model, _sft_data(tmp_path), tmp_path / "run", {"name": "ce"}, train={"max_steps": 2}
    )
    trainer = Trainer(run, **QUIET)
    trainer.train_step()
    trainer.save()
    saved = {k: v.detach().clone() for k, v in trainer.trainable.items()}
    trainer.train_step()

    real_save = torch.save

    def crash(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        if str(path).endswith("optimizer.pt"):
            raise OSError("disk full")  # the machine dies after a partial write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(checkpoint.CheckpointError, match=r"step-000002 .*\(OSError: disk full\)"):
        trainer.save()  # one line, not a traceback (issue 26)
    monkeypatch.undo()

    root = tmp_path / "run" / "checkpoints"
    assert checkpoint.latest(root).step == 1
    resumed = Trainer(run, resume=True, **QUIET)
    assert resumed.step == 1
    for name, value in saved.items():
        assert torch.equal(resumed.trainable[name].detach(), value)
    resumed.save()  # the next save cleans the partial one up
    assert not list(root.glob(".tmp-*"))


@pytest.mark.parametrize(
    ("objective", "data_of"),
    [
        ({"name": "ce"}, _sft_data),
        (
            {"name": "dpo", "beta": 0.5},
            lambda p: write_jsonl(
                p / "pairs.jsonl",
                [
                    {"prompt": f"is {x} ok?", "chosen": "yes" * (i + 1), "rejected": "no"}
                    for i, x in enumerate("abcd")
                ],
            ),
        ),
        ({"name": "dapo"}, None),
    ],
)
def test_accumulation_equals_one_big_batch(tiny_model, tmp_path, objective, data_of):
    """One step over 4 examples: 1 x 4 and 2 x 2 give the same loss and gradient."""
    policy = {}
    if data_of is None:
        data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"go {x}"} for x in "abcd"])
        policy = {
            "policy": {
                "group_size": 2,
                "max_new_tokens": 5,
                "rewards": ["train_testkit:letter_a_reward"],
            }
        }
    else:
        data = data_of(tmp_path)
    results = []
    for batch, accum in ((4, 1), (2, 2)):
        run = recipe(
            tiny_model,
            data,
            tmp_path / f"run{accum}",
            objective,
            train={"batch_size": batch, "grad_accum": accum, "max_grad_norm": 0.0},
            data={"shuffle": False},
            **policy,
        )
        trainer = Trainer(run, **QUIET)
        torch.manual_seed(0)
        if data_of is None:  # sample once, the same completions for both splits
            examples = trainer.examples[:4]
            full = trainer.mode.prepare(examples)
            trainer.mode.prepare = _split_prepared(full, batch)
        row = trainer.train_step()
        results.append((row["loss"], row["grad_norm"]))
    (loss_a, norm_a), (loss_b, norm_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert norm_a == pytest.approx(norm_b, rel=1e-4)


def _split_prepared(full, batch):
    """A prepare() that hands out slices of one generated batch (to compare splits)."""
    from lmloss.train.modes import Batch

    state = {"next": 0}
    group = 2

    def prepare(examples):
        first = state["next"]
        state["next"] += len(examples)
        rows = slice(first * group, (first + len(examples)) * group)
        t = full.tensors
        tensors = {
            **t,
            "ids": t["ids"][rows],
            "attention": t["attention"][rows],
            "targets": t["targets"][rows],
            "advantages": t["advantages"][rows],
        }
        return Batch(
            examples=len(examples) * group,
            tokens=int((tensors["targets"] != -100).sum()),
            tensors=tensors,
        )

    return prepare
