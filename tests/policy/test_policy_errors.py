"""Bad input gets a clear error; all-masked completions give zero loss and zero gradient."""

from __future__ import annotations

import pytest
import torch
from policy_testkit import GROUP, POLICY_NAMES, extra_inputs, make_case

import lmloss
from lmloss.policy import dynamic_sampling_mask


def call(name, c, **kw):
    base = dict(logps=c.logps, mask=c.mask, advantages=c.advantages, entropy=c.entropy)
    return lmloss.policy_loss(name, **{**base, **extra_inputs(name, c), **kw})


def test_rewards_that_do_not_divide_into_groups():
    with pytest.raises(ValueError, match="does not divide into groups"):
        lmloss.advantages("grpo", torch.rand(7), group_size=3)
    c = make_case()
    with pytest.raises(ValueError, match="does not divide into groups"):
        call("gtpo", c, group_size=4)
    with pytest.raises(ValueError, match="does not divide into groups"):
        dynamic_sampling_mask(torch.rand(5), group_size=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"group_size": 1}, ValueError, "group_size must be >= 2"),
        ({"group_size": 2.0}, TypeError, "group_size must be an int"),
        ({}, ValueError, "needs group_size"),
    ],
)
def test_bad_group_size(kwargs, error, match):
    with pytest.raises(error, match=match):
        lmloss.advantages("rloo", torch.rand(6), **kwargs)


def test_bad_rewards():
    with pytest.raises(ValueError, match="NaN"):
        lmloss.advantages("grpo", torch.tensor([1.0, float("nan")]), group_size=2)
    with pytest.raises(ValueError, match=r"\[min_value, max_value\]"):
        lmloss.advantages("bnpo", torch.tensor([2.0, 0.0]), group_size=2)
    with pytest.raises(ValueError, match="needs mask"):
        lmloss.advantages("token_group_mean", torch.rand(4), group_size=2)
    with pytest.raises(ValueError, match="did you mean 'grpo'"):
        lmloss.advantages("grpoo", torch.rand(4), group_size=2)


def test_mask_shape_mismatch():
    c = make_case()
    with pytest.raises(ValueError, match=r"mask must have shape \(6, 7\)"):
        call("grpo", c, mask=c.mask[:, :-1])
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        call("grpo", c, mask=c.mask * 2)
    with pytest.raises(ValueError, match="old_logps must have shape"):
        call("grpo", c, old_logps=c.old_logps[:-1])
    with pytest.raises(ValueError, match=r"advantages must have shape \(6,\)"):
        call("grpo", c, advantages=c.advantages[:-1])


@pytest.mark.parametrize(
    ("name", "key"), [("grpo", "eps_low"), ("dapo", "eps_high"), ("gtpo", "eps_low")]
)
def test_negative_clip_width(name, key):
    with pytest.raises(ValueError, match=f"{key} must be in"):
        call(name, make_case(), **{key: -0.1})


def test_other_bad_hyper_parameters():
    c = make_case()
    with pytest.raises(ValueError, match="needs ref_logps"):
        call("grpo", c, beta=0.1)
    with pytest.raises(ValueError, match="hyper-parameter of 'grpo'"):
        call("grpo", c, epsilon=0.2)
    with pytest.raises(ValueError, match="unknown aggregation"):
        call("grpo", c, aggregation="sum")
    with pytest.raises(ValueError, match="dual_clip must be in"):
        call("ppo", c, dual_clip=0.5)
    with pytest.raises(ValueError, match="unknown kl_estimator"):
        call("grpo", c, ref_logps=c.ref_logps, beta=0.1, kl_estimator="k4")
    with pytest.raises(ValueError, match="does not take proxy_logps"):
        call("grpo", c, proxy_logps=c.proxy_logps)
    with pytest.raises(ValueError, match="needs token_ids"):
        lmloss.policy_loss(
            "gtpo", logps=c.logps, mask=c.mask, advantages=c.advantages, group_size=GROUP
        )
    with pytest.raises(ValueError, match="did you mean"):
        call("gpro", c)
    with pytest.raises(ValueError, match="needs sequence advantages"):
        call("gtpo", c, advantages=c.advantages[:, None].expand_as(c.mask))


def test_fused_mask_must_not_select_ignored_targets():
    hidden, weight = torch.randn(2, 3, 4), torch.randn(5, 4)
    targets = torch.tensor([[1, 2, -100], [3, 4, 0]])
    with pytest.raises(ValueError, match="ignore_index"):
        lmloss.fused_policy_loss(
            "grpo",
            hidden=hidden,
            weight=weight,
            targets=targets,
            advantages=torch.ones(2),
            mask=torch.ones(2, 3),
        )


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_all_masked_completions_give_zero_loss_and_grad(name):
    c = make_case(seed=21)
    c.mask = torch.zeros_like(c.mask)
    garbage = torch.full_like(c.old_logps, float("-inf"))  # never read where masked
    out = call(name, c, old_logps=garbage, ref_logps=garbage, beta=0.1, entropy_coef=0.1)
    (grad,) = torch.autograd.grad(out.loss, c.logps)
    assert out.loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    assert all(bool(torch.isfinite(v)) for v in out.metrics.values())


@pytest.mark.parametrize("name", ["grpo", "gtpo", "dapo"])
def test_all_masked_fused(name):
    hidden = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.full((3, 4), -100)
    extra = {"group_size": 3} if name == "gtpo" else {}
    out = lmloss.fused_policy_loss(
        name, hidden=hidden, weight=weight, targets=targets, advantages=torch.ones(3), **extra
    )
    grads = torch.autograd.grad(out.loss, (hidden, weight))
    assert out.loss.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_one_masked_row_does_not_leak():
    c = make_case(seed=22)
    c.mask[2] = 0
    poisoned = c.old_logps.clone()
    poisoned[2] = float("nan")
    clean = call("dapo", c, old_logps=c.old_logps)
    dirty = call("dapo", c, old_logps=poisoned)
    torch.testing.assert_close(clean.loss, dirty.loss)
