"""bradley_terry against the plain formula; its reward-model front door; gradcheck; errors."""

from __future__ import annotations

import math

import pytest
import torch

import lmloss

F64 = torch.float64


def _scores(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dtype=F64, generator=g) * 2, torch.randn(n, dtype=F64, generator=g) * 2


def _plain(chosen, rejected, margin, c):
    return torch.tensor(
        [
            -math.log(1 / (1 + math.exp(-(w - r - m)))) + c * (w + r) ** 2
            for w, r, m in zip(chosen.tolist(), rejected.tolist(), margin.tolist())
        ],
        dtype=F64,
    )


@pytest.mark.parametrize("c", [0.0, 0.01])
def test_matches_plain_formula_with_margin_and_centering(c):
    chosen, rejected = _scores()
    margin = torch.linspace(0, 1, len(chosen), dtype=F64)
    out = lmloss.reward_model_loss(
        "bradley_terry", chosen=chosen, rejected=rejected, margin=margin,
        center_rewards_coefficient=c,
    )  # fmt: skip
    want = _plain(chosen, rejected, margin, c)
    torch.testing.assert_close(out.per_example, want)
    torch.testing.assert_close(out.loss, want.mean())
    assert float(out.metrics["accuracy"]) == pytest.approx(
        float((chosen > rejected).double().mean())
    )
    assert float(out.metrics["margin"]) == pytest.approx(float((chosen - rejected).mean()))


def test_label_picks_the_preferred_column():
    chosen, rejected = _scores(1)
    direct = lmloss.classification_loss(
        "bradley_terry", logits=torch.stack([rejected, chosen], 1), labels=torch.ones(6).long()
    ).per_example
    torch.testing.assert_close(direct, _plain(chosen, rejected, torch.zeros(6, dtype=F64), 0.0))


def test_without_margin_is_two_class_cross_entropy():
    logits = torch.randn(5, 2, dtype=F64)
    labels = torch.tensor([0, 1, 1, 0, 0])
    got = lmloss.classification_loss("bradley_terry", logits=logits, labels=labels).per_example
    want = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(got, want)


def test_gradcheck():
    chosen, rejected = (t.requires_grad_() for t in _scores(2, 4))
    margin = torch.rand(4, dtype=F64)

    def fn(w, r):
        return lmloss.reward_model_loss(
            "bradley_terry", chosen=w, rejected=r, margin=margin, center_rewards_coefficient=0.1
        ).loss

    assert torch.autograd.gradcheck(fn, (chosen, rejected))


def test_bad_inputs_say_what_was_expected():
    w = torch.zeros(3)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        lmloss.classification_loss("bradley_terry", logits=torch.zeros(3, 3), labels=w.long())
    with pytest.raises(ValueError, match="rejected must have shape"):
        lmloss.reward_model_loss("bradley_terry", chosen=w, rejected=torch.zeros(2))
    with pytest.raises(ValueError, match="margin must have shape"):
        lmloss.reward_model_loss("bradley_terry", chosen=w, rejected=w, margin=torch.zeros(2))
    with pytest.raises(ValueError, match="center_rewards_coefficient must be >= 0"):
        lmloss.reward_model_loss(
            "bradley_terry", chosen=w, rejected=w, center_rewards_coefficient=-1.0
        )
    with pytest.raises(ValueError, match="does not score preference pairs"):
        lmloss.reward_model_loss("auc", chosen=w, rejected=w)
