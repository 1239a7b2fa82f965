"""Two-model paths take each model's full logit transform (soft cap, scale, temperature).

Gemma-style soft-capped and Cohere/Granite-style scaled heads: the fused distillation and
TDPO paths equal the plain paths fed the logits such a model outputs,
``softcap · tanh(logit_scale · (h Wᵀ) / softcap)``, written out here.
"""

from __future__ import annotations

import math

import pytest
import torch

import lmloss
import lmloss.stats.chunking as chunking

B, T, H, V = 2, 5, 6, 23
STUDENT = {"softcap": 4.0, "logit_scale": 0.7}
TEACHER = {"teacher_softcap": 6.0, "teacher_logit_scale": 1.3}


def model_logits(hidden, weight, softcap, logit_scale):
    raw = (hidden @ weight.T) * logit_scale
    return softcap * torch.tanh(raw / softcap)


def heads(seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64, "generator": g}
    student = (torch.randn(B, T, H, **f64).requires_grad_(), torch.randn(V, H, **f64))
    student[1].requires_grad_()
    teacher = (torch.randn(B, T, H + 1, **f64), torch.randn(V, H + 1, **f64))
    mask = torch.rand(B, T, generator=g) > 0.2
    labels = torch.randint(0, V, (B, T), generator=g)
    return student, teacher, mask, labels


def _student_logits(student):
    return model_logits(*student, STUDENT["softcap"], STUDENT["logit_scale"])


def _teacher_logits(teacher):
    return model_logits(*teacher, TEACHER["teacher_softcap"], TEACHER["teacher_logit_scale"])


def _assert_same(fused, plain, inputs):
    torch.testing.assert_close(fused, plain)
    for got, want in zip(torch.autograd.grad(fused, inputs), torch.autograd.grad(plain, inputs)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("teacher_form", ["head", "logits"])
@pytest.mark.parametrize("name", ["jsd", "forward_kl", "reverse_kl", "tvd", "bdkd", "pld"])
def test_fused_divergence_with_transformed_heads_equals_plain(name, teacher_form):
    student, teacher, mask, labels = heads()
    common = {"mask": mask, "labels": labels, "temperature": 1.2}
    if teacher_form == "head":
        given = {"teacher_hidden": teacher[0], "teacher_weight": teacher[1]}
    else:  # raw teacher logits: the teacher's transform applies to them
        given = {"teacher_logits": teacher[0] @ teacher[1].T}
    fused = lmloss.fused_divergence_loss(
        name, *student, **given, **common, **STUDENT, **TEACHER
    ).loss
    plain = lmloss.divergence_loss(
        name, _student_logits(student), _teacher_logits(teacher), **common
    ).loss
    _assert_same(fused, plain, student)


def test_recompute_schedule_with_transformed_heads_equals_plain(monkeypatch):
    # Vocabulary tiles smaller than V: the per-token values come from the recompute schedule.
    monkeypatch.setattr(chunking, "VOCAB_TILE", 7)
    monkeypatch.setattr(chunking, "MIN_TOKEN_TILE", 10**9)
    student, teacher, mask, _ = heads(1)
    fused = lmloss.token_divergence(
        "jsd", *student, teacher_hidden=teacher[0], teacher_weight=teacher[1], mask=mask,
        temperature=0.9, memory_budget=2048, beta=0.3, **STUDENT, **TEACHER,
    )  # fmt: skip
    zs = torch.log_softmax(_student_logits(student) / 0.9, -1)
    zt = torch.log_softmax(_teacher_logits(teacher) / 0.9, -1)
    mix = torch.logaddexp(zs + math.log(0.7), zt + math.log(0.3))  # TRL's mixture, beta = 0.3
    per_token = 0.3 * (zt.exp() * (zt - mix)).sum(-1) + 0.7 * (zs.exp() * (zs - mix)).sum(-1)
    plain = torch.where(mask, per_token, 0.0)
    weights = torch.arange(B * T, dtype=torch.float64).reshape(B, T)  # distinct upstream grads
    _assert_same((fused * weights).sum(), (plain * weights).sum(), student)


def test_sparse_teacher_with_transformed_student_equals_plain():
    student, teacher, mask, _ = heads(2)
    logprobs, ids = torch.log_softmax(_teacher_logits(teacher), -1).topk(5, dim=-1)
    sparse = {"teacher_topk_ids": ids, "teacher_topk_logprobs": logprobs, "mask": mask}
    fused = lmloss.fused_divergence_loss("forward_kl", *student, **sparse, **STUDENT).loss
    plain = lmloss.divergence_loss("forward_kl", _student_logits(student), **sparse).loss
    _assert_same(fused, plain, student)


def test_tdpo_with_soft_capped_heads_equals_plain():
    g = torch.Generator().manual_seed(3)
    f64 = {"dtype": torch.float64, "generator": g}
    hidden = torch.randn(2 * B, T, H, **f64).requires_grad_()
    weight = torch.randn(V, H, **f64).requires_grad_()
    ref_hidden, ref_weight = torch.randn(2 * B, T, H, **f64), torch.randn(V, H, **f64)
    targets = torch.randint(0, V, (2 * B, T), generator=g)
    targets[1, :2] = -100
    head = {"softcap": 3.0, "logit_scale": 0.8, "temperature": 1.1}
    fused = lmloss.fused_preference_loss(
        "tdpo2", hidden=hidden, weight=weight, targets=targets, ref_hidden=ref_hidden,
        ref_weight=ref_weight, **head,
    ).loss  # fmt: skip

    def log_probs(h, w):
        return torch.log_softmax(model_logits(h, w, 3.0, 0.8) / 1.1, -1)

    logp, ref_logp = log_probs(hidden, weight), log_probs(ref_hidden, ref_weight)
    m = targets != -100
    safe = targets.clamp(min=0)[..., None]
    per_token = {
        "logps": logp.gather(-1, safe).squeeze(-1) * m,
        "mask": m,
        "kl": (ref_logp.exp() * (ref_logp - logp)).sum(-1) * m,
    }
    ref = ref_logp.gather(-1, safe).squeeze(-1) * m
    plain_kw = {}
    for i, side in enumerate(("chosen_", "rejected_")):
        plain_kw |= {f"{side}{k}": v.chunk(2)[i] for k, v in per_token.items()}
        plain_kw[f"ref_{side}logps"] = ref.chunk(2)[i]
    plain = lmloss.preference_loss("tdpo2", **plain_kw).loss
    _assert_same(fused, plain, (hidden, weight))
