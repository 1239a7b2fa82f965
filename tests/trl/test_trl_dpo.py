"""``lmloss.trl.DPOTrainer``: TRL's DPO to 1e-5 with objective="dpo"; any preference objective."""

from __future__ import annotations

import pytest
import torch
import trl
from datasets import Dataset
from trl_testkit import assert_same_run, config, logged_steps

import lmloss.trl

PAIRS = [
    {"prompt": "two plus two is", "chosen": " four.", "rejected": " five, i think."},
    {"prompt": "the sky is", "chosen": " blue today.", "rejected": " green."},
    {"prompt": "say hi", "chosen": " hi!", "rejected": " no."},
    {"prompt": "count:", "chosen": " one two three.", "rejected": " three one."},
]


def dpo_config(tmp_path, **extra) -> trl.DPOConfig:
    return config(
        trl.DPOConfig, tmp_path, per_device_train_batch_size=2, learning_rate=0.5, beta=0.5,
        **extra,
    )  # fmt: skip


def train(trainer_class, path, tmp_path, **extra):
    trainer = trainer_class(
        model=str(path), args=dpo_config(tmp_path), train_dataset=Dataset.from_list(PAIRS), **extra
    )
    trainer.train()
    return trainer


def test_dpo_equals_trls_loss_metrics_and_weights(tiny_path, tmp_path):
    theirs = train(trl.DPOTrainer, tiny_path, tmp_path)
    ours = train(lmloss.trl.DPOTrainer, tiny_path, tmp_path, objective="dpo")
    assert_same_run(ours, theirs)  # every metric TRL logs, and the weights


def test_reference_free_objective_skips_the_reference(tiny_path, tmp_path):
    trainer = train(lmloss.trl.DPOTrainer, tiny_path, tmp_path, objective="simpo", gamma=0.3)
    assert trainer.ref_model is None and not trainer.needs.reference
    assert trainer.hyper == {"beta": 0.5, "gamma": 0.3}
    logs = logged_steps(trainer)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert "rewards/margins" in logs[0]


def test_two_model_objective_and_bad_arguments(tiny_path, tmp_path):
    trainer = train(lmloss.trl.DPOTrainer, tiny_path, tmp_path, objective="tdpo2")
    assert trainer.needs.reference  # and its per-token KL to the reference ran
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logged_steps(trainer))
    with pytest.raises(TypeError, match="unknown argument"):
        train(lmloss.trl.DPOTrainer, tiny_path, tmp_path, objective="dpo", bta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        lmloss.trl.DPOTrainer(
            model=str(tiny_path), args=dpo_config(tmp_path, loss_type=["ipo"]),
            train_dataset=Dataset.from_list(PAIRS),
        )  # fmt: skip


def test_dpo_with_a_lora_adapter_equals_trls(tiny_path, tmp_path):
    """With PEFT the reference is the model with its adapters off, in both trainers."""
    import peft

    def lora():
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])

    theirs = train(trl.DPOTrainer, tiny_path, tmp_path, peft_config=lora())
    ours = train(lmloss.trl.DPOTrainer, tiny_path, tmp_path, peft_config=lora())
    assert ours.ref_model is None and ours.needs.reference
    keys = ("loss", "rewards/margins", "logps/chosen")
    assert_same_run(ours, theirs, keys, only=lambda name: "lora_" in name)
