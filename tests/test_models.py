"""The bundled SmolLM2 is an ordinary transformers model: Trainer fine-tunes it, save_pretrained
writes it, and its config names its architecture and Hub id, not a local folder."""

from __future__ import annotations

import json

import pytest
import torch

from lmloss.models import SMOLLM2_HUB_ID, smollm2


@pytest.fixture(scope="module")
def bundled():
    return smollm2()


def test_bundled_model_is_not_flagged_quantized(bundled):
    model, tokenizer = bundled
    assert not getattr(model, "is_quantized", False) and model.hf_quantizer is None
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert model.config._name_or_path == SMOLLM2_HUB_ID == model.name_or_path
    assert tokenizer.name_or_path == SMOLLM2_HUB_ID
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bundled_model_saves_with_save_pretrained(bundled, tmp_path):
    model, _ = bundled
    # one small tensor keeps the write fast; the refusal of a quantized model comes first
    norm = {"model.norm.weight": model.model.norm.weight.detach()}
    model.save_pretrained(tmp_path, state_dict=norm, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert "site-packages" not in json.dumps(config)


def test_bundled_model_trains_in_transformers_trainer(bundled, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model, tokenizer = bundled
    model.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)  # a small optimizer state for a CPU test
    ids = tokenizer("The capital of France is Paris.")["input_ids"]
    data = Dataset.from_list([{"input_ids": ids, "labels": ids}] * 2)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    before = model.model.norm.weight.detach().clone()
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(model.model.norm.weight.detach(), before)
