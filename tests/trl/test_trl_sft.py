"""``lmloss.trl.SFTTrainer`` trains as TRL's SFTTrainer does, with the loss from lmloss."""

from __future__ import annotations

import pytest
import torch
import trl
from datasets import Dataset
from train_testkit import save_tiny_model

import lmloss.hf
import lmloss.trl

ROWS = [
    {"prompt": "what is two plus two?", "completion": " four."},
    {"prompt": "name a color:", "completion": " blue, or maybe red."},
    {"prompt": "say hi", "completion": " hi!"},
    {"prompt": "count to three", "completion": " one two three."},
]


def sft_config(tmp_path, **extra) -> trl.SFTConfig:
    return trl.SFTConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
        gradient_accumulation_steps=2, max_steps=2, learning_rate=0.1, optim="sgd",
        lr_scheduler_type="constant", use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1, seed=0, dataloader_drop_last=True, bf16=False, **extra,
    )  # fmt: skip


def run(trainer_class, path, tmp_path, **extra):
    trainer = trainer_class(
        model=str(path), args=sft_config(tmp_path), train_dataset=Dataset.from_list(ROWS), **extra
    )
    trainer.train()
    return trainer


def test_sft_trainer_equals_trls_own(tmp_path):
    path = save_tiny_model(tmp_path / "tiny", seed=0)
    theirs = run(trl.SFTTrainer, path, tmp_path)
    ours = run(lmloss.trl.SFTTrainer, path, tmp_path)
    assert lmloss.hf.is_patched(ours.model)
    their_logs = [h for h in theirs.state.log_history if "loss" in h]
    our_logs = [h for h in ours.state.log_history if "loss" in h]
    for theirs_step, ours_step in zip(their_logs, our_logs, strict=True):
        for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens"):
            assert ours_step[key] == pytest.approx(theirs_step[key], rel=1e-5, abs=1e-6), key
    for (name, a), b in zip(ours.model.named_parameters(), theirs.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_sft_trainer_takes_an_objective_and_rejects_trl_loss_settings(tmp_path):
    path = save_tiny_model(tmp_path / "tiny", seed=0)
    trainer = run(lmloss.trl.SFTTrainer, path, tmp_path, objective="label_smoothing", eps=0.1)
    assert trainer.hyper == {"eps": 0.1}
    with pytest.raises(ValueError, match="loss_type='dft'"):
        lmloss.trl.SFTTrainer(
            model=str(path), args=sft_config(tmp_path, loss_type="dft"),
            train_dataset=Dataset.from_list(ROWS),
        )  # fmt: skip
