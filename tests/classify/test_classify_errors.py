"""Bad input to the classification objectives: errors that name the argument."""

from __future__ import annotations

import pytest
import torch

import lmloss

Z = torch.randn(4, 3)
Y = torch.tensor([0, 2, 1, 0])
S = torch.randn(6)
B = torch.tensor([1, 0, 1, 0, 0, 1])


@pytest.mark.parametrize(
    ("name", "logits", "labels", "hyper", "error", "match"),
    [
        ("ldr_kl", Z, torch.tensor([0, 3, 1, 0]), {}, ValueError, r"labels must lie in \[0, 3\)"),
        ("spherical_z", Z, torch.tensor([0, -1, 1, 0]), {}, ValueError, "labels"),
        ("comp_sum_logits", Z, Y.float(), {}, TypeError, "labels"),
        ("self_adjusting_dice", Z, Y[:3], {}, ValueError, "labels"),
        ("infonce", Z, torch.full((4, 3), 2), {}, ValueError, "binary"),
        ("auc", S, torch.tensor([1, 0, 2, 0, 0, 1]), {}, ValueError, "binary"),
        ("anyloss", S, B * 3, {}, ValueError, "binary"),
        ("ensloss", S, B - 1, {}, ValueError, "binary"),
        ("multi_similarity", Z, torch.full((4, 3), 5), {}, ValueError, "binary"),
        ("ldr_kl", torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), {}, ValueError, "empty"),
        ("auc", torch.zeros(0), torch.zeros(0, dtype=torch.long), {}, ValueError, "empty"),
        ("anyloss", torch.zeros(0), torch.zeros(0, dtype=torch.long), {}, ValueError, "empty"),
        (
            "ldr_kl",
            torch.randn(4, 1),
            torch.zeros(4, dtype=torch.long),
            {},
            ValueError,
            "2 classes",
        ),
        ("ldr_kl", torch.randn(4), Y, {}, ValueError, "logits"),
        ("ldr_kl", Z.long(), Y, {}, TypeError, "logits"),
        ("anyloss", torch.randn(6, 2), B, {}, ValueError, "binary loss"),
        ("spherical_z", Z, Y, {"a": 0.0}, ValueError, "a must"),
        ("ldr_kl", Z, Y, {"lam": -1.0}, ValueError, "lam"),
        ("ldr_kl", Z, Y, {"margin": -0.5}, ValueError, "margin"),
        ("aldr_kl", Z, Y, {"alpha": 1.0}, ValueError, "alpha"),
        ("aldr_kl", Z, Y, {"iterations": -1}, ValueError, "iterations"),
        ("comp_sum_logits", Z, Y, {"tau": -1.0}, ValueError, "tau"),
        ("self_adjusting_dice", Z, Y, {"gamma": -1.0}, ValueError, "gamma"),
        ("anyloss", S, B, {"metric": "f2"}, ValueError, "metric"),
        ("anyloss", S, B, {"amplifier": 0.0}, ValueError, "amplifier"),
        ("auc", S, B, {"temperature": 0.0}, ValueError, "temperature"),
        ("infonce", Z, Y, {"temperature": -1.0}, ValueError, "temperature"),
        ("multi_similarity", Z, Z > 0, {"beta": 0.0}, ValueError, "beta"),
        ("hl_gauss", Z, torch.rand(4), {"v_min": 1.0, "v_max": 1.0}, ValueError, "v_min"),
        ("hl_gauss", Z, torch.rand(4), {"sigma": 0.0}, ValueError, "sigma"),
        ("hl_gauss", Z, torch.tensor([0.1, float("nan"), 0.2, 0.3]), {}, ValueError, "finite"),
        ("ensloss", S, B, {"scale": (0.0, 1.0)}, ValueError, "scale"),
        ("ensloss", S, B, {"shift": (1.0, 0.0)}, ValueError, "shift"),
        ("ldr_kl", Z, Y, {"temperature": 1.0}, TypeError, "temperature"),
        ("ldr_kI", Z, Y, {}, ValueError, "did you mean"),
    ],
)
def test_classification_loss_rejects(name, logits, labels, hyper, error, match):
    with pytest.raises(error, match=match):
        lmloss.classification_loss(name, logits=logits, labels=labels, **hyper)


def test_bad_reduction_and_family():
    with pytest.raises(ValueError, match="reduction"):
        lmloss.classification_loss("ldr_kl", logits=Z, labels=Y, reduction="none")
    with pytest.raises(ValueError, match="classify objective"):
        lmloss.classification_loss("ce", logits=Z, labels=Y)
