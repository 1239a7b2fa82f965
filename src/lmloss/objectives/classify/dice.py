"""Self-adjusting Dice loss for imbalanced classification."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.classify._inputs import class_labels, class_logits
from lmloss.objectives.numerics import one_minus_p
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective(
    "self_adjusting_dice",
    family="classify",
    stats=(),
    paper="Li et al. 2020, Dice Loss for Data-imbalanced NLP Tasks, arXiv:1911.02855",
    aliases=("dice",),
)
def self_adjusting_dice(
    logits: Tensor, labels: Tensor, *, alpha: float = 1.0, gamma: float = 1.0
) -> Tensor:
    """``ℓ = 1 − (2·(1−p)^α·p + γ) / ((1−p)^α·p + 1 + γ)``, ``p = softmax(z)_y``.

    The Dice coefficient of one example with its gold class, where the factor ``(1−p)^α``
    pushes down the weight of easy examples (the "self-adjusting" part) and γ smooths.

    Args:
        logits: ``[N, C]`` scores.
        labels: ``[N]`` class indices.
        alpha: α ≥ 0; α = 0 is the plain (smoothed) Dice loss.
        gamma: smoothing γ ≥ 0.

    Returns:
        ``[N]`` per-example losses in ``[0, 1]``.

    References:
        arXiv:1911.02855 (abstract in ``seeds/``); the per-example form follows the
        docstring of the authors' ShannonAI/dice_loss_for_NLP code (numerator
        ``2(1−p)^α p y + smooth``, denominator ``(1−p)^α p + y + smooth``) with y = 1 for the
        gold class, as in fursovia/self-adj-dice.
    """
    logits = class_logits(logits)
    labels = class_labels(labels, logits)
    _checks.require_in_range("alpha", alpha, 0.0, float("inf"))
    _checks.require_in_range("gamma", gamma, 0.0, float("inf"))
    logp = torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    weighted = one_minus_p(logp).pow(alpha) * logp.exp()
    return 1.0 - (2.0 * weighted + gamma) / (weighted + 1.0 + gamma)
