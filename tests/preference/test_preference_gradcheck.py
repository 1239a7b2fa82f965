"""float64 gradcheck of every preference objective, w.r.t. its policy log-probs."""

from __future__ import annotations

import pytest
import torch
from preference_testkit import ALL, HYPER, case, differentiable

import lmloss

# options that change the math, checked on one objective each
OPTIONS = [
    ("dpo", {"divergence": "forward_kl"}),
    ("ipo", {"divergence": "js"}),
    ("hinge", {"divergence": "alpha", "alpha": 0.4}),
    ("dpo", {"ld_alpha": 0.5}),
    ("simpo", {"ld_alpha": 0.2}),
]


def check(name, hyper, kw):
    leaves = differentiable(kw)
    fixed = {k: v for k, v in kw.items() if k not in leaves}

    def loss(*values):
        return lmloss.preference_loss(name, **fixed, **dict(zip(leaves, values)), **hyper).loss

    inputs = tuple(kw[k].clone().requires_grad_() for k in leaves)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck(name):
    check(name, HYPER.get(name, {}), case(name, batch=3, length=4, seed=31))


@pytest.mark.parametrize("name,hyper", OPTIONS)
def test_gradcheck_options(name, hyper):
    check(name, hyper, case(name, batch=3, length=4, seed=32))


def test_lcpo_gradient_is_the_marginal_likelihood_gradient():
    """EM's M-step gradient (posterior held fixed) is the gradient of the marginal NLL.

    For DPO, P(label right) = σ(βh), so LCPO's gradient must equal that of
    −log((1 − ε) σ(βh) + ε σ(−βh)) — Fisher's identity; a full gradcheck does not apply
    because the E-step posterior is deliberately detached.
    """
    kw = case("dpo", batch=3, length=4, seed=33)
    for side in ("chosen_", "rejected_"):
        kw[f"{side}logps"].requires_grad_()
    eps, beta = 0.2, 0.7
    lmloss.lcpo("dpo", noise=eps, beta=beta, **kw).loss.backward()
    got = [kw[f"{side}logps"].grad.clone() for side in ("chosen_", "rejected_")]
    for side in ("chosen_", "rejected_"):
        kw[f"{side}logps"].grad = None
    m = {s: kw[f"{s}mask"].double() for s in ("chosen_", "rejected_")}
    ratio = {s: ((kw[f"{s}logps"] - kw[f"ref_{s}logps"]) * m[s]).sum(-1) for s in m}
    x = beta * (ratio["chosen_"] - ratio["rejected_"])
    marginal = -torch.log((1 - eps) * torch.sigmoid(x) + eps * torch.sigmoid(-x))
    marginal.mean().backward()
    for side, grad in zip(("chosen_", "rejected_"), got):
        torch.testing.assert_close(grad, kw[f"{side}logps"].grad)
