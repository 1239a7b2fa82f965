"""On-policy distillation (GKD): the student or the teacher samples the completions."""

from __future__ import annotations

import math

import pytest
import torch
from test_policy_loop import FP32, QUIET
from train_testkit import recipe, write_jsonl

from lmloss.train.generation import generate
from lmloss.train.loop import Trainer


def _rows(tmp_path):
    rows = [{"prompt": f"tell {x}", "completion": "a story " + x} for x in "abcd"]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def _trainer(tiny_model, tiny_teacher, tmp_path, objective="reverse_kl", **distill):
    run = recipe(
        tiny_model,
        _rows(tmp_path),
        tmp_path / "run",
        {"name": objective},
        train={"max_steps": 3, "batch_size": 2, **FP32},
        distill={"teacher": str(tiny_teacher), "max_new_tokens": 5, **distill},
    )
    return Trainer(run, **QUIET)


def _sampled_by(model, trainer, examples, seed):
    torch.manual_seed(seed)
    out = generate(
        model,
        trainer.ctx.tokenizer,
        [ex.tokens["prompt"] for ex in examples],
        max_new_tokens=5,
        sampling={"temperature": 1.0},
    )
    return [c[m].tolist() for c, m in zip(out.completions, out.mask)]


def _trained_tokens(batch):
    seqs = batch.tensors["seqs"]
    return [row[row != -100].tolist() for row in seqs.targets]


@pytest.mark.parametrize("sampler", ["student", "teacher"])
def test_trained_tokens_are_the_samplers(tiny_model, tiny_teacher, tmp_path, sampler):
    """lmbda = 1: the student's samples; lmbda = 0 with seq_kd: the teacher's."""
    config = {"lmbda": 1.0} if sampler == "student" else {"lmbda": 0.0, "seq_kd": True}
    trainer = _trainer(tiny_model, tiny_teacher, tmp_path, **config)
    examples = trainer.examples[:2]
    torch.manual_seed(7)
    batch = trainer.mode.prepare(examples)
    model = trainer.model if sampler == "student" else trainer.ctx.teacher.model
    assert _trained_tokens(batch) == _sampled_by(model, trainer, examples, 7)
    assert batch.metrics["student_sampled"] == float(sampler == "student")
    data = [ex.tokens["completion"] for ex in examples]
    assert _trained_tokens(batch) != data


def test_lmbda_zero_trains_on_the_data(tiny_model, tiny_teacher, tmp_path):
    trainer = _trainer(tiny_model, tiny_teacher, tmp_path, objective="forward_kl")
    examples = trainer.examples[:2]
    batch = trainer.mode.prepare(examples)
    assert _trained_tokens(batch) == [ex.tokens["completion"] for ex in examples]
    assert batch.metrics == {}


def test_lmbda_is_the_fraction_of_student_batches(tiny_model, tiny_teacher, tmp_path):
    trainer = _trainer(tiny_model, tiny_teacher, tmp_path, lmbda=0.5)
    picks = [trainer.mode.sampler_of_batch() for _ in range(400)]
    assert set(map(id, picks)) == {id(trainer.model), id(None)}
    assert abs(sum(p is trainer.model for p in picks) / 400 - 0.5) < 0.1


def test_minillm_trains(tiny_model, tiny_teacher, tmp_path):
    trainer = _trainer(tiny_model, tiny_teacher, tmp_path, lmbda=1.0)
    rows = [trainer.train_step() for _ in range(3)]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert all(r["student_sampled"] == 1.0 for r in rows)


@pytest.mark.parametrize(
    "distill, message",
    [
        ({"lmbda": 1.5}, "distill.lmbda must be in"),
        ({"lmbda": 0.5, "teacher": None, "topk_file": "x.safetensors"}, "need distill.teacher"),
        ({"seq_kd": True, "max_new_tokens": 0}, "distill.max_new_tokens must be > 0"),
    ],
)
def test_bad_online_distill_keys(tiny_model, tiny_teacher, tmp_path, distill, message):
    with pytest.raises(ValueError, match=message):
        recipe(
            tiny_model,
            _rows(tmp_path),
            tmp_path / "run",
            {"name": "reverse_kl"},
            distill={"teacher": str(tiny_teacher), **distill},
        )


def test_online_distill_needs_prompt_completion_rows(tiny_model, tiny_teacher, tmp_path):
    from lmloss.train import validate

    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "a story"},
            ]
        }
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    run = recipe(
        tiny_model,
        data,
        tmp_path / "run",
        {"name": "reverse_kl"},
        distill={"teacher": str(tiny_teacher), "lmbda": 1.0},
    )
    with pytest.raises(ValueError, match="prompt/completion rows"):
        validate.check(run)
