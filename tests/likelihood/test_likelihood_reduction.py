"""Reductions, token weights, the global normalizer and the sample reweighters."""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss.objectives.likelihood.reweight import sample_weights


def _inputs(seed=0, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 5
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[1] = False  # a sequence without trained tokens
    mask[0, 0] = True
    return logp.requires_grad_(), mask


def test_token_and_sequence_means_and_sum():
    logp, mask = _inputs()
    m = mask.double()
    ce = -logp
    token_mean = (ce * m).sum() / m.sum()
    per_seq = (ce * m).sum(1) / m.sum(1).clamp(min=1)
    sequence_mean = per_seq.sum() / mask.shape[0]
    for reduction, want in (
        ("token_mean", token_mean),
        ("sequence_mean", sequence_mean),
        ("sum", (ce * m).sum()),
    ):
        out = lmloss.likelihood_loss("ce", logp=logp, mask=mask, reduction=reduction)
        torch.testing.assert_close(out.loss, want)
    assert lmloss.likelihood_loss("ce", logp=logp, mask=mask).metrics["num_tokens"] == m.sum()


def test_num_items_makes_gradient_accumulation_exact():
    logp, mask = _inputs(seed=1)
    full = lmloss.likelihood_loss("focal", logp=logp, mask=mask, gamma=1.0)
    total = int(mask.sum())
    pieces = [
        lmloss.likelihood_loss("focal", logp=logp[s], mask=mask[s], num_items=total, gamma=1.0).loss
        for s in (slice(0, 2), slice(2, 4))
    ]
    torch.testing.assert_close(sum(pieces), full.loss)
    # TRL's SFT convention: Σ per-token loss / num_items_in_batch.
    ce = lmloss.likelihood_loss("ce", logp=logp, mask=mask, num_items=torch.tensor(total))
    torch.testing.assert_close(ce.loss, (-logp * mask).sum() / total)


def test_num_items_for_sequence_mean_counts_sequences():
    logp, mask = _inputs(seed=2)
    local = lmloss.likelihood_loss("ce", logp=logp, mask=mask, reduction="sequence_mean")
    scaled = lmloss.likelihood_loss(
        "ce", logp=logp, mask=mask, reduction="sequence_mean", num_items=8
    )
    torch.testing.assert_close(scaled.loss, local.loss * logp.shape[0] / 8)


def test_token_weights_fait_style():
    logp, mask = _inputs(seed=3)
    w = torch.rand(logp.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3
    out = lmloss.likelihood_loss("ce", logp=logp, mask=mask, weights=w)
    m = mask.double()
    torch.testing.assert_close(out.loss, (w * m * -logp).sum() / (w * m).sum())
    ones = lmloss.likelihood_loss("ce", logp=logp, mask=mask, weights=torch.ones_like(w))
    torch.testing.assert_close(ones.loss, lmloss.likelihood_loss("ce", logp=logp, mask=mask).loss)


def _authors_weights(losses, strategy, r):
    """Sow et al.'s h → f → g pipeline, written out (delta = 1)."""
    lmin, lmax = losses.min(), losses.max()
    h = 2 * losses / (lmax - lmin) - (lmax + lmin) / (lmax - lmin)
    f = {
        "linupper": torch.minimum(h + 1, torch.ones_like(h)),
        "quadratic": 1 - h**2,
        "extremes": h.abs(),
    }[strategy]
    g = torch.exp((f - f.max()) / r)
    return g / g.sum()


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes"])
def test_reweighting_matches_the_authors_training_step(strategy):
    logp, _ = _inputs(seed=5)
    mask = torch.ones_like(logp, dtype=torch.bool)
    mask[2, 3:] = False
    out = lmloss.likelihood_loss(
        "ce", logp=logp, mask=mask, reweight=strategy, reweight_temperature=0.5
    )
    m = mask.double()
    n = m.sum(1)
    losses = (-logp * m).sum(1) / n
    omega = _authors_weights(losses.detach(), strategy, 0.5)
    want = (omega * (n / n.sum()) * losses).sum() * len(losses)
    torch.testing.assert_close(out.loss, want)


def test_reweighting_edge_cases():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    valid = torch.tensor([True, False, True, True])
    w = sample_weights(losses, "linupper", valid=valid, temperature=1e9)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    equal = sample_weights(torch.full((3,), 2.0), "quadratic")
    torch.testing.assert_close(equal, torch.ones(3))
    none = sample_weights(losses, "extremes", valid=torch.zeros(4, dtype=torch.bool))
    assert (none == 0).all()
