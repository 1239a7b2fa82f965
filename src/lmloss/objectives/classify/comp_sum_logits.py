"""The comp-sum family on class logits (cross-entropy, GCE, MAE, ...)."""

from __future__ import annotations

import torch

from lmloss.objectives.classify._inputs import class_labels, class_logits
from lmloss.objectives.likelihood.comp_sum import comp_sum_of_logp
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective(
    "comp_sum_logits",
    family="classify",
    stats=(),
    paper="Mao, Mohri, Zhong 2023, Cross-Entropy Loss Functions, arXiv:2304.07288",
    aliases=("gce_logits",),
)
def comp_sum_logits(logits: Tensor, labels: Tensor, *, tau: float = 1.5) -> Tensor:
    """``ℓ_τ = ((1+u)^{1−τ} − 1)/(1−τ)``, ``u = Σ_{k≠y} e^{z_k − z_y}``, on ``[N, C]`` logits.

    The same function as the likelihood objective ``comp_sum`` (one definition:
    :func:`lmloss.objectives.likelihood.comp_sum.comp_sum_of_logp`) applied to
    ``log softmax(z)_y``. τ → 1 is cross-entropy, τ = 2 is ``1 − p_y``.

    Args:
        logits: ``[N, C]`` scores.
        labels: ``[N]`` class indices.
        tau: τ ≥ 0.

    Returns:
        ``[N]`` per-example losses.

    References:
        arXiv:2304.07288; formula from the catalog (``OBJECTIVES.md`` §1), checked against
        its special cases.
    """
    logits = class_logits(logits)
    labels = class_labels(labels, logits)
    logp = torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    return comp_sum_of_logp(logp, tau)
