"""Each likelihood objective against a plain formula written here, its identities, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.trainer_pt_utils import LabelSmoother

import lmloss
from lmloss import registry

V = 11


def _logits(shape=(3, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, V, generator=g, dtype=torch.float64) * 2.0


def _targets(shape=(3, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, shape, generator=g)


def _stats(z, y):
    """Statistics written directly from the full distribution (independent of the engine)."""
    log_probs = torch.log_softmax(z, -1)
    return {
        "logp": log_probs.gather(-1, y[..., None]).squeeze(-1),
        "lse": torch.logsumexp(z, -1),
        "mean_logit": z.mean(-1),
    }


def _plain(name, z, y, **hyper):
    """Per-token loss of ``name`` from probabilities, the way the papers write it."""
    s = _stats(z, y)
    p = s["logp"].exp()
    ce = -s["logp"]
    formulas = {
        "ce": lambda: ce,
        "label_smoothing": lambda: (
            -(
                ((1 - hyper["eps"]) * torch.nn.functional.one_hot(y, V).double() + hyper["eps"] / V)
                * torch.log_softmax(z, -1)
            ).sum(-1)
        ),
        "z_loss": lambda: ce + hyper["z_weight"] * torch.log(torch.exp(z).sum(-1)) ** 2,
        "dco": lambda: -torch.log(1 - (1 - p) ** hyper["n"]),
        "comp_sum": lambda: ((1 / p) ** (1 - hyper["tau"]) - 1) / (1 - hyper["tau"]),
        "focal": lambda: -((1 - p) ** hyper["gamma"]) * torch.log(p),
    }
    return formulas[name]()


CASES = [
    ("ce", {}),
    ("label_smoothing", {"eps": 0.3}),
    ("z_loss", {"z_weight": 0.05}),
    ("dco", {"n": 4.0}),
    ("dco", {"n": 2.5}),
    ("comp_sum", {"tau": 0.5}),
    ("comp_sum", {"tau": 1.5}),
    ("comp_sum", {"tau": 2.0}),
    ("focal", {"gamma": 2.0}),
    ("focal", {"gamma": 0.5}),
]


@pytest.mark.parametrize(("name", "hyper"), CASES)
def test_per_token_loss_matches_plain_formula(name, hyper):
    z, y = _logits(), _targets()
    out = lmloss.likelihood_loss(name, **_stats(z, y), reduction="none", **hyper)
    torch.testing.assert_close(out.per_example, _plain(name, z, y, **hyper), rtol=1e-10, atol=1e-10)


def test_every_likelihood_objective_is_covered():
    covered = {name for name, _ in CASES} | {"emo"}
    assert covered == set(lmloss.list_objectives("likelihood"))


def test_emo_matches_plain_formula():
    z, y = _logits(), _targets()
    table = torch.nn.functional.normalize(torch.randn(V, 5, dtype=torch.float64), dim=-1)
    p = torch.softmax(z, -1)
    expectation = p @ table
    out = lmloss.likelihood_loss(
        "emo", **_stats(z, y), expectation=expectation, target_embedding=table[y], reduction="none"
    )
    ce = -torch.log_softmax(z, -1).gather(-1, y[..., None]).squeeze(-1)
    emo = 1 - (table[y] * (p @ table)).sum(-1)
    expected = 0.5 * (ce + (ce / (emo + 1e-10)).detach() * emo)
    torch.testing.assert_close(out.per_example, expected)
    # The value is the cross-entropy; only the gradient differs.
    torch.testing.assert_close(out.per_example, ce)


@pytest.mark.parametrize(
    ("name", "hyper"),
    [
        ("comp_sum", {"tau": 1.0}),
        ("comp_sum", {"tau": 1.0 + 1e-7}),
        ("dco", {"n": 1.0}),
        ("focal", {"gamma": 0.0}),
        ("z_loss", {"z_weight": 0.0}),
        ("label_smoothing", {"eps": 0.0}),
    ],
)
def test_degenerate_settings_are_cross_entropy(name, hyper):
    z, y = _logits(), _targets()
    ce = lmloss.likelihood_loss("ce", **_stats(z, y), reduction="none").per_example
    out = lmloss.likelihood_loss(name, **_stats(z, y), reduction="none", **hyper).per_example
    torch.testing.assert_close(out, ce, rtol=1e-6, atol=1e-6)


def test_comp_sum_tau_two_is_one_minus_p_and_gce_between():
    z, y = _logits(), _targets()
    s = _stats(z, y)
    p = s["logp"].exp()
    tau2 = lmloss.likelihood_loss("comp_sum", **s, reduction="none", tau=2.0).per_example
    torch.testing.assert_close(tau2, 1 - p)
    q = 0.3
    gce = lmloss.likelihood_loss("comp_sum", **s, reduction="none", tau=1 + q).per_example
    torch.testing.assert_close(gce, (1 - p**q) / q)


def test_label_smoothing_matches_torch_and_hf_label_smoother():
    z, y = _logits(), _targets()
    y[0, 1] = -100
    mask = y != -100
    eps = 0.2
    s = lmloss.token_stats_from_logits(z, y, want=("logp", "lse", "mean_logit"))
    ours = lmloss.likelihood_loss("label_smoothing", **s.asdict(), mask=mask, eps=eps).loss
    torch_ce = torch.nn.functional.cross_entropy(
        z.reshape(-1, V), y.reshape(-1), label_smoothing=eps
    )
    torch.testing.assert_close(ours, torch_ce)
    hf = LabelSmoother(epsilon=eps)({"logits": z}, y)  # TRL's label smoothing path
    torch.testing.assert_close(ours, hf)


def test_dco_is_stable_at_extreme_probabilities():
    logp = torch.tensor(
        [0.0, -1e-12, -1e-5, -30.0, -200.0], dtype=torch.float64, requires_grad=True
    )
    out = lmloss.likelihood_loss("dco", logp=logp, reduction="none", n=8.0).per_example
    assert torch.isfinite(out).all()
    assert out[0] == 0
    # p → 0: −log(1 − (1−p)^N) ≈ −log(N p)
    torch.testing.assert_close(out[-1], torch.tensor(200.0 - math.log(8.0), dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.sum(), logp)
    assert torch.isfinite(grad).all()


def test_focal_and_comp_sum_are_finite_at_p_one():
    logp = torch.tensor([0.0, -1e-9], dtype=torch.float64, requires_grad=True)
    for name, hyper in (("focal", {"gamma": 0.5}), ("comp_sum", {"tau": 0.0})):
        out = lmloss.likelihood_loss(name, logp=logp, reduction="none", **hyper).loss
        (grad,) = torch.autograd.grad(out, logp)
        assert torch.isfinite(out) and torch.isfinite(grad).all(), name


@pytest.mark.parametrize(("name", "hyper"), [c for c in CASES if c[0] != "ce"] + [("ce", {})])
def test_gradcheck_through_the_statistics(name, hyper):
    z = _logits((2, 3)).requires_grad_()
    y = _targets((2, 3))
    entry = registry.get(name)

    def loss(z):
        return entry(**{k: _stats(z, y)[k] for k in entry.spec.stats}, **hyper).sum()

    assert torch.autograd.gradcheck(loss, (z,))


def test_emo_gradient_is_half_ce_plus_rescaled_distance():
    # EMO stops the gradient through its ratio, so gradcheck the equivalent loss with the
    # ratio frozen at the evaluation point, then compare the two gradients there.
    z0 = _logits((2, 3))
    y = _targets((2, 3))
    table = torch.nn.functional.normalize(torch.randn(V, 4, dtype=torch.float64), dim=-1)

    def parts(z):
        ce = -_stats(z, y)["logp"]
        return ce, 1 - (table[y] * (torch.softmax(z, -1) @ table)).sum(-1)

    ce0, d0 = parts(z0)
    ratio = ce0 / (d0 + 1e-10)

    def frozen(z):
        ce, d = parts(z)
        return (0.5 * (ce + ratio * d)).sum()

    z = z0.clone().requires_grad_()
    assert torch.autograd.gradcheck(frozen, (z,))
    s = _stats(z, y)
    emo = registry.get("emo")(s["logp"], torch.softmax(z, -1) @ table, table[y]).sum()
    (got,) = torch.autograd.grad(emo, z)
    (want,) = torch.autograd.grad(frozen(z), z)
    torch.testing.assert_close(got, want)
