"""Policy batch filters and token weights: dynamic sampling, truncated completions, the soft
overlong punishment, top-entropy tokens, truncated importance sampling, Lp-Reg's proxy."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_policy_loop import _prompts, _trainer

import lmloss
from lmloss.train import policy_tokens
from lmloss.train.rewards import soft_overlong_punishment


def same_reward_for_b(completions, prompts, **_):
    """Equal rewards for the prompts about 'b' (their groups carry no advantage)."""
    return [
        1.0 if p.endswith("b") else c.count("a") / max(1, len(c)) + 0.01 * len(c)
        for c, p in zip(completions, prompts)
    ]


def constant_reward(completions, **_):
    return [1.0] * len(completions)


def _groups(batch, group):
    return batch.tensors["advantages"].reshape(-1, group)


def test_dynamic_sampling_keeps_only_groups_with_differing_rewards(tiny_model, tmp_path):
    trainer = _trainer(
        tiny_model,
        tmp_path,
        train={"batch_size": 4},
        policy={"dynamic_sampling": True, "rewards": ["test_policy_filters:same_reward_for_b"]},
    )
    examples = [ex for ex in trainer.examples if ex.row["prompt"] == "go b"] + trainer.examples[:3]
    batch = trainer.mode.prepare(examples)
    assert batch.metrics["groups_dropped"] >= 1 and batch.metrics["sampling_rounds"] >= 2
    assert batch.examples == 4 * 4
    assert bool((_groups(batch, 4).abs().amax(1) > 0).all())  # every kept group differs


def test_dynamic_sampling_trains_on_what_it_has_after_the_cap(tiny_model, tmp_path):
    said = []
    trainer = _trainer(
        tiny_model,
        tmp_path,
        policy={
            "dynamic_sampling": True,
            "max_num_gen_batches": 2,
            "rewards": ["test_policy_filters:constant_reward"],
        },
    )
    trainer.ctx.echo = said.append
    batch = trainer.mode.prepare(trainer.examples[:2])
    assert batch.metrics["sampling_rounds"] == 2 and batch.metrics["groups_kept"] == 0
    assert batch.examples == 8 and "equal rewards" in said[0]


def test_truncated_completions_get_no_loss(tiny_model, tmp_path):
    trainer = _trainer(
        tiny_model, tmp_path, policy={"mask_truncated_completions": True, "max_new_tokens": 3}
    )
    torch.manual_seed(0)
    batch = trainer.mode.prepare(trainer.examples[:2])
    trained = batch.tensors["targets"] != -100
    ended = batch.tensors["ids"][:, batch.tensors["start"] :] == trainer.ctx.tokenizer.eos_token_id
    assert batch.metrics["truncated_completions"] > 0
    assert bool((trained.any(1) == ended.any(1)).all())  # only rows that ended train
    assert batch.tokens == int(trained.sum())


def test_soft_overlong_punishment_is_dapo_eq13():
    from trl.rewards import get_soft_overlong_punishment

    lengths = [1, 10, 15, 16, 18, 20]
    got = soft_overlong_punishment(torch.tensor(lengths), max_length=20, buffer=5)
    theirs = get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=5)
    assert got.tolist() == pytest.approx(theirs([[0] * n for n in lengths]))
    assert got.tolist() == pytest.approx([0, 0, 0, -0.2, -0.6, -1.0])


def test_overlong_punishment_joins_the_rewards(tiny_model, tmp_path):
    trainer = _trainer(
        tiny_model,
        tmp_path,
        policy={"overlong_buffer": 2, "overlong_penalty": 0.5, "max_new_tokens": 4},
    )
    batch = trainer.mode.prepare(trainer.examples[:2])
    assert "reward/soft_overlong" in batch.metrics
    assert batch.metrics["reward/soft_overlong"] <= 0


def test_top_entropy_mask_is_the_quantile_rule():
    torch.manual_seed(0)
    entropy, mask = torch.rand(4, 10), torch.rand(4, 10) > 0.3
    kept = policy_tokens.top_entropy_mask(entropy, mask, 0.2)
    values = sorted(entropy[mask].tolist())
    threshold = torch.quantile(torch.tensor(values), 0.8)
    assert bool((kept == (mask & (entropy >= threshold))).all())
    assert int(kept.sum()) == math.ceil(0.2 * len(values)) or int(kept.sum()) == round(
        0.2 * len(values)
    )
    assert bool((policy_tokens.top_entropy_mask(entropy, mask, 1.0) == mask).all())


def test_top_entropy_quantile_trains_only_high_entropy_tokens(tiny_model, tmp_path):
    trainer = _trainer(tiny_model, tmp_path, policy={"top_entropy_quantile": 0.25})
    batch = trainer.mode.prepare(trainer.examples[:2])
    t = batch.tensors
    trained = t["targets"] != -100
    weighted = (t["advantages"] != 0) & trained
    assert t["advantages"].dim() == 2
    assert 0 < batch.metrics["trained_token_fraction"] <= 0.5
    assert int(weighted.sum()) <= int(trained.sum() * 0.25) + 2
    trainer.train_step()  # trains


def test_truncated_importance_weights_are_capped_ratios():
    train = torch.tensor([[-1.0, -2.0, -0.5]])
    sampler = torch.tensor([[-1.5, -0.5, -3.0]])
    mask = torch.tensor([[True, True, False]])
    got = policy_tokens.truncated_importance_weights(train, sampler, mask, cap=2.0)
    assert got[0].tolist() == pytest.approx([math.exp(0.5), math.exp(-1.5), 0.0])
    capped = policy_tokens.truncated_importance_weights(train, sampler, mask, cap=1.2)
    assert capped[0, 0].item() == pytest.approx(1.2)


def test_tis_weights_the_advantages_and_is_logged(tiny_model, tmp_path):
    trainer = _trainer(tiny_model, tmp_path, policy={"tis_cap": 1.5})
    assert trainer.rollouts.record_old is not None
    (batch,) = trainer.sample_micro_batches(1)
    t = batch.tensors
    advantages = t["advantages"].clone()
    t["sampler_logps"] = t["sampler_logps"] - 1.0  # a sampler that gave every token less mass
    trainer.mode.record_old(batch)
    trained = t["targets"] != -100
    weights = torch.exp(t["old_logps"] - t["sampler_logps"]).clamp(max=1.5)
    want = torch.where(trained, advantages[:, None] * weights, 0.0)
    torch.testing.assert_close(t["advantages"], want)
    assert batch.metrics["tis_truncated"] == 1.0  # e^1 > 1.5 everywhere
    assert batch.metrics["tis_ratio_min"] == pytest.approx(math.e, rel=1e-3)


def test_sampling_records_the_trainers_log_probs_in_fp32(tiny_model, tmp_path):
    trainer = _trainer(tiny_model, tmp_path, policy={"tis_cap": 2.0})
    row = trainer.train_step()
    assert row["tis_ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert row["tis_ratio_min"] == pytest.approx(1.0, abs=1e-4)


def test_min_p_proxy_log_probs():
    torch.manual_seed(0)
    logits = torch.randn(3, 12) * 3
    token = torch.tensor([0, 5, 11])
    got = policy_tokens.min_p_log_prob(torch.log_softmax(logits, -1), token, 0.1)
    probs = logits.softmax(-1)
    kept = probs >= 0.1 * probs.max(-1, keepdim=True).values
    proxy = torch.where(kept, probs, 0.0)
    proxy = proxy / proxy.sum(-1, keepdim=True)
    for row in range(3):
        p = proxy[row, token[row]].item()
        want = math.log(p) if p > 0 else policy_tokens.PROXY_FLOOR
        assert got[row].item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("objective", lmloss.list_objectives("policy"))
def test_every_policy_objective_trains_from_a_recipe(tiny_model, tmp_path, objective):
    trainer = _trainer(
        tiny_model,
        tmp_path,
        {"name": objective},
        train={"max_steps": 1},
        policy={"num_iterations": 2},
    )
    rows = [trainer.train_step(), trainer.train_step()]
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_gtpo_refuses_token_weights(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="one advantage per sequence"):
        _trainer(tiny_model, tmp_path, {"name": "gtpo"}, policy={"tis_cap": 2.0})


@pytest.mark.parametrize(
    "policy, train, message",
    [
        ({"num_iterations": 0}, {}, "policy.num_iterations must be > 0"),
        ({"steps_per_generation": 3}, {"grad_accum": 2}, "multiple of train.grad_accum"),
        ({"max_num_gen_batches": 0}, {}, "policy.max_num_gen_batches must be > 0"),
        ({"overlong_buffer": 9, "max_new_tokens": 8}, {}, "policy.overlong_buffer must be in"),
        ({"overlong_penalty": -1.0}, {}, "policy.overlong_penalty must be >= 0"),
        ({"tis_cap": -1.0}, {}, "policy.tis_cap must be >= 0"),
        ({"top_entropy_quantile": 0.0}, {}, "policy.top_entropy_quantile must be in"),
        ({"proxy_min_p": 1.0}, {}, "policy.proxy_min_p must be in"),
    ],
)
def test_bad_policy_loop_keys_are_refused_by_validate(tiny_model, tmp_path, policy, train, message):
    from train_testkit import recipe

    from lmloss.train.recipe import validate

    good = recipe(tiny_model, _prompts(tmp_path), tmp_path / "run", {"name": "grpo"})
    with pytest.raises(ValueError, match=message):
        validate(
            dataclasses.replace(
                good,
                policy=dataclasses.replace(good.policy, **policy),
                train=dataclasses.replace(good.train, **train),
            )
        )


@pytest.mark.parametrize("policy", [{"temperature": 0.7, "tis_cap": 2.0}, {"temperature": 1.3}])
def test_policy_scores_tokens_at_the_sampling_temperature(tiny_model, tmp_path, policy):
    """TRL's convention: π_θ(y_t) is softmax(z / T) at the temperature T the tokens were
    drawn at, for the recorded sampler log-probs, π_old and the trained log-probs alike."""
    trainer = _trainer(tiny_model, tmp_path, policy={**policy, "num_iterations": 2})
    (batch,) = trainer.sample_micro_batches(1)
    t = batch.tensors
    trainer.mode.record_old(batch)
    positions = (t["attention"].cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = trainer.model(
            input_ids=t["ids"], attention_mask=t["attention"], position_ids=positions
        ).logits[:, t["start"] - 1 : t["ids"].shape[1] - 1]
    tempered = (logits.float() / policy["temperature"]).log_softmax(-1)
    want = tempered.gather(-1, t["targets"].clamp(min=0)[..., None]).squeeze(-1)
    trained = t["targets"] != -100
    torch.testing.assert_close(t["old_logps"][trained], want[trained], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t["sampler_logps"][trained], want[trained], atol=1e-4, rtol=1e-4)
    out = trainer.mode.loss(batch, None)  # the trained log-probs: ratios to π_old are 1
    assert float(out.metrics["ratio_min"]) == pytest.approx(1.0, abs=1e-4)
    assert float(out.metrics["ratio_max"]) == pytest.approx(1.0, abs=1e-4)
    entropy = -(tempered.exp() * tempered).sum(-1)
    assert float(out.metrics["entropy"]) == pytest.approx(float(entropy[trained].mean()), rel=1e-3)
