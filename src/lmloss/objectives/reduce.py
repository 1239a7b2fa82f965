"""Token → sequence reductions and mask checks shared by every objective family.

Objectives receive per-token tensors ``[B, T]`` with a completion mask; these helpers turn
them into per-sequence values. Keeping them here means no objective writes its own.
"""

from __future__ import annotations

import torch

from lmloss import _checks

Tensor = torch.Tensor


def as_mask(name: str, mask: object, like: Tensor, like_name: str) -> Tensor:
    """Check a 0/1 or bool ``mask`` has ``like``'s shape; return it in ``like``'s dtype."""
    mask = _checks.require_tensor(name, mask)
    _checks.require_shape(name, mask, like.shape, like_name)
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"{name} must hold only 0 and 1 (or be bool)")
    return mask.to(like.dtype)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Σ_t values·mask over the last dimension."""
    return (values * mask).sum(-1)


def token_count(mask: Tensor) -> Tensor:
    """Number of unmasked tokens per row."""
    return mask.sum(-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Σ_t values·mask / Σ_t mask per row; 0 for a row with no unmasked token."""
    count = token_count(mask)
    return masked_sum(values, mask) / count.clamp(min=1)
