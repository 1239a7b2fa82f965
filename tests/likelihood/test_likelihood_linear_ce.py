"""``lmloss.linear_cross_entropy`` against PyTorch, Cut Cross-Entropy and TRL's chunked logprobs."""

from __future__ import annotations

import pytest
import torch
from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy
from trl.kernels import ChunkedLogProbFunction

import lmloss


def _inputs(dtype=torch.float32, seed=0, shape=(3, 7), vocab=53, dim=16):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, dim, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g, dtype=dtype) / 3).requires_grad_()
    targets = torch.randint(0, vocab, shape, generator=g)
    targets[0, :2] = -100
    return hidden, weight, targets


def _grads(loss, *inputs):
    return torch.autograd.grad(loss.sum(), inputs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch_cross_entropy(reduction):
    hidden, weight, targets = _inputs(torch.float64)
    ours = lmloss.linear_cross_entropy(hidden, weight, targets, reduction=reduction)
    ref = torch.nn.functional.cross_entropy(
        (hidden @ weight.T).reshape(-1, weight.shape[0]), targets.reshape(-1), reduction=reduction
    )
    torch.testing.assert_close(ours.reshape(-1), ref.reshape(-1))
    for a, b in zip(_grads(ours, hidden, weight), _grads(ref, hidden, weight)):
        torch.testing.assert_close(a, b)


def test_bias_transform_and_num_items():
    hidden, weight, targets = _inputs(torch.float64, seed=1)
    bias = torch.randn(weight.shape[0], dtype=torch.float64, requires_grad=True)
    cap, temp, scale = 2.0, 0.8, 1.5
    ours = lmloss.linear_cross_entropy(
        hidden,
        weight,
        targets,
        bias,
        softcap=cap,
        temperature=temp,
        logit_scale=scale,
        num_items=40,
    )
    logits = cap * torch.tanh((hidden @ weight.T + bias) * scale / cap) / temp
    ref = (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, weight.shape[0]), targets.reshape(-1), reduction="sum"
        )
        / 40
    )
    torch.testing.assert_close(ours, ref)
    for a, b in zip(_grads(ours, hidden, weight, bias), _grads(ref, hidden, weight, bias)):
        torch.testing.assert_close(a, b)


def test_matches_cut_cross_entropy_torch_compile():
    # One small case: torch.compile costs seconds on CPU.
    hidden, weight, targets = _inputs(torch.float32, seed=2)
    ours = lmloss.linear_cross_entropy(hidden, weight, targets)
    theirs = cce_linear_cross_entropy(hidden, weight, targets, impl="torch_compile")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(ours, hidden, weight), _grads(theirs, hidden, weight)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_matches_trl_chunked_logprob():
    hidden, weight, targets = _inputs(torch.float32, seed=3)
    mask = targets != -100
    ours = lmloss.linear_cross_entropy(hidden, weight, targets, reduction="none", softcap=5.0)
    logp = ChunkedLogProbFunction.apply(
        hidden[mask], weight, None, targets[mask], 1.0, 16, 5.0, 1.0, ()
    )[0]
    torch.testing.assert_close(ours[mask], -logp, rtol=1e-5, atol=1e-5)
    assert (ours[~mask] == 0).all()
    (a,) = torch.autograd.grad(ours.sum(), weight)
    (b,) = torch.autograd.grad(-logp.sum(), weight)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
