"""PaLM's auxiliary z-loss: cross-entropy plus a penalty on the log partition function."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective(
    "z_loss",
    family="likelihood",
    paper="Chowdhery et al. 2022 (PaLM), arXiv:2204.02311",
    stats=("logp", "lse"),
)
def z_loss(logp: Tensor, lse: Tensor, *, z_weight: float = 1e-4) -> Tensor:
    """``ℓ = −log p_y + λ·lse²``, pushing the log normalizer ``log Z`` towards 0.

    Args:
        logp: log-probability of the target.
        lse: log-sum-exp of the logits (``log Z``).
        z_weight: λ ≥ 0 (PaLM uses 1e-4); ``z_weight=0`` is ``ce``.

    Returns:
        The per-token loss.

    References:
        PaLM, arXiv:2204.02311, section 5 ("z_loss = 10^-4 · log² Z"). Liger-Kernel's fused
        linear cross-entropy exposes the same term as ``lse_square_scale``.
    """
    _checks.require_in_range("z_weight", z_weight, 0.0, float("inf"))
    return -logp + z_weight * lse.square()
