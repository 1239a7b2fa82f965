"""Bad input to the distillation front doors fails early, naming the argument."""

from __future__ import annotations

import pytest
import torch

import lmloss

N, H, V = 4, 3, 6


@pytest.fixture
def heads():
    g = torch.Generator().manual_seed(0)
    return {
        "student_hidden": torch.randn(N, H, generator=g),
        "student_weight": torch.randn(V, H, generator=g),
        "teacher_hidden": torch.randn(N, 2, generator=g),
        "teacher_weight": torch.randn(V, 2, generator=g),
    }


def fused(name="jsd", **kwargs):
    return lmloss.fused_divergence_loss(name, **kwargs)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (
            lambda k: k.update(teacher_weight=torch.randn(V + 1, 2)),
            ValueError,
            "vocabularies differ",
        ),
        (
            lambda k: k.update(teacher_hidden=torch.randn(N + 1, 2)),
            ValueError,
            "teacher_hidden must have",
        ),
        (
            lambda k: k.update(teacher_weight=torch.randn(V, 5)),
            ValueError,
            "teacher_weight must be",
        ),
        (
            lambda k: k.update(teacher_weight=torch.randn(V, 2).double()),
            TypeError,
            "teacher_weight dtype",
        ),
        (
            lambda k: k.update(student_weight=torch.randn(V, H + 1)),
            ValueError,
            "student_weight must be",
        ),
        (lambda k: k.update(teacher_logits=torch.randn(N, V)), ValueError, "not both"),
        (lambda k: k.pop("teacher_weight"), ValueError, "given together"),
        (lambda k: k.update(temperature=0.0), ValueError, "temperature must be > 0"),
        (lambda k: k.update(temperature=-1.0), ValueError, "temperature must be > 0"),
        (lambda k: k.update(beta=1.5), ValueError, r"beta must be in \[0.0, 1.0\]"),
        (lambda k: k.update(beta=-0.1), ValueError, r"beta must be in \[0.0, 1.0\]"),
        (lambda k: k.update(betta=0.1), TypeError, "unknown argument"),
        (
            lambda k: k.update(mask=torch.tensor([0, 2, 1, 1])),
            ValueError,
            "mask must hold only 0 and 1",
        ),
        (lambda k: k.update(mask=torch.ones(N + 1)), ValueError, "mask must have shape"),
        (lambda k: k.update(hard_weight=0.5), ValueError, "needs labels="),
        (
            lambda k: k.update(hard_weight=1.5, labels=torch.zeros(N, dtype=torch.long)),
            ValueError,
            "hard_weight must be in",
        ),
        (
            lambda k: k.update(hard_weight=0.5, labels=torch.full((N,), V)),
            ValueError,
            r"labels must lie in \[0, 6\)",
        ),
    ],
)
def test_bad_fused_arguments(heads, change, error, match):
    change(heads)
    with pytest.raises(error, match=match):
        fused(**heads)


def test_no_teacher_and_unknown_names(heads):
    del heads["teacher_hidden"], heads["teacher_weight"]
    with pytest.raises(ValueError, match="a teacher is needed"):
        fused(**heads)
    with pytest.raises(ValueError, match="did you mean 'jsd'"):
        lmloss.divergence_loss("jds", torch.randn(N, V), torch.randn(N, V))
    with pytest.raises(ValueError, match="unknown divergence 'bdkd'"):
        lmloss.token_divergence(
            "bdkd",
            heads["student_hidden"],
            heads["student_weight"],
            teacher_logits=torch.randn(N, V),
        )


