"""``linear_cross_entropy``: the drop-in fused SFT loss (hidden states + head weight → CE).

The same contract as Cut Cross-Entropy's ``linear_cross_entropy`` and Liger-Kernel's fused
linear cross-entropy, on any device: the ``[N, V]`` logits never exist. It is a thin call
of the fused ``"ce"`` likelihood objective, so it shares its math, its engine and its
checks with every other likelihood loss.
"""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.head import Head
from lmloss.likelihood import fused_likelihood_loss

Tensor = torch.Tensor

# linear_cross_entropy's reduction names → the likelihood family's.
_REDUCTIONS = {"mean": "token_mean", "sum": "sum", "none": "none"}


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items: float | Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    memory_budget: int | None = None,
) -> Tensor:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, fused.

    Args:
        hidden: ``[N, H]`` or ``[B, T, H]`` final hidden states (targets already shifted).
        weight: ``[V, H]`` LM-head weight.
        targets: ``[N]`` or ``[B, T]`` token ids, ``ignore_index`` where not trained.
        bias: optional ``[V]`` head bias.
        ignore_index: targets with this value contribute nothing.
        reduction: ``"mean"`` over the non-ignored tokens (or ``Σ / num_items`` when
            ``num_items`` is given), ``"sum"``, or ``"none"`` (per-token losses shaped like
            ``targets``, 0 at ignored positions, differentiable).
        num_items: global token count for ``"mean"`` (gradient accumulation / data
            parallel: the count over the whole optimizer step).
        temperature, softcap, logit_scale: the logit transform of
            :func:`lmloss.token_stats` (Gemma-style soft capping, Cohere-style scale).
        memory_budget: bytes for the logit tiles.

    Returns:
        A scalar (``"mean"``, ``"sum"``) or the per-token losses (``"none"``).

    Example:
        >>> h, w = torch.randn(6, 8), torch.randn(50, 8)
        >>> y = torch.tensor([1, 2, 3, -100, 4, 5])
        >>> ref = torch.nn.functional.cross_entropy(h @ w.T, y)
        >>> bool(torch.allclose(linear_cross_entropy(h, w, y), ref, atol=1e-5))
        True
    """
    _checks.require_choice("reduction", reduction, _REDUCTIONS)
    if num_items is not None and reduction != "mean":
        raise ValueError(f"num_items only applies to reduction='mean', got reduction={reduction!r}")
    out = fused_likelihood_loss(
        "ce",
        hidden=hidden,
        head=Head(weight, bias, softcap, logit_scale),
        targets=targets,
        aggregation=_REDUCTIONS[reduction],
        num_items=num_items,
        ignore_index=ignore_index,
        temperature=temperature,
        memory_budget=memory_budget,
    )
    return out.per_example if reduction == "none" else out.loss
