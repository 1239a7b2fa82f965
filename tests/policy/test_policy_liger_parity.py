"""Fused parity with Liger-Kernel 0.8 ``LigerFusedLinearGRPOLoss`` (CPU, uncompiled, float64)."""

from __future__ import annotations

import liger_kernel.chunked_loss as liger
import pytest
import torch

import lmloss

B, T, H, V = 4, 5, 8, 37

# Liger loss_type -> (Liger options, our name, our hyper-parameters)
CASES = {
    "grpo": ({}, "grpo", {}),
    "dapo": ({"epsilon_high": 0.28}, "dapo", {}),
    "bnpo": ({}, "bnpo", {"eps_high": 0.2, "dual_clip": None, "aggregation": "token_mean"}),
    "dr_grpo": ({"max_completion_length": 16}, "dr_grpo", {"max_tokens": 16}),
    "cispo": ({"epsilon_high": 5.0}, "cispo", {}),
    "sapo": ({"sapo_temperature_neg": 1.25}, "sapo", {"temperature_neg": 1.25}),
}


@pytest.mark.parametrize("loss_type", sorted(CASES))
def test_fused_matches_liger(loss_type):
    options, name, hyper = CASES[loss_type]
    g = torch.Generator().manual_seed(7)
    f64 = {"dtype": torch.float64}
    hidden = torch.randn(B, T, H, generator=g, **f64).requires_grad_()
    weight = (0.5 * torch.randn(V, H, generator=g, **f64)).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    adv = torch.randn(B, generator=g, **f64)
    with torch.no_grad():
        logp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[..., None])[..., 0]
    old = logp + 0.2 * torch.randn(B, T, generator=g, **f64)
    ref = logp + 0.2 * torch.randn(B, T, generator=g, **f64)

    module = liger.LigerFusedLinearGRPOLoss(
        beta=0.04, compiled=False, loss_type=loss_type, **options
    )
    theirs = module(
        hidden, weight, targets, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old
    )[0]
    their_grads = torch.autograd.grad(theirs, (hidden, weight))
    ours = lmloss.fused_policy_loss(
        name,
        hidden=hidden,
        weight=weight,
        targets=targets,
        mask=mask,
        advantages=adv,
        old_logps=old,
        ref_logps=ref,
        beta=0.04,
        **hyper,
    )
    our_grads = torch.autograd.grad(ours.loss, (hidden, weight))
    # Liger accumulates its loss in float32 whatever the input dtype: float32 tolerances.
    close = {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(ours.loss, theirs.to(ours.loss.dtype), **close)
    for mine, other in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(mine, other.to(mine.dtype), **close)
