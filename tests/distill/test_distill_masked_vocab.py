"""Masked vocabularies: a ``-inf`` logit is probability 0 in every divergence (issue 26).

A teacher that masks part of its vocabulary (constrained decoding, a padded head) used to
make ``0 · (-inf)`` NaNs in the forward KL, JSD, skew KL and BD-KD, and masks in both models
NaNs in the reverse divergences and χ². References, independent of the clamp that fixes it:

* masked in both models: the same divergence over the unmasked entries only (the masked
  entries have probability 0 on both sides, so it is the same pair of distributions);
* masked in the teacher only: the limit of masking with a large finite negative logit
  (-60 in float64 leaves probabilities of e^-60, far below the tolerance), for every
  divergence that stays finite; the reverse KL, infinite in exact arithmetic, must come
  out finite with finite gradients.
"""

from __future__ import annotations

import pytest
import torch

import lmloss
import lmloss.stats.chunking as chunking
import lmloss.stats.divergence as divergence
from lmloss.stats.divergence_terms import DIVERGENCES, Pair, log_floor

B, T, H, V, KEPT = 2, 3, 5, 11, 7  # entries KEPT.. are masked
PLAIN = lmloss.list_objectives("distill")
FUSED = [n for n in PLAIN if n != "sinkhorn_kd"]  # a batch-level cost: plain path only
# infinite in exact arithmetic when the teacher masks an entry the student keeps
INFINITE_WHEN_TEACHER_MASKS = {"reverse_kl", "bdkd"}


def _logits(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, dtype=torch.float64, generator=g)


def _masked(z: torch.Tensor, value: float = -torch.inf) -> torch.Tensor:
    return torch.cat([z[..., :KEPT], torch.full_like(z[..., KEPT:], value)], -1)


def _hyper(name: str) -> dict:
    known = lmloss.describe(name)["hyper"]
    # pld ranks the teacher's top_k entries: fewer than the unmasked ones
    wanted = {"hard_weight": 0.25, "top_k": KEPT - 3}
    return {k: v for k, v in wanted.items() if k in known}


def _loss_and_grad(name, student, teacher, labels):
    student = student.detach().requires_grad_()
    out = lmloss.divergence_loss(name, student, teacher, labels=labels, **_hyper(name))
    (grad,) = torch.autograd.grad(out.loss, student)
    return out.loss.detach(), grad


def _labels() -> torch.Tensor:
    return torch.randint(0, KEPT, (B, T), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", PLAIN)
def test_masked_in_both_models_equals_the_unmasked_vocabulary(name):
    student, teacher = _logits(0), _logits(1)
    loss, grad = _loss_and_grad(name, _masked(student), _masked(teacher), _labels())
    want, want_grad = _loss_and_grad(name, student[..., :KEPT], teacher[..., :KEPT], _labels())
    torch.testing.assert_close(loss, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad[..., :KEPT], want_grad, atol=1e-10, rtol=1e-10)
    assert bool((grad[..., KEPT:] == 0).all())  # a masked logit gets no gradient


@pytest.mark.parametrize("name", PLAIN)
def test_masked_in_the_teacher_is_the_limit_of_a_large_negative_logit(name):
    student, teacher = _logits(0), _logits(1)
    loss, grad = _loss_and_grad(name, student, _masked(teacher), _labels())
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all()), (loss, grad)
    if name in INFINITE_WHEN_TEACHER_MASKS:
        assert loss > 1e6  # "infinite": as large as masking with -1e9 makes it
        return
    want, want_grad = _loss_and_grad(name, student, _masked(teacher, -60.0), _labels())
    torch.testing.assert_close(loss, want, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(grad, want_grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("tiles", ["whole", "vocab_tiles"])
def test_fused_path_with_a_minus_inf_teacher_bias_equals_plain(monkeypatch, name, tiles):
    tiled = []
    if tiles == "vocab_tiles":  # tiles of 4 entries (the budget cannot hold whole rows)
        monkeypatch.setattr(chunking, "MIN_TOKEN_TILE", 16)
        monkeypatch.setattr(chunking, "VOCAB_TILE", 4)
        online = divergence.online_moments

        def spy(source, t0, t1, vocab_tile, *args):
            tiled.append(vocab_tile)
            return online(source, t0, t1, vocab_tile, *args)

        monkeypatch.setattr(divergence, "online_moments", spy)
    g = torch.Generator().manual_seed(5)
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=g)  # noqa: E731
    hidden, weight, bias = (make(B, T, H).requires_grad_(), make(V, H).requires_grad_(), make(V))
    t_hidden, t_weight = make(B, T, 3), make(V, 3)
    t_bias = _masked(make(V))
    kwargs = dict(labels=_labels(), **_hyper(name))
    budget = {"memory_budget": 3000} if tiles == "vocab_tiles" else {}
    fused = lmloss.fused_divergence_loss(
        name, hidden, weight, student_bias=bias, teacher_hidden=t_hidden,
        teacher_weight=t_weight, teacher_bias=t_bias, **budget, **kwargs,
    )  # fmt: skip
    plain = lmloss.divergence_loss(
        name, hidden @ weight.T + bias, t_hidden @ t_weight.T + t_bias, **kwargs
    )
    if name != "pld":  # pld ranks top-k entries with its own kernel, not the pair terms
        assert tiled == ([4, 4] if tiles == "vocab_tiles" else [])  # the tiles the name says
    got = torch.autograd.grad(fused.loss, (hidden, weight))
    want = torch.autograd.grad(plain.loss, (hidden, weight))
    assert torch.isfinite(fused.loss) and all(bool(torch.isfinite(x).all()) for x in got)
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-9, rtol=1e-9)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-9)


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_pair_term_is_finite_on_masked_entries_in_low_precision(name, dtype):
    """The floor stays finite (and its probability 0) in every float format."""
    from lmloss.stats.divergence_terms import PAIR_TERMS, resolve_hyper

    assert torch.tensor(log_floor(dtype), dtype=dtype).isfinite()
    assert torch.tensor(log_floor(dtype), dtype=dtype).exp() == 0
    a = torch.log_softmax(_masked(_logits(0)), -1).to(dtype)
    b = torch.log_softmax(_masked(_logits(1)), -1).to(dtype)
    pair = Pair(a, b)
    term = PAIR_TERMS[name]
    value = term.value(pair, resolve_hyper(name, {}))
    partials = [p for p in term.partials(pair, resolve_hyper(name, {})) if p is not None]
    assert all(bool(torch.isfinite(x).all()) for x in (value, *partials))
