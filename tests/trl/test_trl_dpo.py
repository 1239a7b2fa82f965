"""``lmloss.trl.DPOTrainer``: TRL's DPO to 1e-5 with objective="dpo"; any preference objective."""

from __future__ import annotations

import pytest
import torch
import trl
from datasets import Dataset
from train_testkit import save_tiny_model

import lmloss.trl

PAIRS = [
    {"prompt": "two plus two is", "chosen": " four.", "rejected": " five, i think."},
    {"prompt": "the sky is", "chosen": " blue today.", "rejected": " green."},
    {"prompt": "say hi", "chosen": " hi!", "rejected": " no."},
    {"prompt": "count:", "chosen": " one two three.", "rejected": " three one."},
]


def dpo_config(tmp_path, **extra) -> trl.DPOConfig:
    return trl.DPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_steps=2, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1, seed=0, bf16=False, beta=0.5, **extra,
    )  # fmt: skip


def train(trainer_class, path, tmp_path, **extra):
    trainer = trainer_class(
        model=str(path), args=dpo_config(tmp_path), train_dataset=Dataset.from_list(PAIRS), **extra
    )
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def test_dpo_equals_trls_loss_metrics_and_weights(tiny_path, tmp_path):
    theirs = train(trl.DPOTrainer, tiny_path, tmp_path)
    ours = train(lmloss.trl.DPOTrainer, tiny_path, tmp_path, objective="dpo")
    their_logs = [h for h in theirs.state.log_history if "loss" in h]
    our_logs = [h for h in ours.state.log_history if "loss" in h]
    assert len(our_logs) == 2
    for theirs_step, ours_step in zip(their_logs, our_logs, strict=True):
        assert set(theirs_step) <= set(ours_step)  # every metric TRL logs
        for key, value in theirs_step.items():
            assert ours_step[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    for (name, a), b in zip(ours.model.named_parameters(), theirs.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_reference_free_objective_skips_the_reference(tiny_path, tmp_path):
    trainer = train(lmloss.trl.DPOTrainer, tiny_path, tmp_path, objective="simpo", gamma=0.3)
    assert trainer.ref_model is None and not trainer.needs.reference
    assert trainer.hyper == {"beta": 0.5, "gamma": 0.3}
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert "rewards/margins" in logs[0]


def test_two_model_objective_and_bad_arguments(tiny_path, tmp_path):
    trainer = train(lmloss.trl.DPOTrainer, tiny_path, tmp_path, objective="tdpo2")
    assert trainer.needs.reference  # and its per-token KL to the reference ran
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history[:2])
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
    their_logs = [h for h in theirs.state.log_history if "loss" in h]
    our_logs = [h for h in ours.state.log_history if "loss" in h]
    for theirs_step, ours_step in zip(their_logs, our_logs, strict=True):
        for key in ("loss", "rewards/margins", "logps/chosen"):
            assert ours_step[key] == pytest.approx(theirs_step[key], rel=1e-5, abs=1e-5), key
    ours_lora = {n: p for n, p in ours.model.named_parameters() if "lora_" in n}
    for name, value in theirs.model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(ours_lora[name], value, atol=1e-5, rtol=1e-5, msg=name)
