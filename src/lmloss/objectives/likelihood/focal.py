"""Focal loss: cross-entropy down-weighted on tokens the model already predicts well."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.numerics import one_minus_p
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective("focal", family="likelihood", paper="Lin et al. 2017, Focal Loss, arXiv:1708.02002")
def focal(logp: Tensor, *, gamma: float = 2.0) -> Tensor:
    """``ℓ = −(1 − p)^γ · log p``.

    ``1 − p`` is taken as ``−expm1(log p)`` (exact near p = 1) and clamped at the smallest
    normal number so ``(1−p)^γ`` keeps a finite gradient for 0 < γ < 1.

    Args:
        logp: log-probability of the target.
        gamma: focusing parameter γ ≥ 0; ``gamma=0`` is ``ce``.

    Returns:
        The per-token loss.

    References:
        Lin et al., "Focal Loss for Dense Object Detection", arXiv:1708.02002, eq. (4)
        without the class weight α (recalled; it is the standard form).
    """
    _checks.require_in_range("gamma", gamma, 0.0, float("inf"))
    if gamma == 0.0:
        return -logp
    return -one_minus_p(logp).pow(gamma) * logp
