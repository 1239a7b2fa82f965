"""Log-space helpers shared by the objective families: clamped exponents, log(1 − p), masked
log-sum-exp forms whose gradient stays finite when the mask is empty."""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

# exp() arguments of every objective are clamped here: exp(80) ≈ 5.5e34 is finite in float32
# (max ≈ exp(88.7)), so no objective's exp overflows.
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


def masked_log1p_sum_exp(x: Tensor, keep: Tensor, dim: int = -1) -> Tensor:
    """``log(1 + Σ_{keep} exp(x))`` along ``dim``; 0 (with zero gradient) where nothing is kept.

    Shifting by ``m = max(0, max_keep x)`` keeps the exponentials ≤ 1; excluded entries go
    through ``exp(−inf) = 0`` *before* any product, so they never produce ``0·inf``.
    """
    shift = x.detach().masked_fill(~keep, float("-inf")).amax(dim, keepdim=True).clamp(min=0.0)
    e = torch.exp(torch.where(keep, x - shift, float("-inf")))
    return shift.squeeze(dim) + torch.log(e.sum(dim) + torch.exp(-shift.squeeze(dim)))


def masked_logsumexp(x: Tensor, keep: Tensor, dim: int = -1) -> Tensor:
    """``log Σ_{keep} exp(x)`` along ``dim``; ``−inf`` (zero gradient) where nothing is kept."""
    any_kept = keep.any(dim)
    shift = x.detach().masked_fill(~keep, float("-inf")).amax(dim, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    total = torch.exp(torch.where(keep, x - shift, float("-inf"))).sum(dim)
    # log(1) stands in for log(0) on empty rows so that no 1/0 reaches the backward pass.
    value = shift.squeeze(dim) + torch.log(torch.where(any_kept, total, 1.0))
    return torch.where(any_kept, value, float("-inf"))
