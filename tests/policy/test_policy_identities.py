"""Degenerate settings that must reproduce another objective, and float64 gradcheck."""

from __future__ import annotations

import pytest
import torch
from policy_testkit import GROUP, POLICY_NAMES, extra_inputs, make_case

import lmloss
from lmloss.objectives.policy.aggregate import aggregate


def loss_of(name, c, **kw):
    return lmloss.policy_loss(name, logps=c.logps, mask=c.mask, advantages=c.advantages, **kw)


def grad_of(loss, c):
    return torch.autograd.grad(loss, c.logps)[0]


# name -> aggregation under which the on-policy gradient equals −Σ A ∇log π
ON_POLICY = {
    "ppo": None,
    "grpo": None,
    "dr_grpo": None,
    "dapo": None,
    "bnpo": None,
    "gspo": None,
    "luspo": None,
    "rloo": "seq_mean_token_sum",  # the sequence ratio's gradient is Σ_t ∇log π_t
    "cispo": None,
    "sapo": None,
    "vespo": None,
}


@pytest.mark.parametrize("name", sorted(ON_POLICY))
def test_on_policy_ratio_one_gives_plain_policy_gradient(name):
    c = make_case(seed=11)
    out = loss_of(name, c)
    agg = ON_POLICY[name] or lmloss.describe(name)["hyper"]["aggregation"]
    plain = aggregate(-c.advantages[:, None] * c.logps, c.mask, agg).mean()
    torch.testing.assert_close(grad_of(out.loss, c), grad_of(plain, c))
    torch.testing.assert_close(out.metrics["ratio_mean"], torch.tensor(1.0, dtype=torch.float64))


def test_gtpo_on_policy_without_conflicts_or_filter_is_grpo_policy_gradient():
    c = make_case(seed=12)
    ids = torch.arange(c.mask.numel()).reshape(c.mask.shape)  # all distinct: no conflict
    out = loss_of("gtpo", c, entropy=torch.zeros_like(c.entropy), token_ids=ids, group_size=GROUP)
    grpo = loss_of("grpo", c)
    torch.testing.assert_close(grad_of(out.loss, c), grad_of(grpo.loss, c))


def test_dapo_with_symmetric_clip_is_ppo():
    c = make_case(seed=13)
    dapo = loss_of("dapo", c, old_logps=c.old_logps, eps_high=0.2)
    ppo = loss_of("ppo", c, old_logps=c.old_logps)
    torch.testing.assert_close(dapo.loss, ppo.loss)
    torch.testing.assert_close(grad_of(dapo.loss, c), grad_of(ppo.loss, c))
    assert dapo.metrics["clip_frac_high"] == ppo.metrics["clip_frac_high"]


def test_dapo_clip_higher_keeps_ratios_below_1_28():
    c = make_case(seed=13)
    old = c.logps.detach() - torch.log(torch.tensor(1.25, dtype=torch.float64))  # ρ = 1.25
    dapo = loss_of("dapo", c, old_logps=old)
    ppo = loss_of("ppo", c, old_logps=old)
    assert ppo.metrics["clip_frac_high"] > 0 and dapo.metrics["clip_frac_high"] == 0
    positive = (c.advantages[:, None] > 0) & (c.mask > 0)
    assert bool((grad_of(ppo.loss, c)[positive] == 0).all())
    assert bool((grad_of(dapo.loss, c)[positive] != 0).all())


def test_gspo_single_token_completions_equal_token_level():
    c = make_case(seed=14, spread=0.5)
    c.mask = torch.zeros_like(c.mask)
    c.mask[torch.arange(6), torch.arange(6)] = 1.0  # one token per completion
    eps = {"eps_low": 0.2, "eps_high": 0.28}
    gspo = loss_of("gspo", c, old_logps=c.old_logps, **eps)
    token = loss_of("grpo", c, old_logps=c.old_logps, **eps)
    torch.testing.assert_close(gspo.loss, token.loss)
    torch.testing.assert_close(grad_of(gspo.loss, c), grad_of(token.loss, c))


def test_dr_grpo_advantages_are_grpo_times_group_std():
    """Convention: A_grpo = (r − mean)/(std + eps), unbiased std, eps = 1e-4 (TRL)."""
    c = make_case(seed=15, batch=12)
    grpo = lmloss.advantages("grpo", c.rewards, group_size=GROUP)
    dr = lmloss.advantages("dr_grpo", c.rewards, group_size=GROUP)
    std = c.rewards.reshape(-1, GROUP).std(dim=1).repeat_interleave(GROUP)
    torch.testing.assert_close(dr, grpo * (std + 1e-4))
    exact = lmloss.advantages("grpo", c.rewards, group_size=GROUP, eps=0.0)
    informative = std > 0
    torch.testing.assert_close(dr[informative], (exact * std)[informative])


def test_rloo_advantages_are_scaled_dr_grpo():
    c = make_case(seed=16, batch=12)
    rloo = lmloss.advantages("rloo", c.rewards, group_size=4)
    dr = lmloss.advantages("dr_grpo", c.rewards, group_size=4)
    torch.testing.assert_close(rloo, dr * 4 / 3)


def test_bnpo_without_batch_spread_is_reinforce_with_baseline():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # p = 0.5, 0.5
    bnpo = lmloss.advantages("bnpo", rewards, group_size=2)
    torch.testing.assert_close(bnpo, lmloss.advantages("dr_grpo", rewards, group_size=2))


def test_registry_defaults_are_documented():
    assert lmloss.describe("dapo")["hyper"]["eps_high"] == 0.28
    assert lmloss.describe("loop")["name"] == "rloo"
    assert lmloss.describe("gtpo")["hyper"]["entropy_threshold"] == 0.7
    assert lmloss.describe("gtpo")["stats"] == ["logp", "entropy"]
    assert "arXiv" in lmloss.describe("gspo")["paper"]


# Stop-gradient pieces (CISPO's and VESPO's weights, STEER's weights, GTPO's entropy shift)
# are excluded from the gradient by definition, so gradcheck runs where they are constant.
GRADCHECK_SETUP = {
    "cispo": {"on_policy": True},
    "vespo": {"on_policy": True},
    "steer": {"hyper": {"weight_min": 1.0, "weight_max": 1.0}},
    "gtpo": {"entropy_fixed": True},
}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_gradcheck_float64(name):
    c = make_case(seed=17, batch=6, length=4)
    setup = GRADCHECK_SETUP.get(name, {})
    extra = {**extra_inputs(name, c), **setup.get("hyper", {})}
    old = None if setup.get("on_policy") else c.old_logps

    def fn(logps, entropy):
        kw = dict(extra)
        if name == "clip_cov":  # a fresh generator per call: the same draw every time
            kw["generator"] = torch.Generator().manual_seed(0)
        out = lmloss.policy_loss(
            name,
            logps=logps,
            old_logps=old,
            ref_logps=c.ref_logps,
            mask=c.mask,
            advantages=c.advantages,
            entropy=entropy,
            beta=0.05,
            entropy_coef=0.01,
            **kw,
        )
        return out.loss

    entropy = c.entropy.clone().requires_grad_(not setup.get("entropy_fixed"))
    assert torch.autograd.gradcheck(fn, (c.logps, entropy), eps=1e-6, atol=1e-6)
