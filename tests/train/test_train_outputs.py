"""What a run leaves behind: no checkpoint with save_every = 0, a final model that other tools
load and train, LoRA adapters in PEFT's format and merged weights."""

from __future__ import annotations

import json

import torch
from train_testkit import recipe, write_jsonl

from lmloss.train.loop import Trainer
from lmloss.train.model_loading import load_trained

QUIET = {"echo": lambda *_: None}
ROWS = [{"prompt": f"say {w}", "completion": w} for w in ("ab", "cd", "ef", "gh")]
IDS = torch.tensor([[5, 9, 12, 30, 7]])


def _run(tiny_model, tmp_path, name="run", **sections):
    data = write_jsonl(tmp_path / "sft.jsonl", ROWS)
    output = {"save_model": True, **sections.pop("output", {})}
    train = {"max_steps": 2, **sections.pop("train", {})}
    run = recipe(
        tiny_model, data, tmp_path / name, {"name": "ce"}, train=train, output=output, **sections
    )
    trainer = Trainer(run, **QUIET)
    trainer.run()
    return trainer, tmp_path / name


def test_save_every_zero_writes_only_the_final_model(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer, run = _run(tiny_model, tmp_path, output={"save_every": 0})
    assert not (run / "checkpoints").exists()
    assert not list(run.rglob("optimizer.pt"))
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    for file in (run / "model").glob("*.json"):
        assert str(tmp_path) not in file.read_text(), f"{file.name} names a local path"
    loaded = AutoModelForCausalLM.from_pretrained(run / "model")
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, trainer.model(IDS).logits)


def test_saved_model_trains_in_trl_sft_trainer(tiny_model, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    _, run = _run(tiny_model, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        max_length=32,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer
    )
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss == result.training_loss


def test_lora_run_writes_adapters_and_merged_weights(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"enabled": True, "r": 4, "alpha": 8.0}
    trainer, run = _run(tiny_model, tmp_path, lora=lora, train={"lr": 5e-2, "max_steps": 2})
    assert (run / "adapter" / "adapter_config.json").is_file()
    with torch.no_grad():
        expected = trainer.model(IDS).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "model")
        torch.testing.assert_close(merged(IDS).logits, expected, atol=1e-5, rtol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        assert not torch.allclose(base(IDS).logits, expected, atol=1e-3)  # training did act
        adapted = PeftModel.from_pretrained(base, run / "adapter")
        torch.testing.assert_close(adapted(IDS).logits, expected, atol=1e-5, rtol=1e-5)

    _, unmerged = _run(tiny_model, tmp_path, "unmerged", lora=lora, output={"merge_lora": False})
    assert not (unmerged / "model").exists()
    model, _ = load_trained(unmerged)  # lmloss eval finds the adapters
    assert model is not None
