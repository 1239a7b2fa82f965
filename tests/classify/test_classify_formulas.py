"""Each classification objective against a plain formula written here; identities; gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

import lmloss
from lmloss import registry
from lmloss.objectives.classify.regression import hl_gauss_value

N, C = 5, 4
F64 = torch.float64


def _logits(seed=0, shape=(N, C), scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


LABELS = torch.tensor([0, 3, 1, 1, 2])
BINARY = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
MULTI_HOT = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]])


def loss(name, logits, labels, **kw):
    return lmloss.classification_loss(name, logits=logits, labels=labels, **kw).per_example


def test_spherical_z_matches_formula_and_is_shift_scale_invariant():
    z, a, b = _logits(), 0.7, 1.5
    want = []
    for row, y in zip(z, LABELS):
        mu = row.mean()
        sd = ((row - mu) ** 2).mean().sqrt()
        want.append(math.log1p(math.exp(a * (b - (row[y] - mu) / sd))) / a)
    got = loss("spherical_z", z, LABELS, a=a, b=b)
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64))
    torch.testing.assert_close(loss("spherical_z", 3 * z + 5, LABELS, a=a, b=b), got)


def _ldr_plain(z, y, margin, lam):
    out = []
    for row, t in zip(z, y):
        d = [margin * (k != t) + row[k] - row[t] for k in range(len(row))]
        out.append(lam * math.log(sum(math.exp(v / lam) for v in d) / len(row)))
    return torch.tensor(out, dtype=F64)


def test_ldr_kl_matches_formula():
    z = _logits(1)
    torch.testing.assert_close(
        loss("ldr_kl", z, LABELS, margin=0.8, lam=0.6), _ldr_plain(z, LABELS, 0.8, 0.6)
    )


def test_ldr_kl_zero_margin_is_temperature_scaled_ce():
    z, lam = _logits(2), 0.4
    ce = torch.nn.functional.cross_entropy(z / lam, LABELS, reduction="none")
    torch.testing.assert_close(
        loss("ldr_kl", z, LABELS, margin=0.0, lam=lam), lam * ce - lam * math.log(C)
    )


def test_aldr_kl_matches_one_step_of_the_lambda_update():
    z, margin, lam0, alpha = _logits(3), 0.5, 1.2, 3.0
    want = []
    for row, t in zip(z, LABELS):
        d = torch.tensor([margin * (k != t) for k in range(C)], dtype=F64) + row - row[t]
        p = torch.softmax(d / lam0, 0)
        kl = float((p * torch.log(C * p)).sum())
        lam = lam0 * (1 - kl / (alpha * math.log(C)))
        value = lam * math.log(float(torch.exp(d / lam).mean()))
        want.append(value - alpha * math.log(C) / (2 * lam0) * (lam - lam0) ** 2)
    got = loss("aldr_kl", z, LABELS, margin=margin, lam=lam0, alpha=alpha, iterations=1)
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64))
    zero = loss("aldr_kl", z, LABELS, margin=margin, lam=lam0, alpha=alpha, iterations=0)
    torch.testing.assert_close(zero, loss("ldr_kl", z, LABELS, margin=margin, lam=lam0))


def test_comp_sum_logits_identities():
    z = _logits(4)
    ce = torch.nn.functional.cross_entropy(z, LABELS, reduction="none")
    p = torch.softmax(z, -1).gather(1, LABELS[:, None]).squeeze(1)
    torch.testing.assert_close(loss("comp_sum_logits", z, LABELS, tau=1.0), ce)
    torch.testing.assert_close(
        loss("comp_sum_logits", z, LABELS, tau=1.0 + 1e-7), ce, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(loss("comp_sum_logits", z, LABELS, tau=2.0), 1 - p)
    torch.testing.assert_close(loss("comp_sum_logits", z, LABELS, tau=0.0), 1 / p - 1)


def test_self_adjusting_dice_matches_formula():
    z, alpha, gamma = _logits(5), 0.7, 0.5
    p = torch.softmax(z, -1).gather(1, LABELS[:, None]).squeeze(1)
    f = (1 - p) ** alpha * p
    want = 1 - (2 * f + gamma) / (f + 1 + gamma)
    torch.testing.assert_close(
        loss("self_adjusting_dice", z, LABELS, alpha=alpha, gamma=gamma), want
    )


@pytest.mark.parametrize("metric", ["f1", "accuracy", "balanced_accuracy"])
def test_anyloss_matches_soft_confusion_matrix(metric):
    s, amp = _logits(6, (8,)), 5.0
    tp = fn = fp = tn = 0.0
    for score, y in zip(s.tolist(), BINARY.tolist()):
        a = 1 / (1 + math.exp(-amp * (1 / (1 + math.exp(-score)) - 0.5)))
        tp, fn = tp + y * a, fn + y * (1 - a)
        fp, tn = fp + (1 - y) * a, tn + (1 - y) * (1 - a)
    value = {
        "f1": 2 * tp / (2 * tp + fp + fn),
        "accuracy": (tp + tn) / 8,
        "balanced_accuracy": 0.5 * (tp / (tp + fn) + tn / (tn + fp)),
    }[metric]
    got = loss("anyloss", s, BINARY, metric=metric, amplifier=amp)
    assert got.shape == ()
    torch.testing.assert_close(got, torch.tensor(1 - value, dtype=F64))


def test_anyloss_with_confident_scores_is_one_minus_the_hard_metric():
    s = torch.tensor([9.0, -9.0, 9.0, -9.0, -9.0, 9.0], dtype=F64)
    y = torch.tensor([1, 0, 0, 0, 1, 1])  # TP=2, FP=1, FN=1, TN=2
    got = loss("anyloss", s, y, metric="f1", amplifier=73.0)
    torch.testing.assert_close(got, torch.tensor(1 - 4 / 6, dtype=F64), atol=1e-6, rtol=0)


def test_auc_matches_pairwise_bce():
    s, tau = _logits(7, (8,)), 0.5
    pairs = [
        math.log1p(math.exp(-(s[i] - s[j]) / tau))
        for i in range(8)
        for j in range(8)
        if BINARY[i] == 1 and BINARY[j] == 0
    ]
    torch.testing.assert_close(
        loss("auc", s, BINARY, temperature=tau), torch.tensor(sum(pairs) / len(pairs), dtype=F64)
    )
    grouped = loss("auc", s.reshape(2, 4), BINARY.reshape(2, 4))
    for row in range(2):
        torch.testing.assert_close(
            grouped[row], loss("auc", s.reshape(2, 4)[row], BINARY.reshape(2, 4)[row])
        )
    # A ranking without negatives has nothing to order.
    assert loss("auc", s[:3], torch.ones(3, dtype=torch.long)) == 0


def _infonce_plain(z, positives, tau):
    out = []
    for row, pos in zip(z, positives):
        logp = torch.log_softmax(row / tau, 0)
        idx = pos.nonzero().flatten().tolist()
        out.append(-sum(float(logp[i]) for i in idx) / len(idx) if idx else 0.0)
    return torch.tensor(out, dtype=F64)


def _decoupled_plain(z, positives, tau):
    out = []
    for row, pos in zip(z, positives):
        neg = [math.exp(float(v) / tau) for v, p in zip(row, pos) if not p]
        terms = [
            -math.log(math.exp(float(v) / tau) / (math.exp(float(v) / tau) + sum(neg)))
            for v, p in zip(row, pos)
            if p
        ]
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return torch.tensor(out, dtype=F64)


def test_infonce_and_decoupled_softmax_match_formulas():
    z, tau = _logits(8), 0.7
    ce = torch.nn.functional.cross_entropy(z / tau, LABELS, reduction="none")
    torch.testing.assert_close(loss("infonce", z, LABELS, temperature=tau), ce)
    torch.testing.assert_close(
        loss("infonce", z, MULTI_HOT, temperature=tau), _infonce_plain(z, MULTI_HOT, tau)
    )
    torch.testing.assert_close(
        loss("decoupled_softmax", z, MULTI_HOT, temperature=tau),
        _decoupled_plain(z, MULTI_HOT, tau),
    )


def test_decoupled_softmax_with_one_positive_is_infonce():
    z = _logits(9)
    torch.testing.assert_close(loss("decoupled_softmax", z, LABELS), loss("infonce", z, LABELS))
    all_positive = torch.ones(N, C, dtype=torch.long)
    assert (loss("decoupled_softmax", z, all_positive) == 0).all()


def _multi_similarity_plain(sim, labels, valid, alpha, beta, lam, eps):
    out = []
    for i in range(sim.shape[0]):
        pos = [float(sim[i, j]) for j in range(sim.shape[1]) if labels[i, j] and valid[i, j]]
        neg = [float(sim[i, j]) for j in range(sim.shape[1]) if not labels[i, j] and valid[i, j]]
        if not pos or not neg:
            out.append(0.0)
            continue
        mined_neg = [s for s in neg if s + eps > min(pos)]
        mined_pos = [s for s in pos if s - eps < max(neg)]
        if not mined_neg or not mined_pos:
            out.append(0.0)
            continue
        out.append(
            math.log1p(sum(math.exp(-alpha * (s - lam)) for s in mined_pos)) / alpha
            + math.log1p(sum(math.exp(beta * (s - lam)) for s in mined_neg)) / beta
        )
    return torch.tensor(out, dtype=F64)


def test_multi_similarity_matches_mining_and_loss():
    g = torch.Generator().manual_seed(10)
    x = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=F64), dim=-1)
    classes = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    sim, labels = x @ x.T, classes[:, None] == classes[None, :]
    valid = ~torch.eye(8, dtype=torch.bool)
    kw = {"alpha": 2.0, "beta": 10.0, "lam": 0.3, "epsilon": 0.1}
    got = loss("multi_similarity", sim, labels, mask=valid, **kw)
    torch.testing.assert_close(
        got,
        _multi_similarity_plain(
            sim, labels, valid, **{k: kw[k] for k in ("alpha", "beta", "lam")}, eps=0.1
        ),
    )
    assert got[-1] == 0  # class 3 has no positive pair


def test_hl_gauss_matches_truncated_normal_histogram():
    z, v_min, v_max, sigma = _logits(11, (3, 6)), -1.0, 2.0, 0.4
    y = torch.tensor([-0.3, 1.9, 0.5], dtype=F64)
    edges = torch.linspace(v_min, v_max, 7, dtype=F64)
    want = []
    for row, t in zip(z, y):
        normal = torch.distributions.Normal(t, sigma)
        cdf = normal.cdf(edges)
        p = (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0])
        want.append(-(p * torch.log_softmax(row, 0)).sum())
    got = loss("hl_gauss", z, y, v_min=v_min, v_max=v_max, sigma=sigma)
    torch.testing.assert_close(got, torch.stack(want))
    # The prediction read back from a sharp histogram is its bin centre.
    sharp = torch.full((1, 6), -50.0, dtype=F64)
    sharp[0, 2] = 50.0
    torch.testing.assert_close(hl_gauss_value(sharp, v_min, v_max), torch.tensor([0.25], dtype=F64))


def test_ensloss_degenerate_range_is_logistic_loss_and_draws_are_calibrated():
    s = _logits(12, (8,))
    logistic = torch.nn.functional.softplus(-torch.where(BINARY.bool(), s, -s))
    torch.testing.assert_close(
        loss("ensloss", s, BINARY, shift=(0.0, 0.0), scale=(1.0, 1.0)), logistic
    )
    margins = torch.linspace(-4, 4, 81, dtype=F64, requires_grad=True)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        phi = loss("ensloss", margins, torch.ones(81, dtype=torch.long), generator=g)
        (dphi,) = torch.autograd.grad(phi.sum(), margins)
        assert (dphi[1:] >= dphi[:-1] - 1e-12).all()  # convex
        assert dphi[40] < 0  # φ'(0) < 0: classification-calibrated
    a = loss("ensloss", s, BINARY, generator=torch.Generator().manual_seed(3))
    b = loss("ensloss", s, BINARY, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_every_classification_objective_is_covered():
    covered = {c[0] for c in GRADCHECK} | {"bradley_terry"}  # in test_bradley_terry.py
    assert covered == set(lmloss.list_objectives("classify"))


GRADCHECK = [
    ("spherical_z", LABELS, {"a": 0.7, "b": 0.5}),
    ("ldr_kl", LABELS, {"margin": 0.5, "lam": 0.8}),
    ("aldr_kl", LABELS, {"iterations": 30}),  # converged: envelope theorem
    ("comp_sum_logits", LABELS, {"tau": 0.5}),
    ("self_adjusting_dice", LABELS, {"alpha": 1.0}),
    ("infonce", MULTI_HOT, {"temperature": 0.5}),
    ("decoupled_softmax", MULTI_HOT, {"temperature": 0.5}),
    ("multi_similarity", MULTI_HOT, {"beta": 5.0}),
    ("hl_gauss", torch.tensor([0.1, 0.9, 0.5, 0.3, 0.0], dtype=F64), {}),
    ("anyloss", BINARY, {"metric": "balanced_accuracy", "amplifier": 4.0}),
    ("auc", BINARY.reshape(2, 4), {}),
    ("ensloss", BINARY, {}),
]


@pytest.mark.parametrize(("name", "labels", "hyper"), GRADCHECK)
def test_gradcheck(name, labels, hyper):
    shape = labels.shape if name in ("anyloss", "auc", "ensloss") else (N, C)
    z = _logits(13, shape).requires_grad_()
    entry = registry.get(name)

    def f(z):
        extra = {"generator": torch.Generator().manual_seed(0)} if name == "ensloss" else {}
        return entry(z, labels, **hyper, **extra).sum()

    assert torch.autograd.gradcheck(f, (z,))


def test_front_door_reductions():
    z = _logits(14)
    per = loss("ldr_kl", z, LABELS)
    torch.testing.assert_close(
        lmloss.classification_loss("ldr_kl", logits=z, labels=LABELS).loss, per.mean()
    )
    torch.testing.assert_close(
        lmloss.classification_loss("ldr_kl", logits=z, labels=LABELS, reduction="sum").loss,
        per.sum(),
    )
