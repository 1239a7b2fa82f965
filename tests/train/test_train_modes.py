"""Each training mode learns a toy task on a tiny random model (loss falls / reward rises)."""

from __future__ import annotations

import math

import pytest
from train_testkit import recipe, write_jsonl

from lmloss.train.loop import train
from lmloss.train.precompute import precompute


def _falls(losses: list[float], factor: float = 0.8) -> bool:
    return losses[-1] < factor * losses[0]


def test_sft_loss_falls(tiny_model, tmp_path):
    rows = [{"prompt": f"say {w}", "completion": w * 3} for w in ("ab", "cd", "ef", "gh")]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    summary = train(
        recipe(tiny_model, data, tmp_path / "run", {"name": "ce"}), echo=lambda *_: None
    )
    assert _falls(summary.losses, 0.6), summary.losses


def test_sft_bf16_autocast_loss_falls(tiny_model, tmp_path):
    rows = [{"prompt": f"say {w}", "completion": w * 3} for w in ("ab", "cd", "ef", "gh")]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    run = recipe(tiny_model, data, tmp_path / "run", {"name": "ce"}, train={"precision": "bf16"})
    summary = train(run, echo=lambda *_: None)
    assert _falls(summary.losses, 0.6), summary.losses


def test_sft_messages_loss_falls(tiny_model, tmp_path):
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"},
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}] * 4)
    summary = train(
        recipe(tiny_model, data, tmp_path / "run", {"name": "z_loss"}), echo=lambda *_: None
    )
    assert _falls(summary.losses, 0.6), summary.losses


def _pairs(tmp_path):
    rows = [{"prompt": f"is {x} ok?", "chosen": "yes", "rejected": "no way"} for x in "abcdefgh"]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_dpo_loss_falls(tiny_model, tmp_path):
    run = recipe(tiny_model, _pairs(tmp_path), tmp_path / "run", {"name": "dpo", "beta": 0.5})
    summary = train(run, echo=lambda *_: None)
    assert _falls(summary.losses), summary.losses


def test_reference_free_objective_runs_no_reference(tiny_model, tmp_path):
    from lmloss.train.loop import Trainer

    run = recipe(tiny_model, _pairs(tmp_path), tmp_path / "run", {"name": "simpo"})
    trainer = Trainer(run, echo=lambda *_: None)
    assert trainer.reference_kind == "none" and trainer.ctx.reference is None
    summary = trainer.run()
    assert _falls(summary.losses), summary.losses


# |loss difference| allowed at steps 1 and 2: bf16 autocast rounds the reference's
# matmul inputs to 8 significant bits, in batches of other shapes when precomputed
REFERENCE_TOLERANCE = {"fp32": (1e-6, 1e-5), "bf16": (1e-3, 2e-3)}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precomputed_reference_equals_frozen_copy(tiny_model, tmp_path, precision):
    data = _pairs(tmp_path)
    objective = {"name": "dpo", "beta": 0.5}
    short = {"max_steps": 2, "precision": precision}  # bf16 even where the CPU emulates it
    copy = train(
        recipe(tiny_model, data, tmp_path / "a", objective, train=short), echo=lambda *_: None
    )
    run = recipe(
        tiny_model, data, tmp_path / "b", objective, train=short, reference={"kind": "precomputed"}
    )
    precompute(run, echo=lambda *_: None)
    assert (tmp_path / "pairs.jsonl.reference.safetensors").is_file()
    stored = train(run, echo=lambda *_: None)
    first, second = REFERENCE_TOLERANCE[precision]
    assert abs(copy.losses[0] - stored.losses[0]) < first
    assert abs(copy.losses[1] - stored.losses[1]) < second
    assert abs(copy.losses[0] - math.log(2)) < first  # policy = reference: -log sigmoid(0)


def test_lora_dpo_with_adapters_off_reference(tiny_model, tmp_path):
    import torch

    from lmloss.train.loop import Trainer
    from lmloss.train.model_loading import load_trained

    run = recipe(
        tiny_model,
        _pairs(tmp_path),
        tmp_path / "run",
        {"name": "dpo", "beta": 0.5},
        lora={"enabled": True, "r": 4, "alpha": 8.0},
        train={"lr": 3e-2},
        output={"save_model": True},
    )
    trainer = Trainer(run, echo=lambda *_: None)
    assert trainer.reference_kind == "adapters_off"
    assert all("lora" in name for name in trainer.trainable)
    summary = trainer.run()
    assert _falls(summary.losses), summary.losses
    reloaded, _ = load_trained(tmp_path / "run")  # the base + the saved adapters
    ids = torch.tensor([[5, 9, 12, 30]])
    with torch.no_grad():
        expected = trainer.model(ids).logits
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
        with trainer.loaded.peft.disable_adapter():  # the adapters did change the model
            assert not torch.allclose(trainer.model(ids).logits, expected, atol=1e-3)


def test_kto_unpaired_loss_falls(tiny_model, tmp_path):
    rows = [
        {"prompt": f"is {x} ok?", "completion": c, "label": good}
        for x in "abcd"
        for c, good in (("yes", True), ("no way", False))
    ]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    run = recipe(tiny_model, data, tmp_path / "run", {"name": "kto", "beta": 0.5})
    summary = train(run, echo=lambda *_: None)
    assert _falls(summary.losses), summary.losses


def test_grpo_reward_rises(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"go {x}"} for x in "abcdefgh"])
    run = recipe(
        tiny_model,
        data,
        tmp_path / "run",
        {"name": "grpo"},
        train={"max_steps": 12, "batch_size": 2, "lr": 3e-2},
        policy={"group_size": 4, "max_new_tokens": 6, "rewards": ["train_testkit:letter_a_reward"]},
    )
    train(run, echo=lambda *_: None)
    from lmloss.train.progress import read_jsonl

    rewards = [r["reward"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards


def test_distill_from_teacher_model_loss_falls(tiny_model, tiny_teacher, tmp_path):
    rows = [{"prompt": f"tell {x}", "completion": "a story " + x} for x in "abcd"]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    run = recipe(
        tiny_model,
        data,
        tmp_path / "run",
        {"name": "forward_kl"},
        distill={"teacher": str(tiny_teacher)},
    )
    summary = train(run, echo=lambda *_: None)
    assert _falls(summary.losses), summary.losses


def test_distill_from_topk_file_loss_falls(tiny_model, tiny_teacher, tmp_path):
    rows = [{"prompt": f"tell {x}", "completion": "a story " + x} for x in "abcd"]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    topk = tmp_path / "teacher_topk.safetensors"
    run = recipe(
        tiny_model,
        data,
        tmp_path / "pre",
        {"name": "reverse_kl"},
        distill={"teacher": str(tiny_teacher), "topk_file": str(topk), "top_k": 8},
    )
    precompute(run, echo=lambda *_: None)
    sparse = recipe(
        tiny_model, data, tmp_path / "run", {"name": "reverse_kl"}, distill={"topk_file": str(topk)}
    )
    summary = train(sparse, echo=lambda *_: None)
    assert _falls(summary.losses), summary.losses
