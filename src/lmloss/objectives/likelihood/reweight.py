"""Dynamic loss-based sample reweighting: a per-sequence factor computed from the losses.

Sow et al. 2025 (arXiv:2502.06733) reweight the samples of a batch online from their
current losses ``l_i`` (the sequence-mean cross-entropy):

1. normalize to ``[−δ, δ]``: ``h_i = δ·(2 l_i − l_max − l_min)/(l_max − l_min)``;
2. apply a strategy ``f``: LinUpper ``min(h + δ, δ)`` (down-weights low-loss samples,
   caps the weight of high-loss ones), Quadratic ``1 − h²/δ²`` (favours medium losses),
   Extremes ``|h|`` (favours both ends);
3. ``ω = softmax(f / r)`` over the batch (``r``: the temperature, their ``kl_reg``).

The loss is ``B · Σ_i ω_i · (n_i/Σn) · l_i``; so the factor applied to sequence ``i``'s
tokens is ``B·ω_i`` (mean 1 — uniform ω is the unweighted loss). Weights carry no
gradient. Source: the authors' code, sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025,
``src/trainer.py`` (``h_func``, ``f_func_*``, ``g_func`` and the training step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmloss import _checks
from lmloss.objectives.reduce import sequence_means, token_count

Tensor = torch.Tensor


def _linupper(h: Tensor, delta: float) -> Tensor:
    return torch.clamp(h + delta, max=delta)


def _quadratic(h: Tensor, delta: float) -> Tensor:
    return 1.0 - h.square() / delta**2


def _extremes(h: Tensor, delta: float) -> Tensor:
    return h.abs()


STRATEGIES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "linupper": _linupper,
    "quadratic": _quadratic,
    "extremes": _extremes,
}

# The authors' guard on the loss range.
_MIN_RANGE = 1e-6


def normalize_losses(losses: Tensor, delta: float = 1.0) -> Tensor:
    """Map the batch's losses affinely onto ``[−δ, δ]`` (all 0 when they are equal)."""
    low, high = losses.min(), losses.max()
    return delta * (2.0 * losses - high - low) / (high - low).clamp(min=_MIN_RANGE)


def sample_weights(
    losses: Tensor,
    strategy: str,
    *,
    valid: Tensor | None = None,
    temperature: float = 1.0,
    delta: float = 1.0,
) -> Tensor:
    """Per-sequence factors ``B·ω`` (mean 1 over the valid sequences, 0 elsewhere).

    Args:
        losses: ``[B]`` per-sequence losses (detached inside).
        strategy: ``"linupper"``, ``"quadratic"`` or ``"extremes"``.
        valid: ``[B]`` bool, sequences that have trained tokens (default: all).
        temperature: r > 0; large r → uniform weights.
        delta: δ > 0, the half-width of the normalized range.

    Returns:
        ``[B]`` weights without gradient.
    """
    _checks.require_choice("reweight strategy", strategy, STRATEGIES)
    _checks.require_positive("reweight_temperature", temperature)
    _checks.require_positive("delta", delta)
    losses = losses.detach()
    valid = torch.ones_like(losses, dtype=torch.bool) if valid is None else valid
    out = torch.zeros_like(losses)
    if not bool(valid.any()):
        return out
    scores = STRATEGIES[strategy](normalize_losses(losses[valid], delta), delta)
    out[valid] = torch.softmax(scores / temperature, dim=0) * valid.sum()
    return out


def sequence_factors(
    per_token: Tensor,
    mask: Tensor,
    weights: Tensor | None,
    strategy: str,
    *,
    temperature: float = 1.0,
) -> Tensor:
    """``[B]`` factors from a ``[B, T]`` per-token loss: its sequence means, then the strategy."""
    if per_token.dim() != 2:
        raise ValueError(
            f"reweight needs [B, T] tokens (sequences), got shape {tuple(per_token.shape)}"
        )
    losses = sequence_means(per_token.detach(), mask, weights)
    return sample_weights(losses, strategy, valid=token_count(mask) > 0, temperature=temperature)
