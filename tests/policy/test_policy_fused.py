"""Fused path (statistics from hidden states) == plain path (materialized logits)."""

from __future__ import annotations

import pytest
import torch
from policy_testkit import GROUP, POLICY_NAMES

import lmloss

B, T, H, V = 6, 5, 8, 37


def tiny_head(seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64}
    hidden = torch.randn(B, T, H, generator=g, **f64).requires_grad_()
    weight = (torch.randn(V, H, generator=g, **f64) * 0.5).requires_grad_()
    ref_hidden = hidden.detach() + 0.1 * torch.randn(B, T, H, generator=g, **f64)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[1, 3:] = -100
    targets[4, 2:] = -100
    targets[0, ::2] = targets[2, ::2]  # shared tokens for GTPO conflicts
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0], **f64)
    adv = lmloss.advantages("grpo", rewards, group_size=GROUP)
    old = torch.randn(B, T, generator=g, **f64) * 0.2
    return hidden, weight, ref_hidden, targets, adv, old


def plain_stats(hidden, weight, targets):
    logits = hidden @ weight.T
    logp_all = torch.log_softmax(logits, -1)
    valid = targets != -100
    logp = logp_all.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    zero = torch.zeros_like(logp)
    return torch.where(valid, logp, zero), torch.where(valid, entropy, zero), valid.double()


def hyper_for(name):
    kw = {"beta": 0.05, "entropy_coef": 0.01}
    if name == "gtpo":
        kw["group_size"] = GROUP
    if name == "clip_cov":
        kw.update(clip_fraction=0.3, cov_low=0.0, generator=torch.Generator().manual_seed(3))
    if name in ("kl_cov",):
        kw["kl_fraction"] = 0.2
    if name == "lp_reg":
        kw["neg_fraction"] = 0.5
    return kw


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_fused_equals_plain(name):
    hidden, weight, ref_hidden, targets, adv, old_shift = tiny_head()
    logp, entropy, mask = plain_stats(hidden, weight, targets)
    with torch.no_grad():
        ref_logp, _, _ = plain_stats(ref_hidden, weight, targets)
        old = logp + old_shift
        proxy = logp + 0.3
    extra = {"proxy_logps": proxy} if name == "lp_reg" else {}
    plain = lmloss.policy_loss(
        name,
        logps=logp,
        old_logps=old,
        ref_logps=ref_logp,
        entropy=entropy,
        mask=mask,
        advantages=adv,
        token_ids=targets if name == "gtpo" else None,
        **extra,
        **hyper_for(name),
    )
    plain_grads = torch.autograd.grad(plain.loss, (hidden, weight))
    fused = lmloss.fused_policy_loss(
        name,
        hidden=hidden,
        weight=weight,
        targets=targets,
        advantages=adv,
        old_logps=old,
        ref_hidden=ref_hidden,
        want_entropy=True,
        **extra,
        **hyper_for(name),
    )
    fused_grads = torch.autograd.grad(fused.loss, (hidden, weight))
    torch.testing.assert_close(fused.loss, plain.loss)
    torch.testing.assert_close(fused.per_example, plain.per_example)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert set(fused.metrics) == set(plain.metrics)
    for key in plain.metrics:
        torch.testing.assert_close(fused.metrics[key], plain.metrics[key])


def test_fused_computes_entropy_only_when_needed(monkeypatch):
    """On either schedule: the recompute one (token_stats) or the one pass over sequences."""
    import lmloss.policy as front
    from lmloss.stats import example_blocks

    seen = []

    def spy_on(module, name):
        original = getattr(module, name)

        def spy(*args, **kwargs):
            seen.append(tuple(kwargs["want"]))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    spy_on(front, "token_stats")
    spy_on(example_blocks, "example_one_pass")
    hidden, weight, _, targets, adv, _ = tiny_head()
    lmloss.fused_policy_loss("grpo", hidden=hidden, weight=weight, targets=targets, advantages=adv)
    lmloss.fused_policy_loss(
        "gtpo", hidden=hidden, weight=weight, targets=targets, advantages=adv, group_size=GROUP
    )
    lmloss.fused_policy_loss(
        "dapo", hidden=hidden, weight=weight, targets=targets, advantages=adv, entropy_coef=0.1
    )
    assert seen == [("logp",), ("logp", "entropy"), ("logp", "entropy")]


def test_fused_ref_logps_given_or_computed_agree():
    hidden, weight, ref_hidden, targets, adv, _ = tiny_head()
    with torch.no_grad():
        ref_logp, _, _ = plain_stats(ref_hidden, weight, targets)
    common = dict(hidden=hidden, weight=weight, targets=targets, advantages=adv, beta=0.1)
    a = lmloss.fused_policy_loss("grpo", ref_hidden=ref_hidden, **common)
    b = lmloss.fused_policy_loss("grpo", ref_logps=ref_logp, **common)
    torch.testing.assert_close(a.loss, b.loss)
    with pytest.raises(ValueError, match="not both"):
        lmloss.fused_policy_loss("grpo", ref_hidden=ref_hidden, ref_logps=ref_logp, **common)
