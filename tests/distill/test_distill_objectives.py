"""BD-KD, PLD, Sinkhorn KD, CE mixing and the sparse teacher against plain formulas."""

from __future__ import annotations

import itertools

import pytest
import torch

import lmloss

V = 7


def logits(seed: int, shape=(2, 3, V), scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, dtype=torch.float64, generator=g)


def kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def entropy(p):
    return -(p * p.log()).sum(-1)


def head_of(z):
    """A head whose logits are ``z``: hidden = z, weight = identity (for the fused path)."""
    return z.clone().requires_grad_(), torch.eye(z.shape[-1], dtype=z.dtype).requires_grad_()


# ---------------------------------------------------------------- CE mixing and reductions


def test_hard_weight_mixes_cross_entropy_at_temperature_one():
    zs, zt = logits(0), logits(1)
    labels = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(2))
    p, q = torch.softmax(zs / 2.0, -1), torch.softmax(zt / 2.0, -1)
    ce = -torch.log_softmax(zs, -1).gather(-1, labels[..., None]).squeeze(-1)
    expected = (0.7 * kl(q, p) + 0.3 * ce).mean()
    out = lmloss.divergence_loss(
        "forward_kl", zs, zt, labels=labels, temperature=2.0, hard_weight=0.3
    )
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.metrics["nll"], ce.mean())


def test_num_items_replaces_the_token_count():
    zs, zt = logits(3), logits(4)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    out = lmloss.divergence_loss("tvd", zs, zt, mask=mask, num_items=10)
    tvd = 0.5 * (torch.softmax(zs, -1) - torch.softmax(zt, -1)).abs().sum(-1)
    torch.testing.assert_close(out.loss, (tvd * mask).sum() / 10)


# ---------------------------------------------------------------- BD-KD


@pytest.mark.parametrize("gap_scale", [1.0, 0.05])
def test_bdkd_against_formula(gap_scale):
    zs, zt = logits(5, scale=3.0), logits(6)
    p, q = torch.softmax(zs, -1), torch.softmax(zt, -1)
    w_reverse = torch.sigmoid((entropy(p) - entropy(q)) / gap_scale)
    expected = ((1 - w_reverse) * kl(q, p) + w_reverse * kl(p, q)).mean()
    out = lmloss.divergence_loss("bdkd", zs, zt, gap_scale=gap_scale)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.metrics["reverse_weight"], w_reverse.mean())


def test_bdkd_weights_carry_no_gradient():
    # d loss / d z must equal the gradient of the weighted KLs with the weights held fixed.
    zs, zt = logits(7).requires_grad_(), logits(8)
    out = lmloss.divergence_loss("bdkd", zs, zt)
    (got,) = torch.autograd.grad(out.loss, zs)
    p, q = torch.softmax(zs, -1), torch.softmax(zt, -1)
    w = torch.sigmoid(entropy(p) - entropy(q)).detach()
    (want,) = torch.autograd.grad(((1 - w) * kl(q, p) + w * kl(p, q)).mean(), zs)
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- PLD


def pld_formula(zs, zt, labels, k, temperature):
    """Σ_j α_j (-s_πj + log Σ_{l not ranked before j} e^{s_l}), looped."""
    total = []
    for s_row, t_row, y in zip(zs.reshape(-1, V), zt.reshape(-1, V), labels.reshape(-1)):
        s, t = s_row / temperature, torch.softmax(t_row / temperature, -1)
        ranking = [int(y)] + [int(i) for i in torch.argsort(t, descending=True) if int(i) != int(y)]
        loss = 0.0
        for j, token in enumerate(ranking[:k]):
            remaining = [i for i in range(V) if i not in ranking[:j]]
            loss = loss + t[token] * (torch.logsumexp(s[remaining], 0) - s[token])
        total.append(loss)
    return torch.stack(total).reshape(labels.shape)


