"""Mann–Whitney (AUC) pairwise ranking loss on scores with binary relevance."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.classify._inputs import binary_labels, scores
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective(
    "auc",
    family="classify",
    stats=(),
    paper="Sheikholeslami et al. 2025, AUC-Driven Learning for Robust Neural Retrieval, "
    "arXiv:2510.00137",
    aliases=("mann_whitney", "mw"),
)
def auc(logits: Tensor, labels: Tensor, *, temperature: float = 1.0) -> Tensor:
    """``ℓ = mean_{i∈P, j∈N} softplus(−(s_i − s_j)/τ)``: BCE on every positive–negative pair.

    The mean over pairs of ``−log σ((s_i − s_j)/τ)`` upper-bounds (a scaled) 1 − AUC, the
    Mann–Whitney U statistic.

    Args:
        logits: scores, ``[N]`` (one ranking) or ``[B, K]`` (one ranking per row, e.g. a
            query's candidates).
        labels: binary relevance shaped like ``logits``.
        temperature: τ > 0.

    Returns:
        A 0-d loss for ``[N]`` scores, ``[B]`` per-row losses for ``[B, K]``; a ranking
        without a positive or without a negative has loss 0.

    References:
        arXiv:2510.00137 (abstract in ``seeds/``: "minimizing binary cross entropy over
        score differences"). A public review of the paper describes the pair terms as
        summed; this function averages them per ranking (the mean keeps the scale independent
        of the number of pairs). The temperature is this library's addition (τ = 1 is the
        paper's form).
    """
    values = scores(logits)
    relevant = binary_labels(labels, values)
    _checks.require_positive("temperature", temperature)
    rows, rel = (values, relevant) if values.dim() == 2 else (values[None], relevant[None])
    pairs = rel[:, :, None] & ~rel[:, None, :]
    margins = (rows[:, :, None] - rows[:, None, :]) / temperature
    pair_losses = torch.where(pairs, torch.nn.functional.softplus(-margins), 0.0)
    per_row = pair_losses.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)
    return per_row if values.dim() == 2 else per_row[0]
