"""A teacher's top-k through the engine (``head_top_k_logprobs``), as ``lmloss precompute``
stores it for distillation: equal to the top-k of log-softmax of the written-out logits,
the head's soft cap and logit scale included, whatever the vocabulary tiling."""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss.stats.divergence_gather import head_top_k_logprobs
from lmloss.train.modes.distill import _topk

G = torch.Generator().manual_seed(0)


def _logprobs(hidden, head: lmloss.Head):
    raw = (hidden @ head.weight.T + head.bias) * head.logit_scale
    if head.softcap is not None:
        raw = head.softcap * torch.tanh(raw / head.softcap)
    return torch.log_softmax(raw, dim=-1)


def _check(ids, logprobs, hidden, head, k):
    """The k largest log-probs, and each at its id (ties may be ordered either way)."""
    full = _logprobs(hidden, head)
    torch.testing.assert_close(logprobs, full.topk(k, dim=-1).values)
    torch.testing.assert_close(logprobs, full.gather(-1, ids))


@pytest.mark.parametrize("budget", [None, 4096])  # whole vocabulary, or many small tiles
@pytest.mark.parametrize(("softcap", "scale"), [(None, 1.0), (2.0, 1.0), (1.5, 3.0)])
def test_top_k_honours_the_heads_transform(softcap, scale, budget):
    hidden = torch.randn(37, 8, generator=G, dtype=torch.float64) * 3
    head = lmloss.Head(
        torch.randn(300, 8, generator=G, dtype=torch.float64),
        torch.randn(300, generator=G, dtype=torch.float64),
        softcap=softcap,
        logit_scale=scale,
    )
    ids, logprobs = head_top_k_logprobs(
        hidden, head.weight, head.bias, head.transform(), 5, memory_budget=budget
    )
    _check(ids, logprobs, hidden, head, 5)


def test_precompute_top_k_of_a_soft_capped_teacher():
    """The trainer's precompute (``_topk``) of a soft-capped teacher (float32, no bias): the
    capped distribution, not the raw one (which the block-wise code before it stored)."""
    hidden = torch.randn(20, 6, generator=G) * 4
    head = lmloss.Head(torch.randn(50, 6, generator=G), torch.zeros(50), softcap=1.0)
    ids, logprobs = _topk(hidden, lmloss.Head(head.weight, None, softcap=1.0), 4)
    _check(ids, logprobs, hidden, head, 4)
    raw = torch.log_softmax(hidden @ head.weight.T, dim=-1).topk(4, dim=-1).values
    assert not torch.allclose(logprobs, raw, atol=1e-2)  # the cap changes the answer


def test_top_k_larger_than_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, V = 5\]"):
        head_top_k_logprobs(
            torch.randn(2, 3),
            torch.randn(5, 3),
            None,
            lmloss.Head(torch.randn(5, 3)).transform(),
            6,
        )