@pytest.mark.parametrize("k", [1, 3, V])
def test_pld_against_formula(k):
    zs, zt = logits(9), logits(10)
    labels = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(11))
    expected = pld_formula(zs, zt, labels, k, 0.9)
    out = lmloss.divergence_loss("pld", zs, zt, labels=labels, top_k=k, temperature=0.9)
    torch.testing.assert_close(out.loss, expected.mean())
    fused = lmloss.fused_divergence_loss(
        "pld", *head_of(zs), teacher_logits=zt, labels=labels, top_k=k, temperature=0.9
    )
    torch.testing.assert_close(fused.loss, expected.mean())


def test_pld_top1_is_teacher_weighted_cross_entropy():
    zs, zt = logits(12), logits(13)
    labels = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(14))
    p_gold = torch.softmax(zt, -1).gather(-1, labels[..., None]).squeeze(-1)
    ce = -torch.log_softmax(zs, -1).gather(-1, labels[..., None]).squeeze(-1)
    out = lmloss.divergence_loss("pld", zs, zt, labels=labels, top_k=1)
    torch.testing.assert_close(out.loss, (p_gold * ce).mean())


def test_pld_gradcheck():
    zs = logits(15, (3, V)).requires_grad_()
    zt = logits(16, (3, V))
    labels = torch.tensor([0, 3, 6])
    torch.autograd.gradcheck(
        lambda s: lmloss.divergence_loss("pld", s, zt, labels=labels, top_k=4).loss, (zs,)
    )


# ---------------------------------------------------------------- Sinkhorn KD


def sinkhorn_formula(zs, zt, epsilon, iterations):
    """Probability-domain Sinkhorn with uniform marginals and the L1/2 (TVD) ground cost."""
    p, q = torch.softmax(zs, -1), torch.softmax(zt, -1)
    cost = 0.5 * (p[:, None, :] - q[None, :, :]).abs().sum(-1)
    n = cost.shape[0]
    kernel = torch.exp(-cost / epsilon)
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype)
    v = torch.ones(n, dtype=cost.dtype)
    for _ in range(iterations):
        u = a / (kernel @ v)
        v = a / (kernel.T @ u)
    plan = u[:, None] * kernel * v[None, :]
    return (plan * cost).sum(), plan


@pytest.mark.parametrize("epsilon,iterations", [(0.1, 20), (0.5, 3)])
def test_sinkhorn_against_formula(epsilon, iterations):
    zs, zt = logits(17, (5, V)), logits(18, (5, V))
    expected, plan = sinkhorn_formula(zs, zt, epsilon, iterations)
    out = lmloss.divergence_loss("sinkhorn_kd", zs, zt, epsilon=epsilon, iterations=iterations)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(plan.sum(0), torch.full((5,), 0.2, dtype=plan.dtype))  # converged


def test_sinkhorn_mask_drops_rows_and_gradcheck():
    zs, zt = logits(19, (6, V)), logits(20, (6, V))
    mask = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    expected, _ = sinkhorn_formula(zs[mask], zt[mask], 0.2, 10)
    out = lmloss.divergence_loss("sinkhorn_kd", zs, zt, mask=mask, epsilon=0.2, iterations=10)
    torch.testing.assert_close(out.loss, expected)
    s = zs.clone().requires_grad_()
    out = lmloss.divergence_loss("sinkhorn_kd", s, zt, mask=mask, epsilon=0.2, iterations=10)
    (grad,) = torch.autograd.grad(out.loss, s)
    assert bool(torch.isfinite(grad).all()) and bool((grad[~mask] == 0).all())
    torch.autograd.gradcheck(
        lambda x: lmloss.divergence_loss("sinkhorn_kd", x, zt[:4], epsilon=0.3, iterations=5).loss,
        (logits(21, (4, V)).requires_grad_(),),
    )


def test_sinkhorn_zero_between_identical_batches_is_small():
    z = logits(22, (4, V), scale=4.0)
    same = lmloss.divergence_loss("sinkhorn_kd", z, z.clone(), epsilon=0.01, iterations=50).loss
    other = lmloss.divergence_loss(
        "sinkhorn_kd", z, logits(23, (4, V)), epsilon=0.01, iterations=50
    ).loss
    assert same < 1e-3 < other


# ---------------------------------------------------------------- sparse teacher


