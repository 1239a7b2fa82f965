"""Engine inputs: targets of any integer width, and logit transforms that must be finite."""

from __future__ import annotations

import math

import pytest
import torch

import lmloss

N, H, V = 7, 5, 40
INTEGER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


def _head(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, targets


def _calls(hidden, weight, targets):
    """Each fused entry point that reads targets/labels, as ``name -> value``."""
    rows = targets.reshape(1, N)
    return {
        "token_stats": lambda: (
            lmloss.token_stats(hidden, weight, targets, want=("logp", "is_argmax")).logp
        ),
        "linear_cross_entropy": lambda: lmloss.linear_cross_entropy(hidden, weight, targets),
        "fused_likelihood_loss": lambda: (
            lmloss.fused_likelihood_loss("focal", hidden, weight, targets, gamma=2.0).loss
        ),
        "fused_policy_loss": lambda: (
            lmloss.fused_policy_loss(
                "grpo",
                hidden=hidden[None],
                weight=weight,
                targets=rows,
                advantages=torch.ones(1, dtype=torch.float64),
            ).loss
        ),
        "fused_divergence_loss pld": lambda: (
            lmloss.fused_divergence_loss(
                "pld",
                hidden,
                weight,
                teacher_hidden=hidden.flip(0),
                teacher_weight=weight,
                labels=targets,
            ).loss
        ),
        "fused_divergence_loss hard_weight": lambda: (
            lmloss.fused_divergence_loss(
                "jsd",
                hidden,
                weight,
                teacher_hidden=hidden.flip(0),
                teacher_weight=weight,
                labels=targets,
                hard_weight=0.5,
            ).loss
        ),
        "token_stats_from_logits": lambda: (
            lmloss.token_stats_from_logits(hidden @ weight.T, targets).logp
        ),
    }


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_targets_of_any_integer_width_give_the_int64_result(dtype):
    hidden, weight, targets = _head()
    expected = {k: f() for k, f in _calls(hidden, weight, targets).items()}
    for name, call in _calls(hidden, weight, targets.to(dtype)).items():
        torch.testing.assert_close(call(), expected[name], msg=name)


def test_narrow_targets_still_reject_out_of_range_ids():
    hidden, weight, targets = _head()
    targets = targets.to(torch.uint8)
    targets[2] = 200
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 40\)"):
        lmloss.token_stats(hidden, weight, targets)


NON_FINITE = [math.inf, -math.inf, math.nan]


@pytest.mark.parametrize("value", NON_FINITE, ids=str)
@pytest.mark.parametrize("argument", ["temperature", "softcap", "logit_scale"])
def test_non_finite_logit_transform_is_refused(argument, value):
    hidden, weight, targets = _head()
    match = f"{argument} must be a finite number"
    with pytest.raises(ValueError, match=match):
        lmloss.token_stats(hidden, weight, targets, **{argument: value})
    with pytest.raises(ValueError, match=match):
        lmloss.linear_cross_entropy(hidden, weight, targets, **{argument: value})
    with pytest.raises(ValueError, match=match):
        lmloss.token_stats_from_logits(hidden @ weight.T, targets, **{argument: value})
    with pytest.raises(ValueError, match=match):
        lmloss.fused_divergence_loss(
            "jsd", hidden, weight, teacher_hidden=hidden, teacher_weight=weight,
            **{argument: value},
        )  # fmt: skip


@pytest.mark.parametrize("argument", ["teacher_softcap", "teacher_logit_scale"])
def test_non_finite_teacher_transform_is_refused(argument):
    hidden, weight, _ = _head()
    with pytest.raises(ValueError, match="must be a finite number, got nan"):
        lmloss.token_divergence(
            "jsd", hidden, weight, teacher_hidden=hidden, teacher_weight=weight,
            **{argument: math.nan},
        )  # fmt: skip
