"""AnyLoss: a confusion-matrix metric turned into a loss through a soft confusion matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmloss import _checks
from lmloss.objectives.classify._inputs import binary_labels, binary_scores
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    # A batch without positives (or negatives) has an empty denominator: count it as 0.
    return num / den.clamp(min=torch.finfo(den.dtype).tiny)


def _f1(tp: Tensor, fn: Tensor, fp: Tensor, tn: Tensor) -> Tensor:
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _accuracy(tp: Tensor, fn: Tensor, fp: Tensor, tn: Tensor) -> Tensor:
    return (tp + tn) / (tp + fn + fp + tn)


def _balanced_accuracy(tp: Tensor, fn: Tensor, fp: Tensor, tn: Tensor) -> Tensor:
    return 0.5 * (_ratio(tp, tp + fn) + _ratio(tn, tn + fp))


METRICS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "f1": _f1,
    "accuracy": _accuracy,
    "balanced_accuracy": _balanced_accuracy,
}


def soft_confusion(scores: Tensor, positive: Tensor, amplifier: float) -> tuple[Tensor, ...]:
    """Soft (TP, FN, FP, TN) from scores: ``A = σ(L·(σ(s) − ½))`` is a near-0/1 prediction."""
    a = torch.sigmoid(amplifier * (torch.sigmoid(scores) - 0.5))
    y = positive.to(scores.dtype)
    return (y * a).sum(), (y * (1 - a)).sum(), ((1 - y) * a).sum(), ((1 - y) * (1 - a)).sum()


@objective(
    "anyloss",
    family="classify",
    stats=(),
    batch_coupled=True,
    paper="Han, Moniz, Chawla 2024, AnyLoss, arXiv:2405.14745",
)
def anyloss(
    logits: Tensor, labels: Tensor, *, metric: str = "f1", amplifier: float = 73.0
) -> Tensor:
    """``ℓ = 1 − metric(TP, FN, FP, TN)`` of the batch's soft confusion matrix.

    Each score becomes ``A_i = σ(L·(σ(s_i) − ½))``, close to 0 or 1, and
    ``TP = Σ y·A``, ``FN = Σ y·(1−A)``, ``FP = Σ (1−y)·A``, ``TN = Σ (1−y)·(1−A)``.
    Targets: F1 ``2TP/(2TP+FP+FN)``, accuracy ``(TP+TN)/n``, balanced accuracy
    ``½(TP/(TP+FN) + TN/(TN+FP))``.

    Args:
        logits: ``[N]`` or ``[N, 1]`` binary scores (pre-sigmoid).
        labels: 0/1 labels shaped like the scores.
        metric: ``"f1"``, ``"accuracy"`` or ``"balanced_accuracy"``.
        amplifier: L > 0 (the paper recommends 73).

    Returns:
        A 0-d tensor: the loss of the whole batch (it is not a sum over examples).

    References:
        arXiv:2405.14745 (abstract in ``seeds/``); the approximation function and L = 73 are
        read from a public re-implementation's documentation, not from the paper itself.
    """
    scores = binary_scores(logits)
    positive = binary_labels(labels, scores)
    _checks.require_choice("metric", metric, METRICS)
    _checks.require_positive("amplifier", amplifier)
    return 1.0 - METRICS[metric](*soft_confusion(scores, positive, amplifier))
