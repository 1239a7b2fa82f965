"""The map from raw head outputs to the logits every statistic is taken of.

HF models apply, in this order (Gemma-2's ``final_logit_softcapping``, Cohere's
``logit_scale``, and sampling temperature):

    a = (hidden @ weight.T + bias) * logit_scale
    c = softcap * tanh(a / softcap)          # when softcap is given
    z = c / temperature

The derivative needs only ``z``: with ``u = tanh(a / softcap) = z * temperature / softcap``,
``dz/d(raw) = logit_scale * (1 - u²) / temperature``, so the backward never keeps ``a``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmloss._checks import require_finite, require_positive


@dataclass(frozen=True)
class LogitTransform:
    """Scale, soft cap and temperature applied to raw head outputs."""

    logit_scale: float = 1.0
    softcap: float | None = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        require_finite("temperature", self.temperature)
        require_positive("temperature", self.temperature)
        if self.softcap is not None:
            require_finite("softcap", self.softcap)
            require_positive("softcap", self.softcap)
        require_finite("logit_scale", self.logit_scale)

    def apply_(self, raw: torch.Tensor) -> torch.Tensor:
        """Turn raw head outputs into logits, in place."""
        if self.softcap is None:
            factor = self.logit_scale / self.temperature
            return raw if factor == 1.0 else raw.mul_(factor)
        if self.logit_scale != 1.0:
            raw.mul_(self.logit_scale / self.softcap)
        else:
            raw.div_(self.softcap)
        return raw.tanh_().mul_(self.softcap / self.temperature)

    def backward_(self, grad_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the raw outputs from the gradient w.r.t. ``logits``, in place.

        ``logits`` is used as scratch and overwritten: it is never needed after its
        gradient, and a tile-sized temporary would cost a quarter of the memory budget.
        """
        if self.softcap is None:
            factor = self.logit_scale / self.temperature
            return grad_logits if factor == 1.0 else grad_logits.mul_(factor)
        u = logits.mul_(self.temperature / self.softcap)
        one_minus_u2 = u.mul_(u).neg_().add_(1.0)
        return grad_logits.mul_(one_minus_u2).mul_(self.logit_scale / self.temperature)

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """Out-of-place, differentiable version (the reference path uses it)."""
        scaled = raw * self.logit_scale
        if self.softcap is not None:
            scaled = self.softcap * torch.tanh(scaled / self.softcap)
        return scaled / self.temperature
