"""How per-token likelihood losses become one scalar: ``loss = Σ_t c_t · ℓ_t``.

Every reduction is a per-token coefficient ``c_t`` fixed before the loss is known, which
is what lets the fused path finish each token's gradient in the forward pass:

* ``token_mean``: ``c = w·m / Σ w·m`` (or ``/ num_items``) — the mean over trained tokens;
  with ``num_items`` the count of the whole optimizer step (all micro-batches and ranks),
  which makes gradient accumulation exact (TRL's and Hugging Face's convention).
* ``sequence_mean``: ``c = w·m / Σ_t w·m`` per sequence, then ``/ B`` (or ``/ num_items``).
* ``sum`` and ``none``: ``c = w·m`` (``none`` also keeps the per-token loss differentiable
  on the fused path).

``m`` is the mask of trained tokens, ``w`` optional per-token weights (token-weighted
cross-entropy, FAIT-style: ``Σ w_t ℓ_t / Σ w_t``), and an optional per-sequence factor
(a batch reweighter, :mod:`.reweight`) multiplies ``c`` last.
"""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives import reduce

Tensor = torch.Tensor

REDUCTIONS = ("token_mean", "sequence_mean", "sum", "none")


def check_reduction(reduction: str, num_items: object, ndim: int) -> None:
    """Validate the reduction name, ``num_items`` and the token layout it needs."""
    _checks.require_choice("reduction", reduction, REDUCTIONS)
    if num_items is not None:
        if reduction not in ("token_mean", "sequence_mean"):
            raise ValueError(
                f"num_items normalizes a mean; it cannot be combined with reduction={reduction!r}"
            )
        value = float(num_items.detach()) if isinstance(num_items, Tensor) else num_items
        _checks.require_positive("num_items", value)
    if reduction == "sequence_mean" and ndim != 2:
        raise ValueError(f"reduction='sequence_mean' needs [B, T] tokens, got {ndim}-D")


def check_token_weights(weights: object, like: Tensor) -> Tensor:
    """Per-token weights: floating, shaped like the tokens, finite and ≥ 0."""
    weights = _checks.require_floating("weights", weights)
    _checks.require_shape("weights", weights, like.shape, "the per-token statistics")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("weights must be finite and ≥ 0")
    return weights.detach().to(like.dtype)


def token_coefficients(
    mask: Tensor,
    weights: Tensor | None = None,
    *,
    reduction: str = "token_mean",
    num_items: float | Tensor | None = None,
) -> Tensor:
    """The coefficients ``c`` (shaped like ``mask``) with ``loss = Σ c·ℓ``; no gradient."""
    w = mask if weights is None else mask * weights
    tiny = torch.finfo(w.dtype).tiny
    if reduction == "token_mean":
        total = (
            w.sum()
            if num_items is None
            else torch.as_tensor(num_items, dtype=w.dtype, device=w.device)
        )
        return w / total.clamp(min=tiny)
    if reduction == "sequence_mean":
        per_sequence = reduce.token_count(w).clamp(min=tiny)[:, None]
        sequences = (
            w.shape[0]
            if num_items is None
            else torch.as_tensor(num_items, dtype=w.dtype, device=w.device)
        )
        return w / per_sequence / sequences
    return w


def sequence_means(per_token: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted per-sequence mean of a ``[B, T]`` per-token loss (0 for an empty row)."""
    w = mask if weights is None else mask * weights
    # A weighted count can be below 1, so clamp at the smallest normal number, not at 1.
    return reduce.masked_sum(per_token, w) / reduce.token_count(w).clamp(
        min=torch.finfo(w.dtype).tiny
    )