@pytest.mark.parametrize("name", ["jsd", "forward_kl", "reverse_kl", "tvd", "bdkd"])
def test_sparse_teacher_with_k_equal_v_is_the_dense_path(name):
    zs, zt = logits(24), logits(25)
    logp = torch.log_softmax(zt, -1)
    order = torch.argsort(torch.rand(2, 3, V, generator=torch.Generator().manual_seed(26)), -1)
    dense = lmloss.divergence_loss(name, zs, zt, temperature=1.0).loss
    for tail, tol in (("renormalize", 1e-12), ("bucket", 1e-5)):
        sparse = lmloss.divergence_loss(
            name,
            zs,
            teacher_topk_ids=order,
            teacher_topk_logprobs=logp.gather(-1, order),
            sparse_tail=tail,
        ).loss
        torch.testing.assert_close(sparse, dense, atol=tol, rtol=tol)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_sparse_teacher_against_formula_and_fused(tail):
    zs, zt = logits(27), logits(28)
    k = 3
    top_logp, top_ids = torch.log_softmax(zt, -1).topk(k, -1)
    student = torch.log_softmax(zs / 1.5, -1).gather(-1, top_ids)
    if tail == "renormalize":
        p, q = torch.softmax(student, -1), torch.softmax(top_logp, -1)
    else:
        p, q = student.exp(), top_logp.exp()
        p = torch.cat([p, 1 - p.sum(-1, keepdim=True)], -1)
        q = torch.cat([q, 1 - q.sum(-1, keepdim=True)], -1)
    m = 0.5 * (p + q)
    expected = (0.5 * kl(q, m) + 0.5 * kl(p, m)).mean()
    kwargs = dict(
        teacher_topk_ids=top_ids, teacher_topk_logprobs=top_logp, sparse_tail=tail, temperature=1.5
    )
    plain = lmloss.divergence_loss("jsd", zs, **kwargs)
    torch.testing.assert_close(plain.loss, expected)
    hidden, weight = head_of(zs)
    fused = lmloss.fused_divergence_loss("jsd", hidden, weight, **kwargs)
    torch.testing.assert_close(fused.loss, expected)
    s = zs.clone().requires_grad_()
    (want,) = torch.autograd.grad(lmloss.divergence_loss("jsd", s, **kwargs).loss, s)
    (got,) = torch.autograd.grad(fused.loss, hidden)
    torch.testing.assert_close(got, want)


def test_sparse_teacher_ignores_padding_at_masked_positions():
    zs = logits(29)
    ids = torch.tensor([[[0, 1], [2, 3], [-1, -1]], [[4, 5], [-1, -1], [6, 0]]])
    logp = torch.tensor(
        [
            [[-0.5, -1.5], [-0.2, -2.0], [-float("inf")] * 2],
            [[-1.0, -1.0], [-float("inf")] * 2, [-0.1, -3.0]],
        ]
    )
    mask = ids[..., 0] >= 0
    s = zs.clone().requires_grad_()
    out = lmloss.divergence_loss(
        "jsd", s, teacher_topk_ids=ids, teacher_topk_logprobs=logp.double(), mask=mask
    )
    (grad,) = torch.autograd.grad(out.loss, s)
    assert torch.isfinite(out.loss) and bool(torch.isfinite(grad).all())
    assert bool((grad[~mask] == 0).all())


# ---------------------------------------------------------------- registry


def test_registry_lists_the_family_with_papers_and_hyper_parameters():
    names = set(lmloss.list_objectives("distill"))
    assert {"forward_kl", "jsd", "bdkd", "pld", "sinkhorn_kd", "alpha_beta"} <= names
    for name in names:
        info = lmloss.describe(name)
        assert "arXiv" in info["paper"] or "f-divergence" in info["paper"]
        assert info["formula"]
    assert lmloss.describe("jsd")["hyper"]["beta"] == 0.5
    assert lmloss.describe("skew_kl")["hyper"]["alpha"] == 0.1
    assert set(itertools.chain(lmloss.describe("alpha_beta")["hyper"])) >= {
        "alpha",
        "beta",
        "hard_weight",
    }
