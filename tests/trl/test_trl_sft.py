"""``lmloss.trl.SFTTrainer`` trains as TRL's SFTTrainer does, with the loss from lmloss."""

from __future__ import annotations

import pytest
import trl
from datasets import Dataset
from trl_testkit import assert_same_run, config

import lmloss.hf
import lmloss.trl

ROWS = [
    {"prompt": "what is two plus two?", "completion": " four."},
    {"prompt": "name a color:", "completion": " blue, or maybe red."},
    {"prompt": "say hi", "completion": " hi!"},
    {"prompt": "count to three", "completion": " one two three."},
]


def train(trainer_class, path, tmp_path, **extra):
    args = config(
        trl.SFTConfig, tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=0.1, dataloader_drop_last=True,
    )  # fmt: skip
    trainer = trainer_class(
        model=str(path), args=args, train_dataset=Dataset.from_list(ROWS), **extra
    )
    trainer.train()
    return trainer


def test_sft_trainer_equals_trls_own(tiny_path, tmp_path):
    theirs = train(trl.SFTTrainer, tiny_path, tmp_path)
    ours = train(lmloss.trl.SFTTrainer, tiny_path, tmp_path)
    assert lmloss.hf.is_patched(ours.model)
    keys = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens")
    assert_same_run(ours, theirs, keys)


def test_sft_trainer_takes_an_objective_and_rejects_trl_loss_settings(tiny_path, tmp_path):
    trainer = train(
        lmloss.trl.SFTTrainer, tiny_path, tmp_path, objective="label_smoothing", eps=0.1
    )
    assert trainer.hyper == {"eps": 0.1}
    with pytest.raises(ValueError, match="loss_type='dft'"):
        lmloss.trl.SFTTrainer(
            model=str(tiny_path), args=config(trl.SFTConfig, tmp_path, loss_type="dft"),
            train_dataset=Dataset.from_list(ROWS),
        )  # fmt: skip
