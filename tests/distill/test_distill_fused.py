"""The fused two-model engine equals the plain path: values and gradients, both teacher forms."""

from __future__ import annotations

import pytest
import torch

import lmloss
import lmloss.stats.chunking as chunking
from lmloss.stats.divergence_api import pair_terms_from_logits, token_pair_terms
from lmloss.stats.model_input import ModelInput, PairSettings

B, T, H, HT, V = 2, 4, 5, 3, 13
OBJECTIVES = [n for n in lmloss.list_objectives("distill") if n != "sinkhorn_kd"]


def heads(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, dtype=dtype, generator=g).requires_grad_()  # noqa: E731
    student = (make(B, T, H), make(V, H), make(V))
    teacher = (make(B, T, HT), make(V, HT), make(V))
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    return student, teacher, labels, mask


def raw_logits(head):
    hidden, weight, bias = head
    return hidden @ weight.T + bias


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def assert_same_grads(got, want, tol=1e-10):
    for a, b in zip(got, want):
        if b is None:
            assert a is None or bool((a == 0).all())
        else:
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("teacher_form", ["head", "logits"])
def test_fused_equals_plain(name, teacher_form):
    student, teacher, labels, mask = heads()
    hyper = {"hard_weight": 0.25} if "hard_weight" in lmloss.describe(name)["hyper"] else {}
    teacher_logits = raw_logits(teacher)
    teacher_kwargs = (
        {"teacher_hidden": teacher[0], "teacher_weight": teacher[1], "teacher_bias": teacher[2]}
        if teacher_form == "head"
        else {"teacher_logits": teacher_logits}
    )
    common = dict(mask=mask, labels=labels, temperature=0.8, teacher_requires_grad=True, **hyper)
    fused = lmloss.fused_divergence_loss(
        name, student[0], student[1], student_bias=student[2], **teacher_kwargs, **common
    )
    plain = lmloss.divergence_loss(name, raw_logits(student), teacher_logits, **common)
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(fused.per_example, plain.per_example, atol=1e-10, rtol=1e-10)
    inputs = [*student, *(teacher if teacher_form == "head" else (teacher_logits,))]
    assert_same_grads(grads(fused.loss, inputs), grads(plain.loss, inputs))


@pytest.mark.parametrize(
    "budget,min_rows,vocab_tile", [(None, 16, 8192), (3000, 1, 8192), (3000, 16, 5)]
)
@pytest.mark.parametrize("teacher_grad", [False, True])
def test_one_pass_blocks_and_its_fallback(monkeypatch, budget, min_rows, vocab_tile, teacher_grad):
    # Whole-vocabulary blocks of all rows, of two rows each, and (budget too small for whole
    # rows) the recomputing fallback; a CE term enters as an extra per-row input.
    monkeypatch.setattr(chunking, "MIN_TOKEN_TILE", min_rows)
    monkeypatch.setattr(chunking, "VOCAB_TILE", vocab_tile)
    student, teacher, labels, mask = heads(7)
    kwargs = dict(mask=mask, labels=labels, hard_weight=0.4, teacher_requires_grad=teacher_grad)
    fused = lmloss.fused_divergence_loss(
        "bdkd",
        student[0],
        student[1],
        student_bias=student[2],
        teacher_hidden=teacher[0],
        teacher_weight=teacher[1],
        memory_budget=budget,
        **kwargs,
    )
    plain = lmloss.divergence_loss("bdkd", raw_logits(student), teacher[0] @ teacher[1].T, **kwargs)
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(fused.metrics["reverse_weight"], plain.metrics["reverse_weight"])
    inputs = [*student, teacher[0], teacher[1]]
    assert_same_grads(grads(2.0 * fused.loss, inputs), grads(2.0 * plain.loss, inputs))


def test_teacher_gradients_off_by_default():
    student, teacher, _, mask = heads(1)
    out = lmloss.fused_divergence_loss(
        "jsd",
        student[0],
        student[1],
        teacher_hidden=teacher[0],
        teacher_weight=teacher[1],
        mask=mask,
    )
    d_teacher = grads(out.loss, [teacher[0], teacher[1]])
    assert d_teacher == (None, None)
    plain = lmloss.divergence_loss("jsd", raw_logits(student), raw_logits(teacher), mask=mask)
    assert grads(plain.loss, [teacher[0]]) == (None,)


