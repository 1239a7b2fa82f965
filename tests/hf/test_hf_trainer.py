"""``transformers.Trainer`` with a patched model: the same training as with the model's loss."""

from __future__ import annotations

import pytest
import torch
import transformers
from hf_testkit import VOCAB, tiny

import lmloss.hf


def examples() -> list[dict]:
    """Four examples whose numbers of trained tokens differ (2, 5, 7, 3)."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for trained in (2, 5, 7, 3):
        ids = torch.randint(0, VOCAB, (8,), generator=generator)
        labels = ids.clone()
        labels[: 8 - trained] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones(8), "labels": labels})
    return rows


def train(tmp_path, model, batch_size: int, accumulation: int):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        seed=0,
    )
    transformers.Trainer(model=model, args=args, train_dataset=examples()).train()
    return dict(model.named_parameters())


@pytest.mark.parametrize("patched", [False, True])
def test_two_accumulated_micro_batches_equal_one_batch_of_twice_the_size(tmp_path, patched):
    reference = train(tmp_path, tiny("llama_untied", torch.float32).train(), 4, 1)
    model = tiny("llama_untied", torch.float32).train()
    if patched:
        lmloss.hf.patch(model)
    accumulated = train(tmp_path, model, 2, 2)
    start = dict(tiny("llama_untied", torch.float32).named_parameters())
    for name, value in reference.items():
        assert not torch.equal(value, start[name]) or "norm" in name  # the step moved it
        torch.testing.assert_close(accumulated[name], value, atol=1e-6, rtol=1e-5)
