"""Every divergence against a plain formula written here, and the identities it must satisfy."""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss.stats.divergence_terms import DIVERGENCES, PAIR_TERMS, Pair, resolve_hyper

V = 9


def logits(seed: int, shape=(2, 3, V), scale=2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, dtype=torch.float64, generator=g)


def probs(z: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(z / temperature, dim=-1)


def kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


# Plain formulas, written on probabilities (p: student, q: teacher), independent of the library.
def formula(name: str, p: torch.Tensor, q: torch.Tensor, **h) -> torch.Tensor:
    if name == "forward_kl":
        return kl(q, p)
    if name == "reverse_kl":
        return kl(p, q)
    if name == "jsd":
        b = h.get("beta", 0.5)
        if b == 0:
            return kl(q, p)
        if b == 1:
            return kl(p, q)
        m = (1 - b) * p + b * q
        return b * kl(q, m) + (1 - b) * kl(p, m)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "skew_kl":
        a = h.get("alpha", 0.1)
        return kl(q, a * q + (1 - a) * p)
    if name == "skew_reverse_kl":
        a = h.get("alpha", 0.1)
        return kl(p, a * p + (1 - a) * q)
    if name == "alpha_beta":
        a, b = h.get("alpha", 0.5), h.get("beta", 0.5)
        inner = q**a * p**b - a / (a + b) * q ** (a + b) - b / (a + b) * p ** (a + b)
        return -inner.sum(-1) / (a * b)
    if name == "hellinger":
        return 0.5 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1)
    if name == "chi2":
        return ((q - p) ** 2 / p).sum(-1)
    raise AssertionError(name)


CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.2}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("tvd", {}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_kl", {"alpha": 0.7}),
    ("skew_reverse_kl", {"alpha": 0.3}),
    ("alpha_beta", {"alpha": 0.5, "beta": 0.5}),
    ("alpha_beta", {"alpha": 0.2, "beta": 0.7}),
    ("alpha_beta", {"alpha": 1.5, "beta": 0.3}),
    ("hellinger", {}),
    ("chi2", {}),
]


def test_cases_cover_every_divergence():
    assert (
        {name for name, _ in CASES}
        == set(DIVERGENCES)
        == {n for n in lmloss.list_objectives("distill") if n not in ("bdkd", "pld", "sinkhorn_kd")}
    )


@pytest.mark.parametrize("name,hyper", CASES)
def test_against_plain_formula(name, hyper):
    zs, zt = logits(0), logits(1)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    temperature = 1.3
    expected = formula(name, probs(zs, temperature), probs(zt, temperature), **hyper)
    out = lmloss.divergence_loss(name, zs, zt, mask=mask, temperature=temperature, **hyper)
    torch.testing.assert_close(out.loss, expected[mask].mean())
    per_sequence = (expected * mask).sum(-1) / mask.sum(-1)
    torch.testing.assert_close(out.per_example, per_sequence)
    per_token = lmloss.token_divergence(
        name,
        zs,
        torch.eye(V, dtype=torch.float64),
        teacher_logits=zt,
        mask=mask,
        temperature=temperature,
        **hyper,
    )
    torch.testing.assert_close(per_token, torch.where(mask, expected, 0.0))