@pytest.mark.parametrize(
    "vocab_tile,budget,min_rows", [(13, None, 16), (4, 1500, 16), (13, 1500, 1), (5, 300, 1)]
)
def test_tiling_does_not_change_results(monkeypatch, vocab_tile, budget, min_rows):
    # A small budget leaves whole-vocabulary rows for vocabulary tiles (the two-pass online
    # path when a tile is narrower than V) and, with 1-row minimum blocks, splits the tokens.
    monkeypatch.setattr(chunking, "VOCAB_TILE", vocab_tile)
    monkeypatch.setattr(chunking, "MIN_TOKEN_TILE", min_rows)
    student, teacher, _, mask = heads(2)
    names = ("jsd", "tvd", "chi2", "student_entropy", "teacher_entropy")
    fused = token_pair_terms(
        ModelInput(student[0], lmloss.Head(student[1], student[2])),
        ModelInput(teacher[0], lmloss.Head(teacher[1], teacher[2])),
        names,
        mask=mask,
        hyper={"beta": 0.3},
        settings=PairSettings(temperature=1.2, memory_budget=budget, teacher_requires_grad=True),
    )
    kwargs = dict(mask=mask, temperature=1.2, hyper={"beta": 0.3})
    plain = pair_terms_from_logits(raw_logits(student), raw_logits(teacher), names, **kwargs)
    weights = torch.rand(len(names), B, T, dtype=torch.float64)
    total = lambda values: sum(w * values[n] for w, n in zip(weights, names)).sum()  # noqa: E731
    for n in names:
        torch.testing.assert_close(fused[n], plain[n], atol=1e-9, rtol=1e-10)
    inputs = [*student, *teacher]
    assert_same_grads(grads(total(fused), inputs), grads(total(plain), inputs), tol=1e-9)


def test_token_divergence_for_a_policy_and_its_reference():
    # TDPO's per-token KL(π_ref ‖ π_θ): the reference is the "teacher", no gradient to it.
    student, _, _, mask = heads(3)
    policy_hidden, policy_weight, _ = student
    ref_hidden = torch.randn(B, T, H, dtype=torch.float64)
    ref_weight = policy_weight.detach() + 0.1 * torch.randn(V, H, dtype=torch.float64)
    kl = lmloss.token_divergence(
        "forward_kl",
        policy_hidden,
        policy_weight,
        teacher_hidden=ref_hidden,
        teacher_weight=ref_weight,
        mask=mask,
    )
    assert kl.shape == (B, T) and bool((kl[~mask] == 0).all())
    log_pi = torch.log_softmax(policy_hidden @ policy_weight.T, -1)
    log_ref = torch.log_softmax(ref_hidden @ ref_weight.T, -1)
    expected = (log_ref.exp() * (log_ref - log_pi)).sum(-1) * mask
    torch.testing.assert_close(kl, expected)
    torch.testing.assert_close(
        grads(kl.sum(), [policy_hidden, policy_weight]),
        grads(expected.sum(), [policy_hidden, policy_weight]),
    )


def test_flat_rows_float32_and_low_precision_teacher():
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(6, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g, requires_grad=True)
    t_hidden = torch.randn(6, HT, generator=g).bfloat16()
    t_weight = torch.randn(V, HT, generator=g).bfloat16()
    out = lmloss.token_divergence(
        "reverse_kl", hidden, weight, teacher_hidden=t_hidden, teacher_weight=t_weight
    )
    assert out.dtype == torch.float32 and out.shape == (6,)
    expected = lmloss.divergence_loss(
        "reverse_kl", hidden @ weight.T, (t_hidden @ t_weight.T).float()
    ).per_example
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_all_masked_gives_zero_loss_and_zero_gradients():
    student, teacher, labels, _ = heads(5)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for name in ("jsd", "bdkd", "pld"):
        out = lmloss.fused_divergence_loss(
            name,
            student[0],
            student[1],
            teacher_hidden=teacher[0],
            teacher_weight=teacher[1],
            mask=mask,
            labels=labels,
        )
        assert out.loss.item() == 0
        d_hidden, d_weight = grads(out.loss, [student[0], student[1]])
        for g in (d_hidden, d_weight):
            assert g is None or bool((g == 0).all())


def test_fused_gradcheck_with_teacher_gradients():
    student, teacher, _, _ = heads(6)
    small = [t.detach()[:1, :2].clone().requires_grad_() for t in (student[0], teacher[0])]
    torch.autograd.gradcheck(
        lambda hs, ws, bs, ht, wt: lmloss.token_divergence(
            "skew_reverse_kl",
            hs,
            ws,
            student_bias=bs,
            teacher_hidden=ht,
            teacher_weight=wt,
            temperature=1.7,
            teacher_requires_grad=True,
            alpha=0.2,
        ),
        (small[0], student[1], student[2], small[1], teacher[1]),
    )
