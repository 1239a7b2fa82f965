"""The fused path (hidden + head weight) equals the plain path on materialized statistics."""

from __future__ import annotations

import pytest
import torch

import lmloss

V, H = 37, 6  # V is not a multiple of any tile size
B, T = 3, 13
# Small enough that the eager pass walks several token blocks (16 rows each).
BUDGET = 1


def _head(dtype=torch.float64, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=dtype) / 2).requires_grad_()
    b = (torch.randn(V, generator=g, dtype=dtype) / 3).requires_grad_() if bias else None
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :4] = -100
    targets[2, 7] = -100
    return hidden, weight, b, targets


def _plain(name, hidden, weight, bias, targets, transform=None, **kwargs):
    logits = hidden @ weight.T + (0 if bias is None else bias)
    stats = lmloss.token_stats_from_logits(
        logits, targets, want=("logp", "lse", "mean_logit"), **(transform or {})
    )
    return lmloss.likelihood_loss(name, **stats.asdict(), mask=targets != -100, **kwargs)


def _assert_same(fused, plain, inputs, tol=1e-10):
    torch.testing.assert_close(fused.loss, plain.loss, rtol=tol, atol=tol)
    torch.testing.assert_close(fused.per_example, plain.per_example.detach(), rtol=tol, atol=tol)
    got = torch.autograd.grad(fused.loss, inputs)
    want = torch.autograd.grad(plain.loss, inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


CASES = [
    ("ce", {}),
    ("label_smoothing", {"eps": 0.3}),
    ("z_loss", {"z_weight": 0.05}),
    ("dco", {"n": 4.0}),
    ("comp_sum", {"tau": 1.5}),
    ("focal", {"gamma": 2.0}),
]


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "sum", "none"])
@pytest.mark.parametrize(("name", "hyper"), CASES)
def test_fused_equals_plain(name, hyper, reduction):
    hidden, weight, _, targets = _head()
    kw = {"reduction": reduction, **hyper}
    fused = lmloss.fused_likelihood_loss(name, hidden, weight, targets, memory_budget=BUDGET, **kw)
    plain = _plain(name, hidden, weight, None, targets, **kw)
    if reduction == "none":
        assert fused.per_example.requires_grad
    _assert_same(fused, plain, (hidden, weight))


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes"])
def test_fused_equals_plain_with_weights_num_items_and_reweighting(strategy):
    hidden, weight, _, targets = _head(seed=3)
    token_weights = torch.rand(
        B, T, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    kw = {
        "weights": token_weights,
        "num_items": 57,
        "reweight": strategy,
        "reweight_temperature": 0.7,
        "gamma": 1.5,
    }
    fused = lmloss.fused_likelihood_loss(
        "focal", hidden, weight, targets, memory_budget=BUDGET, **kw
    )
    _assert_same(fused, _plain("focal", hidden, weight, None, targets, **kw), (hidden, weight))


def test_fused_with_bias_and_logit_transform():
    hidden, weight, bias, targets = _head(seed=7, bias=True)
    transform = {"temperature": 0.7, "softcap": 3.0, "logit_scale": 1.3}
    fused = lmloss.fused_likelihood_loss(
        "z_loss", hidden, weight, targets, bias, z_weight=0.1, **transform
    )
    plain = _plain("z_loss", hidden, weight, bias, targets, transform, z_weight=0.1)
    _assert_same(fused, plain, (hidden, weight, bias))


def test_fused_float32_input_accumulates_in_float32():
    hidden, weight, _, targets = _head(dtype=torch.float32, seed=2)
    fused = lmloss.fused_likelihood_loss("dco", hidden, weight, targets, n=3.0)
    assert fused.loss.dtype == torch.float32
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    plain = _plain("dco", h64, w64, None, targets, n=3.0)
    torch.testing.assert_close(fused.loss.double(), plain.loss, rtol=1e-5, atol=1e-6)
    (gh,) = torch.autograd.grad(fused.loss, hidden)
    (ph,) = torch.autograd.grad(plain.loss, h64)
    torch.testing.assert_close(gh.double(), ph, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "none"])
def test_all_targets_ignored_gives_zero_loss_and_zero_gradients(reduction):
    hidden, weight, _, targets = _head()
    targets = torch.full_like(targets, -100)
    out = lmloss.fused_likelihood_loss("comp_sum", hidden, weight, targets, reduction=reduction)
    assert out.loss.item() == 0.0
    gh, gw = torch.autograd.grad(out.loss, (hidden, weight), allow_unused=True)
    for g in (gh, gw):
        assert g is None or (g == 0).all()


def test_flat_tokens_and_hyper_defaults():
    hidden, weight, _, targets = _head()
    flat_h, flat_y = hidden.reshape(-1, H), targets.reshape(-1)
    fused = lmloss.fused_likelihood_loss("label_smoothing", flat_h, weight, flat_y)
    plain = _plain("label_smoothing", flat_h, weight, None, flat_y)
    _assert_same(fused, plain, (hidden, weight))
