"""The one-pass path (gradients during the forward) equals the recomputing autograd path."""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss.stats.chunking import plan_chunks
from lmloss.stats.single_model import eager_token_loss
from lmloss.stats.transform import LogitTransform


def focal_like(stats, rows):
    # A per-token loss whose upstream gradient depends on the statistics themselves.
    p = stats["logp"].exp()
    return (
        -((1 - p) ** 2) * stats["logp"] + 0.1 * stats["entropy"] + 1e-2 * stats["lse"] ** 2
    ).sum()


@pytest.mark.parametrize("budget", [200, 2**30])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_eager_equals_autograd(budget, softcap):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(37, 5, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(37, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 37, (23,), generator=g)
    names = ("logp", "entropy", "lse")
    transform = LogitTransform(softcap=softcap, temperature=0.9)
    plan = plan_chunks(23, 37, 8, budget, whole_vocab=True)
    total, values = eager_token_loss(
        hidden, weight, bias, targets, transform, names, focal_like, plan
    )
    eager_grads = torch.autograd.grad(2.5 * total, (hidden, weight, bias))

    stats = lmloss.token_stats(
        hidden, weight, targets, bias, want=names, softcap=softcap, temperature=0.9
    )
    reference = focal_like(stats.asdict(), slice(None))
    ref_grads = torch.autograd.grad(2.5 * reference, (hidden, weight, bias))
    torch.testing.assert_close(total, reference, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(values["entropy"], stats.entropy, atol=1e-10, rtol=1e-10)
    for a, b in zip(eager_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_eager_requires_whole_vocabulary_tiles():
    hidden, weight = torch.randn(4, 3), torch.randn(9000, 3)
    plan = plan_chunks(4, 9000, 4)  # vocabulary tiles of 8192 < 9000
    with pytest.raises(ValueError, match="spans the vocabulary"):
        eager_token_loss(
            hidden,
            weight,
            None,
            torch.zeros(4, dtype=torch.long),
            LogitTransform(),
            ("logp",),
            focal_like,
            plan,
        )
