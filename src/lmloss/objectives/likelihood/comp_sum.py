"""The comp-sum family (Mao, Mohri, Zhong): cross-entropy, GCE and MAE as one formula."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.numerics import MAX_EXPONENT
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


def comp_sum_of_logp(logp: Tensor, tau: float) -> Tensor:
    """``ℓ_τ = ((1+u)^{1−τ} − 1)/(1−τ)`` with ``1 + u = 1/p``, written on ``log p``.

    ``(1/p)^{1−τ} = exp((τ−1)·log p)``, so ``ℓ_τ = expm1((τ−1)·log p)/(1−τ)`` (τ ≠ 1) and
    ``ℓ_1 = −log p``. The exponent is clamped at ``MAX_EXPONENT`` for τ < 1, where the loss
    grows like ``p^{τ−1}``. Shared with the classification version.
    """
    _checks.require_in_range("tau", tau, 0.0, float("inf"))
    if tau == 1.0:
        return -logp
    exponent = ((tau - 1.0) * logp).clamp(max=MAX_EXPONENT)
    return torch.expm1(exponent) / (1.0 - tau)


@objective(
    "comp_sum",
    family="likelihood",
    paper="Mao, Mohri, Zhong 2023, Cross-Entropy Loss Functions, arXiv:2304.07288",
    aliases=("gce",),
)
def comp_sum(logp: Tensor, *, tau: float = 1.5) -> Tensor:
    """Comp-sum loss of the target token.

    ``ℓ_τ = ((1+u)^{1−τ} − 1)/(1−τ)``, ``u = Σ_{y'≠y} e^{h_{y'} − h_y} = 1/p − 1``.
    τ → 1 is cross-entropy, τ = 2 is ``1 − p`` (mean absolute error), τ ∈ (1, 2) is the
    generalized cross-entropy ``(1 − p^q)/q`` with ``q = τ − 1``, τ = 0 is ``1/p − 1``.

    Args:
        logp: log-probability of the target.
        tau: τ ≥ 0.

    Returns:
        The per-token loss.

    References:
        arXiv:2304.07288 (abstract in ``seeds/``); the formula is the catalog's
        (``OBJECTIVES.md`` §1), checked here against its stated special cases.
    """
    return comp_sum_of_logp(logp, tau)
