"""``lmloss.trl.GRPOTrainer``: TRL's rollouts, lmloss's policy objectives; grpo equals TRL's."""

from __future__ import annotations

import pytest
import torch
import trl
from datasets import Dataset
from trl_testkit import assert_same_run, config, logged_steps

import lmloss.trl

PROMPTS = [{"prompt": p} for p in ("two plus two is", "the sky is", "say hi", "count:")]


def reward_length(completions, **_):
    """Longer completions score higher: rewards differ within a group, advantages are not 0."""
    return [float(len(c)) for c in completions]


def grpo_config(tmp_path, **extra) -> trl.GRPOConfig:
    return config(
        trl.GRPOConfig, tmp_path, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=4, learning_rate=0.5, **extra,
    )  # fmt: skip


def train(trainer_class, path, tmp_path, config=None, **extra):
    trainer = trainer_class(
        model=str(path), reward_funcs=reward_length, train_dataset=Dataset.from_list(PROMPTS),
        args=config or grpo_config(tmp_path, loss_type="grpo"), **extra,
    )  # fmt: skip
    trainer.train()
    return trainer


def test_grpo_equals_trls_loss_type_grpo(tiny_path, tmp_path):
    """With a KL term (β = 0.1: TRL's reference log-probs) and gradient accumulation."""
    config = grpo_config(tmp_path, loss_type="grpo", beta=0.1, gradient_accumulation_steps=2)
    theirs = train(trl.GRPOTrainer, tiny_path, tmp_path, config)
    ours = train(lmloss.trl.GRPOTrainer, tiny_path, tmp_path, config, objective="grpo")
    assert_same_run(ours, theirs, ["loss", "grad_norm", "reward", "entropy", "kl"])


def test_any_policy_objective_and_replaced_settings(tiny_path, tmp_path):
    trainer = train(lmloss.trl.GRPOTrainer, tiny_path, tmp_path, objective="dapo", eps_high=0.3)
    assert trainer.hyper == {"beta": 0.0, "eps_high": 0.3}
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logged_steps(trainer))
    with pytest.raises(ValueError, match=r"GRPOConfig\(beta"):
        train(lmloss.trl.GRPOTrainer, tiny_path, tmp_path, objective="grpo", beta=0.1)
    with pytest.raises(ValueError, match="entropy_coef"):
        train(
            lmloss.trl.GRPOTrainer, tiny_path, tmp_path,
            grpo_config(tmp_path, entropy_coef=0.1), objective="grpo",
        )  # fmt: skip
