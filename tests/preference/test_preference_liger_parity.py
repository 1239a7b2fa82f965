"""Fused parity with Liger-Kernel's LigerFusedLinearDPOLoss for every loss type it supports."""

from __future__ import annotations

import liger_kernel.chunked_loss as liger
import pytest
import torch

import lmloss

B, T, H, V = 3, 6, 8, 37
# Liger loss_type -> (lmloss name, hyper-parameters, Liger label_smoothing)
LOSS_TYPES = {
    "sigmoid": ("dpo", {}, 0.0),
    "hinge": ("hinge", {}, 0.0),
    "exo_pair": ("exo", {"eps": 1e-3}, 1e-3),
    "nca_pair": ("nca", {}, 0.0),
    "robust": ("rdpo", {"eps": 0.1}, 0.1),
    "bco_pair": ("bco", {}, 0.0),
    "sppo_hard": ("sppo_hard", {}, 0.0),
    "apo_zero": ("apo_zero", {}, 0.0),
    "apo_down": ("apo_down", {}, 0.0),
    "discopop": ("discopop", {"tau": 0.05}, 0.0),
}


def test_every_liger_loss_type_is_covered():
    assert set(LOSS_TYPES) == liger.LigerFusedLinearDPOLoss._SUPPORTED_LOSS_TYPES


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_liger_fused_dpo(loss_type):
    name, hyper, smoothing = LOSS_TYPES[loss_type]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2 * B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) / 3
    ref_hidden = torch.randn(2 * B, T, H, generator=g, dtype=torch.float64)
    ref_weight = torch.randn(V, H, generator=g, dtype=torch.float64) / 3
    targets = torch.randint(0, V, (2 * B, T), generator=g)
    targets[:, :2] = -100  # prompt
    targets[1, 4:] = -100  # padding
    results = []
    for fused in ("liger", "lmloss"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if fused == "liger":
            module = liger.LigerFusedLinearDPOLoss(
                beta=0.3, compiled=False, loss_type=loss_type, label_smoothing=smoothing
            )
            loss = module(w, h, targets, ref_input=ref_hidden, ref_weight=ref_weight)[0]
        else:
            loss = lmloss.fused_preference_loss(
                name, hidden=h, weight=w, targets=targets, ref_hidden=ref_hidden,
                ref_weight=ref_weight, beta=0.3, **hyper,
            ).loss  # fmt: skip
        loss.backward()
        results.append((loss, h.grad, w.grad))
    (want, want_h, want_w), (got, got_h, got_w) = results
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_h, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
