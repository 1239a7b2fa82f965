"""EMO end to end: the engine's ``expectation`` statistic and the fused EMO loss."""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss.objectives.likelihood.emo import emo_cost_table

V, H, D = 37, 6, 5
B, T = 3, 13


def _inputs(seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) / 2).requires_grad_()
    b = (torch.randn(V, generator=g, dtype=torch.float64) / 3).requires_grad_() if bias else None
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :4] = -100
    table = emo_cost_table(torch.randn(V, D, generator=g, dtype=torch.float64))
    return hidden, weight, b, targets, table


def test_expectation_statistic_values_and_gradients():
    hidden, weight, bias, targets, table = _inputs(bias=True)
    fused = lmloss.token_stats(
        hidden, weight, targets, bias, want="expectation", expect=table, memory_budget=1
    ).expectation
    logits = hidden @ weight.T + bias
    plain = torch.softmax(logits, -1) @ table * (targets != -100)[..., None]
    assert fused.shape == (B, T, D)
    torch.testing.assert_close(fused, plain)
    upstream = torch.randn(B, T, D, dtype=torch.float64)
    got = torch.autograd.grad((fused * upstream).sum(), (hidden, weight, bias))
    want = torch.autograd.grad((plain * upstream).sum(), (hidden, weight, bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_expectation_gradcheck_through_the_engine():
    hidden, weight, _, targets, table = _inputs(seed=1)
    h = hidden.detach()[:1, :5].requires_grad_()
    y = targets[1:2, :5]

    def f(h, w):
        s = lmloss.token_stats(h, w, y, want=("logp", "expectation"), expect=table)
        return s.expectation.sum() + s.logp.sum()

    assert torch.autograd.gradcheck(f, (h, weight.detach().requires_grad_()))


def test_expectation_of_fully_ignored_batch_is_zero_with_vector_shape():
    hidden, weight, _, targets, table = _inputs()
    out = lmloss.token_stats(
        hidden, weight, torch.full_like(targets, -100), want="expectation", expect=table
    )
    assert out.expectation.shape == (B, T, D) and (out.expectation == 0).all()


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "sum", "none"])
def test_fused_emo_equals_plain(reduction):
    hidden, weight, bias, targets, table = _inputs(seed=2, bias=True)
    fused = lmloss.fused_likelihood_loss(
        "emo",
        hidden,
        weight,
        targets,
        bias,
        embedding_table=table,
        reduction=reduction,
        memory_budget=1,
    )
    stats = lmloss.token_stats_from_logits(
        hidden @ weight.T + bias, targets, want=("logp", "expectation"), expect=table
    )
    plain = lmloss.likelihood_loss(
        "emo",
        **stats.asdict(),
        target_embedding=table[targets.clamp(min=0)],
        mask=targets != -100,
        reduction=reduction,
    )
    torch.testing.assert_close(fused.loss, plain.loss)
    torch.testing.assert_close(fused.per_example, plain.per_example.detach())
    got = torch.autograd.grad(fused.loss, (hidden, weight, bias))
    want = torch.autograd.grad(plain.loss, (hidden, weight, bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_expectation_input_errors():
    hidden, weight, _, targets, table = _inputs()
    with pytest.raises(ValueError, match="expect"):
        lmloss.token_stats(hidden, weight, targets, want="expectation")
    with pytest.raises(ValueError, match="expect"):
        lmloss.token_stats(hidden, weight, targets, want="expectation", expect=table[:-1])
    with pytest.raises(ValueError, match="embedding_table"):
        lmloss.fused_likelihood_loss("emo", hidden, weight, targets, embedding_table=table.T)
