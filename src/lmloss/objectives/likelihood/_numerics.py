"""Log-space helpers shared by the likelihood objectives (and the classification ones)."""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

# exp() arguments are clamped here: exp(80) is finite in float32 (max ≈ exp(88.7)).
MAX_EXPONENT = 80.0


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate at both ends (Mächler 2012).

    Near 0 the direct form loses all digits; ``log(−expm1(x))`` keeps them, and for very
    negative ``x`` ``log1p(−exp(x))`` does.
    """
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def one_minus_p(logp: Tensor) -> Tensor:
    """1 − exp(logp), exact for p close to 1, clamped away from 0 so powers stay differentiable."""
    return (-torch.expm1(logp)).clamp(min=torch.finfo(logp.dtype).tiny)