@pytest.mark.parametrize("name,hyper", CASES)
def test_partials_match_autograd(name, hyper):
    # The engine's hand-written ∂f/∂log p_s and ∂f/∂log p_t against autograd of the value.
    a = torch.log_softmax(logits(2, (4, V)), -1).requires_grad_()
    b = torch.log_softmax(logits(3, (4, V)), -1).requires_grad_()
    term, h = PAIR_TERMS[name], resolve_hyper(name, hyper)
    grads = torch.autograd.grad(term.value(Pair(a, b), h).sum(), (a, b), allow_unused=True)
    partials = term.partials(Pair(a.detach(), b.detach()), h)
    for got, want in zip(partials, grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name,hyper", CASES)
def test_nonnegative_and_zero_at_identical_inputs(name, hyper):
    zs, zt = logits(4), logits(5)
    values = lmloss.token_divergence(
        name, zs, torch.eye(V, dtype=torch.float64), teacher_logits=zt, **hyper
    )
    assert bool((values >= -1e-12).all())
    same = lmloss.token_divergence(
        name, zs, torch.eye(V, dtype=torch.float64), teacher_logits=zs.clone(), **hyper
    )
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name,hyper", [("jsd", {"beta": 0.5}), ("tvd", {}), ("hellinger", {})])
def test_symmetric(name, hyper):
    zs, zt = logits(6), logits(7)
    forward = lmloss.divergence_loss(name, zs, zt, **hyper).loss
    backward = lmloss.divergence_loss(name, zt, zs, **hyper).loss
    torch.testing.assert_close(forward, backward)


@pytest.mark.parametrize(
    "name,hyper,limit",
    [
        ("skew_kl", {"alpha": 0.0}, "forward_kl"),
        ("skew_reverse_kl", {"alpha": 0.0}, "reverse_kl"),
        ("jsd", {"beta": 0.0}, "forward_kl"),  # TRL's special-cased end points
        ("jsd", {"beta": 1.0}, "reverse_kl"),
        ("alpha_beta", {"alpha": 1.0, "beta": 1e-7}, "forward_kl"),  # ABKD's interpolation ends
        ("alpha_beta", {"alpha": 1e-7, "beta": 1.0}, "reverse_kl"),
    ],
)
def test_limits(name, hyper, limit):
    zs, zt = logits(8), logits(9)
    got = lmloss.divergence_loss(name, zs, zt, **hyper).loss
    want = lmloss.divergence_loss(limit, zs, zt).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_skew_alpha_one_and_jsd_interior_are_bounded():
    zs, zt = logits(10), logits(11)
    assert lmloss.divergence_loss("skew_kl", zs, zt, alpha=1.0).loss == 0
    # JSD_β ≤ -β log β - (1-β) log(1-β) (the entropy of the mixing weights).
    beta = 0.3
    bound = -(beta * torch.tensor(beta).log() + (1 - beta) * torch.tensor(1 - beta).log())
    values = lmloss.token_divergence(
        "jsd", 30 * zs, torch.eye(V, dtype=torch.float64), teacher_logits=-30 * zt, beta=beta
    )
    assert bool((values <= bound.double() + 1e-9).all())


def test_alpha_beta_half_half_is_four_hellinger():
    zs, zt = logits(12), logits(13)
    ab = lmloss.divergence_loss("alpha_beta", zs, zt, alpha=0.5, beta=0.5).loss
    torch.testing.assert_close(ab, 4 * lmloss.divergence_loss("hellinger", zs, zt).loss)


def test_chi2_is_finite_where_the_student_gives_no_mass():
    zs = torch.zeros(1, V, dtype=torch.float64)
    zs[0, 0] = -200.0  # p_s ≈ e^-200 where the teacher is confident
    zt = torch.zeros(1, V, dtype=torch.float64)
    zt[0, 0] = 20.0
    out = lmloss.divergence_loss("chi2", zs.requires_grad_(), zt)
    out.loss.backward()
    assert torch.isfinite(out.loss) and bool(torch.isfinite(zs.grad).all())


@pytest.mark.parametrize("name,hyper", CASES)
def test_gradcheck_float64(name, hyper):
    # Through the plain path (autograd of the per-entry value) and the fused engine (the
    # hand-written partials), w.r.t. student logits / head and the teacher.
    zs = logits(14, (3, 5), scale=1.0).requires_grad_()
    zt = logits(15, (3, 5), scale=1.0).requires_grad_()
    torch.autograd.gradcheck(
        lambda s, t: (
            lmloss.divergence_loss(
                name, s, t, temperature=0.9, teacher_requires_grad=True, **hyper
            ).loss
        ),
        (zs, zt),
    )
    g = torch.Generator().manual_seed(16)
    hidden = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    torch.autograd.gradcheck(
        lambda h, w, t: lmloss.token_divergence(
            name, h, w, teacher_logits=t, temperature=0.9, teacher_requires_grad=True, **hyper
        ),
        (hidden, weight, zt),
    )
