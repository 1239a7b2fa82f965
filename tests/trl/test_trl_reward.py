"""``lmloss.trl.RewardTrainer`` trains as TRL's RewardTrainer does, with the loss from lmloss."""

from __future__ import annotations

import pytest
import torch
import trl
from datasets import Dataset
from trl_testkit import assert_same_run, config

import lmloss
import lmloss.trl

ROWS = [
    {"prompt": "is the sky blue?", "chosen": " yes.", "rejected": " no, it is green."},
    {"prompt": "two plus two?", "chosen": " four.", "rejected": " five."},
    {"prompt": "say hi", "chosen": " hi!", "rejected": " go away."},
    {"prompt": "count to three", "chosen": " one two three.", "rejected": " one three."},
]


def train(trainer_class, path, tmp_path, rows=ROWS, **extra):
    fields = {k: extra.pop(k) for k in list(extra) if k == "center_rewards_coefficient"}
    args = config(
        trl.RewardConfig, tmp_path, per_device_train_batch_size=2, learning_rate=0.1, **fields
    )
    torch.manual_seed(0)  # the fresh score head of both runs
    trainer = trainer_class(
        model=str(path), args=args, train_dataset=Dataset.from_list(rows), **extra
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("margin", [False, True])
def test_reward_trainer_equals_trls_own(tiny_path, tmp_path, margin):
    rows = [{**r, "margin": 0.5 * i} for i, r in enumerate(ROWS)] if margin else ROWS
    theirs = train(trl.RewardTrainer, tiny_path, tmp_path, rows, center_rewards_coefficient=0.01)
    ours = train(
        lmloss.trl.RewardTrainer, tiny_path, tmp_path, rows, center_rewards_coefficient=0.01
    )
    assert ours.hyper == {"center_rewards_coefficient": 0.01}
    keys = ("loss", "grad_norm", "accuracy", "margin", "min_reward", "mean_reward", "max_reward")
    assert_same_run(ours, theirs, (*keys, "num_tokens"))


def test_reward_trainer_checks_objective_and_hyper_parameters(tiny_path, tmp_path):
    args = config(trl.RewardConfig, tmp_path)
    data = Dataset.from_list(ROWS)
    with pytest.raises(ValueError, match="does not score preference pairs"):
        lmloss.trl.RewardTrainer(
            model=str(tiny_path), args=args, train_dataset=data, objective="auc"
        )
    with pytest.raises(lmloss.ObjectiveArgumentError, match="center_reward_coefficient"):
        lmloss.trl.RewardTrainer(
            model=str(tiny_path), args=args, train_dataset=data, center_reward_coefficient=0.1
        )
