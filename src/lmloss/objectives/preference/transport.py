"""Alignment via Optimal Transport (AOT): distributional dominance through sorted batches.

AOT asks the distribution of chosen log-ratios to dominate the rejected one (first-order
stochastic dominance). In one dimension the optimal transport plan between two empirical
distributions matches them in sorted order, so the loss compares the k-th smallest of one
batch quantity with the k-th smallest of the other. The k-th per-example term therefore
belongs to a *rank*, not to one pair: per-pair options (WPO weights, LCPO) refuse these
objectives (they declare ``batch_coupled=True``).
"""

from __future__ import annotations

import torch

from lmloss.objectives.preference.inputs import Pairs
from lmloss.objectives.preference.margin import check_beta, check_label_noise, soft_label_loss
from lmloss.objectives.preference.metrics import dpo_reward_metrics, mean_loss
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor
PAPER = "Melnyk et al. 2024 (AOT), arXiv:2406.05882"


def _sorted(values: Tensor) -> Tensor:
    return torch.sort(values, dim=0).values


@objective(
    "aot", trl='DPOTrainer(loss_type="aot")', family="preference", paper=PAPER, batch_coupled=True
)
def aot(pairs: Pairs, *, beta: float = 0.1, eps: float = 0.0) -> LossOutput:
    """AOT, paired: sorted policy margins against sorted reference margins.

    With ρ = log π_θ(y_w) − log π_θ(y_l) and ρ_ref likewise, δ_k = sort(ρ)_k − sort(ρ_ref)_k;
    loss_k = ``−(1−ε) log σ(βδ_k) − ε log σ(−βδ_k)``.

    Args:
        eps: label smoothing ε in [0, 0.5).

    References:
        Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport",
        arXiv:2406.05882. TRL 1.16 ``loss_type="aot"`` (``label_smoothing`` = ε).
    """
    eps = check_label_noise(eps)
    policy = pairs.chosen.sequence_logp() - pairs.rejected.sequence_logp()
    reference = pairs.chosen.ref_sequence_logp() - pairs.rejected.ref_sequence_logp()
    delta = _sorted(policy) - _sorted(reference)
    return mean_loss(
        soft_label_loss(check_beta(beta) * delta, 1 - eps), dpo_reward_metrics(pairs, beta)
    )


@objective(
    "aot_unpaired",
    trl='DPOTrainer(loss_type="aot_unpaired")',
    family="preference",
    paper=PAPER,
    batch_coupled=True,
)
def aot_unpaired(pairs: Pairs, *, beta: float = 0.1, eps: float = 0.0) -> LossOutput:
    """AOT, unpaired: sorted chosen log-ratios against sorted rejected log-ratios.

    δ_k = sort(Δ_w)_k − sort(Δ_l)_k with Δ = log π_θ(y)/π_ref(y); the chosen and rejected
    rows need not come from the same prompts (only the batch sizes must agree);
    loss_k = ``−(1−ε) log σ(βδ_k) − ε log σ(−βδ_k)``.

    References:
        Melnyk et al., arXiv:2406.05882. TRL 1.16 ``loss_type="aot_unpaired"``.
    """
    eps = check_label_noise(eps)
    delta = _sorted(pairs.chosen.logratio()) - _sorted(pairs.rejected.logratio())
    return mean_loss(
        soft_label_loss(check_beta(beta) * delta, 1 - eps), dpo_reward_metrics(pairs, beta)
    )
