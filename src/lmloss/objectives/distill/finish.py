"""What every token-level distillation objective shares: CE-to-labels mixing and the token mean.

Standard KD (Hinton et al. 2015, arXiv:1503.02531) trains on a mix of the soft loss (a
divergence to the teacher) and the hard loss (cross-entropy to the labels):

    ℓ_t = (1 - h) · D_t + h · (-log p_s(y_t)),    h = ``hard_weight`` ∈ [0, 1]

with the cross-entropy taken at temperature 1 (the student's own distribution) and the
divergence at the distillation temperature, as Liger's ``LigerFusedLinearJSDLoss``
(``weight_hard_loss = h``, ``weight_soft_loss = 1 - h``) does. No ``T²`` factor is applied
(TRL and Liger apply none either); scale the loss yourself for Hinton's convention.

The batch loss is the mean over trained tokens, ``Σ_t m_t ℓ_t / Σ_t m_t`` (TRL's
``batchmean`` over unmasked tokens), or ``/ num_items`` for a count that spans gradient
accumulation steps and ranks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lmloss import _checks
from lmloss.objectives import reduce
from lmloss.output import LossOutput

Tensor = torch.Tensor


def hard_mix(soft: Tensor, terms: Mapping[str, Tensor], hard_weight: float) -> Tensor:
    """``(1 - h)·soft + h·nll`` per token; ``terms["nll"]`` is needed when ``h > 0``."""
    _checks.require_in_range("hard_weight", hard_weight, 0.0, 1.0)
    if hard_weight == 0:
        return soft
    if "nll" not in terms:
        raise ValueError("hard_weight > 0 mixes in cross-entropy to the labels: pass labels=")
    return (1 - hard_weight) * soft + hard_weight * terms["nll"]


def token_mean_output(
    per_token: Tensor,
    mask: Tensor | None,
    num_items: float | Tensor | None = None,
    metrics: Mapping[str, Tensor] | None = None,
) -> LossOutput:
    """Mean over unmasked tokens (or ``/ num_items``), per-sequence means as ``per_example``.

    ``per_token`` is ``[N]`` (then every token is an example) or ``[B, T]``.
    """
    mask = (
        torch.ones_like(per_token)
        if mask is None
        else reduce.as_mask("mask", mask, per_token, "the tokens")
    )
    if num_items is None:
        denominator = reduce.token_count(mask).sum().clamp(min=1)
    else:
        value = float(num_items.detach()) if isinstance(num_items, Tensor) else num_items
        denominator = torch.as_tensor(
            _checks.require_positive("num_items", value),
            dtype=per_token.dtype,
            device=per_token.device,
        )
    loss = reduce.masked_sum(per_token, mask).sum() / denominator
    per_example = reduce.masked_mean(per_token, mask) if per_token.dim() > 1 else per_token * mask
    count = reduce.token_count(mask).sum().clamp(min=1)
    logged = {
        name: (reduce.masked_sum(v.detach(), mask).sum() / count)
        for name, v in (metrics or {}).items()
    }
    return LossOutput(loss=loss, per_example=per_example, metrics=logged)