@pytest.mark.parametrize(
    "name,hyper,match",
    [
        ("skew_kl", {"alpha": 1.2}, r"alpha must be in \[0.0, 1.0\]"),
        ("skew_reverse_kl", {"alpha": -0.5}, r"alpha must be in \[0.0, 1.0\]"),
        ("alpha_beta", {"alpha": 0.0}, "alpha must be > 0"),
        ("alpha_beta", {"beta": -1.0}, "beta must be > 0"),
        ("jsd", {"beta": 2.0}, r"beta must be in"),
        ("bdkd", {"gap_scale": 0.0}, "gap_scale must be > 0"),
        ("sinkhorn_kd", {"epsilon": 0.0}, "epsilon must be > 0"),
        ("sinkhorn_kd", {"iterations": 0}, "iterations must be an integer"),
        ("sinkhorn_kd", {"cost": "kl"}, "unknown cost 'kl'"),
        ("pld", {"top_k": V + 1}, r"top_k must be an integer in \[1, V = 6\]"),
    ],
)
def test_bad_hyper_parameters(name, hyper, match):
    labels = torch.zeros(N, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        lmloss.divergence_loss(name, torch.randn(N, V), torch.randn(N, V), labels=labels, **hyper)


def test_token_divergence_checks_the_divergence_hyper_parameters(heads):
    with pytest.raises(ValueError, match=r"beta must be in"):
        lmloss.token_divergence("jsd", **heads, beta=1.01)
    with pytest.raises(TypeError, match="its hyper-parameters are"):
        lmloss.token_divergence("forward_kl", **heads, beta=0.5)


def test_plain_path_vocabulary_and_shape_mismatch():
    with pytest.raises(ValueError, match="vocabularies differ: student has 6 entries, teacher 7"):
        lmloss.divergence_loss("jsd", torch.randn(N, V), torch.randn(N, V + 1))
    with pytest.raises(ValueError, match="teacher_logits must have shape"):
        lmloss.divergence_loss("jsd", torch.randn(N, V), torch.randn(N + 1, V))
    with pytest.raises(TypeError, match="student_logits must be a floating-point"):
        lmloss.divergence_loss("jsd", torch.ones(N, V, dtype=torch.long), torch.randn(N, V))


@pytest.mark.parametrize(
    "ids,logprobs,match",
    [
        (torch.tensor([[0, V]] * N), None, r"teacher_topk_ids must lie in \[0, 6\)"),
        (torch.tensor([[0, -1]] * N), None, r"teacher_topk_ids must lie in \[0, 6\)"),
        (torch.tensor([[1, 1]] * N), None, "must not repeat an id"),
        (torch.tensor([[0, 1]] * N), torch.tensor([[0.5, -1.0]] * N), "finite log-probabilities"),
        (torch.tensor([[0, 1]] * N), torch.tensor([[-0.1, -0.2]] * N), "must not sum"),
        (torch.tensor([[0, 1]] * N).float(), None, "teacher_topk_ids must be an integer"),
        (torch.tensor([[0, 1]] * (N - 1)), None, "teacher_topk_ids must have shape"),
        (torch.tensor([[0, 1, 2]] * N), None, "teacher_topk_logprobs must have shape"),
    ],
)
def test_bad_sparse_teacher(ids, logprobs, match):
    logprobs = torch.tensor([[-1.0, -2.0]] * N) if logprobs is None else logprobs
    with pytest.raises((ValueError, TypeError), match=match):
        lmloss.divergence_loss(
            "jsd", torch.randn(N, V), teacher_topk_ids=ids, teacher_topk_logprobs=logprobs
        )


def test_sparse_teacher_combinations(heads):
    ids, logprobs = torch.tensor([[0, 1]] * N), torch.tensor([[-1.0, -2.0]] * N)
    with pytest.raises(ValueError, match="not both"):
        fused(**heads, teacher_topk_ids=ids, teacher_topk_logprobs=logprobs)
    del heads["teacher_hidden"], heads["teacher_weight"]
    with pytest.raises(ValueError, match="must be given together"):
        fused(**heads, teacher_topk_ids=ids)
    with pytest.raises(ValueError, match="unknown sparse_tail 'tail'"):
        fused(**heads, teacher_topk_ids=ids, teacher_topk_logprobs=logprobs, sparse_tail="tail")
    with pytest.raises(ValueError, match="pld ranks the gold label first"):
        fused(
            "pld", **heads, teacher_topk_ids=ids, teacher_topk_logprobs=logprobs, labels=ids[:, 0]
        )


def test_sinkhorn_is_plain_path_only(heads):
    with pytest.raises(ValueError, match="plain path only"):
        fused("sinkhorn_kd", **heads)
