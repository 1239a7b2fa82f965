"""The loop around policy objectives: reused rollouts, their old log-probs and clipping."""

from __future__ import annotations

import pytest
import torch
from train_testkit import recipe, write_jsonl

from lmloss.train.loop import Trainer
from lmloss.train.rollout_buffer import RolloutBuffer

QUIET = {"echo": lambda *_: None}
FP32 = {"precision": "fp32", "threads": 1}


def _prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"go {x}"} for x in "abcdefgh"])


def _trainer(tiny_model, tmp_path, objective=None, train=None, **sections):
    run = recipe(
        tiny_model,
        _prompts(tmp_path),
        tmp_path / "run",
        objective or {"name": "grpo"},
        train={"max_steps": 4, "batch_size": 2, "lr": 5e-2, **FP32, **(train or {})},
        policy={
            "group_size": 4,
            "max_new_tokens": 6,
            "rewards": ["train_testkit:letter_a_reward"],
            **sections.pop("policy", {}),
        },
        **sections,
    )
    return Trainer(run, **QUIET)


def _completion_logps(trainer, t):
    """log π_θ of the sampled tokens from materialized logits (the plain path)."""
    positions = (t["attention"].cumsum(1) - 1).clamp(min=0)
    logits = trainer.model(
        input_ids=t["ids"], attention_mask=t["attention"], position_ids=positions
    ).logits
    scored = logits[:, t["start"] - 1 : t["ids"].shape[1] - 1].float()
    targets = t["targets"]
    logp = scored.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return logp, targets != -100


def _grads(trainer):
    return [p.grad.clone() for p in trainer.trainable.values()]


def test_buffer_replays_a_generation_in_pass_order():
    calls = []

    def sample(n):
        calls.append(n)
        return [f"g{len(calls)}m{i}" for i in range(n)]

    buffer = RolloutBuffer(4, 2, passes=2)
    steps = [buffer.next_step(sample) for _ in range(5)]
    assert steps[:4] == [["g1m0", "g1m1"], ["g1m2", "g1m3"]] * 2
    assert steps[4] == ["g2m0", "g2m1"] and calls == [4, 4]
    assert not RolloutBuffer(2, 2).reuses and RolloutBuffer(2, 1).reuses
    with pytest.raises(ValueError, match=r"multiple of train\.grad_accum"):
        RolloutBuffer(3, 2)


def test_on_policy_runs_record_no_old_logps(tiny_model, tmp_path):
    trainer = _trainer(tiny_model, tmp_path)
    assert trainer.rollouts.record_old is None  # no extra forward pass
    row = trainer.train_step()
    assert row["ratio_max"] == row["ratio_min"] == 1.0


def test_second_pass_gradient_is_the_plain_clipped_formula(tiny_model, tmp_path):
    """Pass 1 is on-policy (old log-probs recorded before the update: ratio 1); pass 2 has
    ratios away from 1, and each token gets the gradient of the clipped surrogate written
    out here: −A·r/|y|/B where the ratio is inside its clip side, exactly 0 outside."""
    eps = 0.2
    trainer = _trainer(
        tiny_model,
        tmp_path,
        {"name": "grpo", "eps_low": eps, "eps_high": eps},
        train={"max_grad_norm": 0.0},
        policy={"num_iterations": 2},
    )
    first = trainer.train_step()
    assert abs(first["ratio_max"] - 1) < 1e-5 and abs(first["ratio_min"] - 1) < 1e-5
    (batch,) = trainer.rollouts.queue[0]  # the same micro-batch, second pass
    t = batch.tensors
    out = trainer.mode.loss(batch, None)
    assert float(out.metrics["ratio_max"]) - float(out.metrics["ratio_min"]) > 0.05
    out.loss.backward()
    fused = _grads(trainer)
    trainer.optimizer.zero_grad(set_to_none=True)

    logp, mask = _completion_logps(trainer, t)
    ratio = torch.exp(logp.detach() - t["old_logps"])
    advantage = t["advantages"][:, None].expand_as(ratio)
    # the min of the clipped surrogate: the unclipped term is active unless the ratio went
    # past 1 + eps with A > 0 or below 1 - eps with A < 0
    clipped = ((advantage > 0) & (ratio > 1 + eps)) | ((advantage < 0) & (ratio < 1 - eps))
    assert bool((clipped & mask).any()), "no token left the clip range: raise the lr"
    lengths = mask.sum(1, keepdim=True).clamp(min=1)
    coefficient = torch.where(clipped | ~mask, 0.0, -advantage * ratio / lengths) / len(ratio)
    (coefficient * logp).sum().backward()
    plain = _grads(trainer)
    for got, want in zip(fused, plain):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert float(out.metrics["clip_frac"]) == pytest.approx(
        float((clipped & mask).sum() / mask.sum()), abs=1e-6
    )


def test_steps_per_generation_splits_one_generation_into_steps(tiny_model, tmp_path):
    trainer = _trainer(
        tiny_model, tmp_path, policy={"steps_per_generation": 2}, train={"max_steps": 2}
    )
    sampled = []
    prepare = trainer.mode.prepare
    trainer.mode.prepare = lambda examples: sampled.append(1) or prepare(examples)
    first, second = trainer.train_step(), trainer.train_step()
    assert len(sampled) == 2  # both micro-batches sampled before the first step
    assert abs(first["ratio_max"] - 1) < 1e-5
    assert second["ratio_max"] != pytest.approx(1.0, abs=1e-4)  # trained after an update


@pytest.mark.parametrize("objective", ["gspo", "dapo"])
def test_sequence_ratio_and_dual_clip_act_on_later_passes(tiny_model, tmp_path, objective):
    hyper = {"ratio_level": "sequence"} if objective == "gspo" else {"dual_clip": 3.0}
    trainer = _trainer(
        tiny_model, tmp_path, {"name": objective, **hyper}, policy={"num_iterations": 2}
    )
    trainer.train_step()
    second = trainer.train_step()
    assert second["ratio_max"] > second["ratio_min"]


def test_bf16_sampler_and_trainer_agree_to_bf16_precision(tiny_model, tmp_path):
    """bf16 autocast: the sampler's log-probs (the model's own head under autocast) and the
    trainer's (the fused engine, float32 accumulation) differ by rounding only; the old
    log-probs of pass 1 are the trainer's own (ratio 1)."""
    trainer = _trainer(
        tiny_model,
        tmp_path,
        train={"precision": "bf16"},
        policy={"tis_cap": 2.0, "num_iterations": 2},
    )
    row = trainer.train_step()
    assert abs(row["ratio_max"] - 1) < 1e-3 and abs(row["ratio_min"] - 1) < 1e-3
    assert abs(row["tis_ratio_mean"] - 1) < 0.05
    assert 0.95 < row["tis_ratio_min"] <= row["tis_ratio_max"] < 1.05
