"""Cross-entropy: the reference every other likelihood objective reduces to."""

from __future__ import annotations

import torch

from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective(
    "ce",
    trl='SFTTrainer(loss_type="nll")',
    family="likelihood",
    paper="Maximum likelihood (negative log-likelihood)",
    aliases=("nll", "sft"),
)
def ce(logp: Tensor) -> Tensor:
    """Per-token cross-entropy ``ℓ = −log p(y)``.

    Args:
        logp: log-probability of the target token, any shape.

    Returns:
        The per-token loss, shaped like ``logp``.

    References:
        The standard negative log-likelihood of SFT; TRL's ``loss_type="nll"`` and Hugging
        Face's causal-LM loss compute the same per-token term.
    """
    return -logp
