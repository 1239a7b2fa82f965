"""A moving reference (TR-DPO): every k steps ref <- alpha * policy + (1 - alpha) * ref."""

from __future__ import annotations

import copy

import pytest
import torch
from test_policy_loop import FP32, QUIET, _trainer
from train_testkit import recipe, write_jsonl

from lmloss.train.loop import Trainer
from lmloss.train.reference_model import ModelReference


def _pairs(tmp_path):
    rows = [
        {"prompt": f"pick {x}", "chosen": f"yes {x}", "rejected": f"no {x}{x}"} for x in "abcdef"
    ]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_mix_in_is_the_convex_combination():
    torch.manual_seed(0)
    policy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    reference = ModelReference.frozen_copy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p))
    before = copy.deepcopy(reference.model)
    reference.mix_in(policy, 0.25)
    for old, new, now in zip(
        before.parameters(), policy.parameters(), reference.model.parameters()
    ):
        torch.testing.assert_close(now, 0.25 * new + 0.75 * old)
        assert not now.requires_grad


def _dpo(tiny_model, tmp_path, reference):
    run = recipe(
        tiny_model,
        _pairs(tmp_path),
        tmp_path / "run",
        {"name": "dpo", "beta": 0.5},
        train={"max_steps": 3, "batch_size": 2, **FP32},
        reference=reference,
    )
    return Trainer(run, **QUIET)


def test_dpo_reference_moves_every_sync_steps(tiny_model, tmp_path):
    trainer = _dpo(tiny_model, tmp_path, {"sync_steps": 2, "sync_alpha": 1.0})
    start = [p.clone() for p in trainer.ctx.reference.model.parameters()]

    def same_as(params):
        return all(
            torch.equal(a, b) for a, b in zip(trainer.ctx.reference.model.parameters(), params)
        )

    trainer.train_step()
    assert same_as(start)  # step 1: not yet
    trainer.train_step()
    assert same_as(list(trainer.model.parameters()))  # step 2: alpha 1 copies the policy
    assert not same_as(start)


def test_policy_run_with_a_moving_reference_logs_the_kl(tiny_model, tmp_path):
    trainer = _trainer(tiny_model, tmp_path, reference={"sync_steps": 1, "sync_alpha": 0.5})
    assert trainer.ctx.reference is not None  # beta = 0, yet the moving reference runs
    rows = [trainer.train_step() for _ in range(2)]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy
    assert rows[1]["kl"] > 0


@pytest.mark.parametrize(
    "reference, lora, message",
    [
        ({"kind": "none"}, {}, "needs a frozen copy"),
        ({"kind": "precomputed"}, {}, "needs a frozen copy"),
        ({}, {"enabled": True}, "with LoRA too"),
        ({"sync_alpha": 0.0}, {}, "sync_alpha must be in"),
        ({"sync_steps": -1}, {}, "reference.sync_steps must be >= 0"),
    ],
)
def test_bad_moving_reference_is_refused_before_loading(
    tiny_model, tmp_path, reference, lora, message
):
    with pytest.raises(ValueError, match=message):
        recipe(
            tiny_model,
            _pairs(tmp_path),
            tmp_path / "run",
            {"name": "dpo"},
            reference={"sync_steps": 2, **reference},
            lora=lora,
        )


def test_an_objective_without_reference_refuses_sync(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="runs no reference model"):
        Trainer(
            recipe(
                tiny_model,
                _pairs(tmp_path),
                tmp_path / "run",
                {"name": "simpo"},
                reference={"sync_steps": 2},
            ),
            **QUIET,
        )
