"""Listwise objectives: K scored completions per prompt.

Input: :class:`~.inputs.Lists` — ``logps``/``mask``/``ref_logps`` ``[B, K, T]`` and a
``scores`` ``[B, K]`` tensor of graded labels ψ (higher is better).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmloss import _checks
from lmloss.objectives.preference import margin
from lmloss.objectives.preference.inputs import Lists
from lmloss.objectives.preference.metrics import mean_loss
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor


def lambda_weights(scores: Tensor, labels: Tensor) -> Tensor:
    """LambdaLoss (NDCG) pair weights ``|G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|``, ``[B, K, K]``.

    G = 2^ψ − 1 is the gain of each label, τ_i the 1-based rank of item i when the list is
    sorted by the model ``scores`` (descending) and D(τ) = log2(1 + τ) the discount. The
    ranks come from the current scores, so the weights carry no gradient.
    """
    order = torch.argsort(scores.detach(), dim=-1, descending=True)
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(1, scores.shape[-1] + 1, device=scores.device).expand_as(order)
    )
    inverse_discount = 1.0 / torch.log2(1.0 + ranks.to(scores.dtype))
    gain = torch.pow(2.0, labels) - 1.0
    return (gain[..., :, None] - gain[..., None, :]).abs() * (
        inverse_discount[..., :, None] - inverse_discount[..., None, :]
    ).abs()


@objective("lipo", family="preference", paper="Liu et al. 2024 (LiPO), arXiv:2402.01878")
def lipo(
    batch: Lists,
    *,
    scores: Tensor,
    beta: float = 0.1,
    regularizer: margin.FDivergence = margin.REVERSE_KL,
) -> LossOutput:
    """LiPO-λ: ``Σ_{i,j: ψ_i > ψ_j} λ_ij · log(1 + exp(−(s_i − s_j)))`` per list.

    s_i = β log π_θ(y_i)/π_ref(y_i) (β f′(u_i) with ``divergence=``) and λ_ij the LambdaLoss
    weights of :func:`lambda_weights`. With K = 2 it is DPO scaled by λ_12.

    Args:
        batch: ``[B, K, T]`` completions.
        scores: ``[B, K]`` graded labels ψ (ties contribute no pair).
        beta: β > 0.

    References:
        Liu et al., "LiPO: Listwise Preference Optimization through Learning-to-Rank",
        arXiv:2402.01878 (LiPO-λ); Wang et al. 2018, "The LambdaLoss Framework".
    """
    beta = margin.check_beta(beta)
    labels = _checks.require_floating("scores", scores)
    _checks.require_shape("scores", labels, batch.items.batch_shape, "logps.shape[:2]")
    rewards = beta * margin.completion_score(
        batch.items, regularizer.divergence, regularizer.alpha
    )  # [B, K]
    labels = labels.to(rewards.dtype)
    ordered = (labels[:, :, None] > labels[:, None, :]).to(rewards.dtype)
    gaps = rewards[:, :, None] - rewards[:, None, :]
    weights = lambda_weights(rewards, labels) * ordered
    per_list = (weights * -F.logsigmoid(gaps)).sum(dim=(1, 2))
    correct = ((gaps > 0).to(rewards.dtype) * ordered).sum() / ordered.sum().clamp(min=1)
    metrics = {
        "rewards/mean": rewards.detach().mean(),
        "rewards/accuracies": correct.detach(),
        "logps/mean": batch.items.sequence_logp().detach().mean(),
    }
    return mean_loss(per_list, metrics)
