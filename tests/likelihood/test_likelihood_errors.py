"""Bad input gets a ValueError/TypeError that names the argument."""

from __future__ import annotations

import pytest
import torch

import lmloss

LOGP = -torch.rand(2, 3, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "cee"}, ValueError, "did you mean"),
        ({"name": "ce", "gama": 1.0}, TypeError, "gama"),
        ({"name": "z_loss"}, ValueError, "lse"),
        (
            {"name": "label_smoothing", "eps": 1.5, "lse": LOGP, "mean_logit": LOGP},
            ValueError,
            "eps",
        ),
        ({"name": "z_loss", "z_weight": -1.0, "lse": LOGP}, ValueError, "z_weight"),
        ({"name": "dco", "n": 0.5}, ValueError, "n must"),
        ({"name": "comp_sum", "tau": -0.1}, ValueError, "tau"),
        ({"name": "focal", "gamma": -1.0}, ValueError, "gamma"),
        ({"name": "ce", "reduction": "avg"}, ValueError, "reduction"),
        ({"name": "ce", "reduction": "sum", "num_items": 3}, ValueError, "num_items"),
        ({"name": "ce", "num_items": 0}, ValueError, "num_items"),
        ({"name": "ce", "reweight": "upper"}, ValueError, "strategy"),
        ({"name": "ce", "weights": -torch.ones(2, 3, dtype=torch.float64)}, ValueError, "weights"),
        ({"name": "ce", "weights": torch.ones(3, 2, dtype=torch.float64)}, ValueError, "weights"),
        ({"name": "ce", "mask": torch.full((2, 3), 2)}, ValueError, "mask"),
        ({"name": "z_loss", "lse": torch.zeros(3, 2, dtype=torch.float64)}, ValueError, "lse"),
        ({"name": "z_loss", "lse": torch.zeros(2, 3, 2, dtype=torch.float64)}, ValueError, "lse"),
        (
            {
                "name": "emo",
                "expectation": torch.zeros(2, 3),
                "target_embedding": torch.zeros(2, 3),
            },
            ValueError,
            "expectation",
        ),
        ({"name": "ce", "logp": torch.zeros(0)}, ValueError, "logp"),
        ({"name": "ce", "logp": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "logp"),
        (
            {"name": "ce", "logp": torch.zeros(4), "reduction": "sequence_mean"},
            ValueError,
            "sequence_mean",
        ),
        ({"name": "ce", "logp": torch.zeros(4), "reweight": "linupper"}, ValueError, "reweight"),
        ({"name": "emo"}, ValueError, "expectation"),
    ],
)
def test_likelihood_loss_rejects(kwargs, error, match):
    kwargs = {"logp": LOGP, **kwargs}
    with pytest.raises(error, match=match):
        lmloss.likelihood_loss(kwargs.pop("name"), **kwargs)


def _head():
    return torch.randn(2, 3, 4), torch.randn(9, 4), torch.randint(0, 9, (2, 3))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"targets": torch.full((2, 3), 9)}, ValueError, "targets"),
        ({"targets": torch.full((2, 3), -1)}, ValueError, "targets"),
        ({"targets": torch.zeros(2, 4, dtype=torch.long)}, ValueError, "targets"),
        ({"weight": torch.randn(9, 5)}, ValueError, "weight"),
        ({"weight": torch.randn(9, 4, dtype=torch.float64)}, TypeError, "dtype"),
        (
            {"hidden": torch.randn(0, 4), "targets": torch.zeros(0, dtype=torch.long)},
            ValueError,
            "hidden",
        ),
        ({"hidden": torch.zeros(2, 3, 4, dtype=torch.long)}, TypeError, "hidden"),
        ({"bias": torch.randn(8)}, ValueError, "bias"),
        ({"name": "emo"}, ValueError, "embedding_table"),
        ({"name": "focal", "gamma": -2.0}, ValueError, "gamma"),
        ({"name": "focal", "tau": 1.0}, TypeError, "tau"),
        ({"temperature": 0.0}, ValueError, "temperature"),
    ],
)
def test_fused_likelihood_loss_rejects(change, error, match):
    hidden, weight, targets = _head()
    kwargs = {"name": "ce", "hidden": hidden, "weight": weight, "targets": targets, **change}
    with pytest.raises(error, match=match):
        lmloss.fused_likelihood_loss(**kwargs)


def test_linear_cross_entropy_rejects():
    hidden, weight, targets = _head()
    with pytest.raises(ValueError, match="reduction"):
        lmloss.linear_cross_entropy(hidden, weight, targets, reduction="token_mean")
    with pytest.raises(ValueError, match="num_items"):
        lmloss.linear_cross_entropy(hidden, weight, targets, reduction="sum", num_items=4)
