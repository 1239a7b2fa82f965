"""Token → sequence → batch reductions of a per-token policy loss.

Each aggregation maps a per-token loss ``[B, T]`` and its mask to a per-sequence loss
``[B]`` chosen so that **the batch loss is always ``per_example.mean()``**. That keeps one
invariant for every scheme while each scheme keeps its paper's weighting:

==========================  ==============================================  ===============
name                        batch loss                                      used by
==========================  ==============================================  ===============
``seq_mean_token_mean``     (1/B) Σ_i (1/|y_i|) Σ_t ℓ_it                    GRPO, GSPO, SAPO
``seq_mean_token_sum``      (1/B) Σ_i Σ_t ℓ_it                              LUSPO, BNPO code
``token_sum_norm``          (1/B) Σ_i Σ_t ℓ_it / max_tokens                 Dr. GRPO
``token_mean``              Σ_i Σ_t ℓ_it / num_items                        DAPO, CISPO, PPO
==========================  ==============================================  ===============

``num_items`` (``token_mean``) is the normalizer: by default the number of unmasked tokens
of this batch; pass the token count of the whole optimizer step (all gradient-accumulation
micro-batches) divided by the number of data-parallel ranks when gradients are averaged
across ranks, so that every token weighs the same whatever the split (TRL's DAPO
convention). ``max_tokens`` (``token_sum_norm``) is Dr. GRPO's constant, by default the
padded length ``T``; pass the generation budget to keep it constant across batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmloss import _checks
from lmloss.objectives.reduce import masked_mean, masked_sum, token_count

Tensor = torch.Tensor


def _seq_mean_token_mean(per_token: Tensor, mask: Tensor, num_items, max_tokens) -> Tensor:
    return masked_mean(per_token, mask)


def _seq_mean_token_sum(per_token: Tensor, mask: Tensor, num_items, max_tokens) -> Tensor:
    return masked_sum(per_token, mask)


def _token_sum_norm(per_token: Tensor, mask: Tensor, num_items, max_tokens) -> Tensor:
    constant = per_token.shape[-1] if max_tokens is None else max_tokens
    return masked_sum(per_token, mask) / constant


def _token_mean(per_token: Tensor, mask: Tensor, num_items, max_tokens) -> Tensor:
    normalizer = token_count(mask).sum().clamp(min=1) if num_items is None else num_items
    # × B so that the mean over sequences is Σ_it ℓ_it / normalizer.
    return masked_sum(per_token, mask) * (per_token.shape[0] / normalizer)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
    "token_sum_norm": _token_sum_norm,
    "token_mean": _token_mean,
}


def check_aggregation(aggregation: str, num_items: object, max_tokens: object) -> None:
    """Validate the aggregation name and its optional normalizers."""
    _checks.require_choice("aggregation", aggregation, AGGREGATIONS)
    if num_items is not None:
        if isinstance(num_items, Tensor):
            if num_items.numel() != 1 or not bool(num_items.reshape(()) > 0):
                raise ValueError(f"num_items must be one positive number, got {num_items}")
        else:
            _checks.require_positive("num_items", num_items)
    if max_tokens is not None:
        _checks.require_positive("max_tokens", max_tokens)


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    aggregation: str,
    *,
    num_items: float | Tensor | None = None,
    max_tokens: float | None = None,
) -> Tensor:
    """Per-sequence losses ``[B]`` whose mean is the batch loss under ``aggregation``."""
    check_aggregation(aggregation, num_items, max_tokens)
    if isinstance(num_items, Tensor):
        num_items = num_items.to(per_token.dtype).reshape(())
    return AGGREGATIONS[aggregation](per_token, mask, num_items, max_tokens)
