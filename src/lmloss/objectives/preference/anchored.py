"""Pairwise objectives that score each completion's own implicit reward, not only the margin.

With r_w = β log π_θ(y_w)/π_ref(y_w) and r_l likewise, these losses pull each reward
towards an absolute anchor (0 or ±1/(2β)) instead of only ordering the two. Because a
reward on its own keeps the β·log Z(x) term that the f-DPO reparameterization leaves, the
f-divergence plug-in does not apply to them (the same restriction TRL makes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmloss.objectives.preference.inputs import Pairs
from lmloss.objectives.preference.margin import check_beta
from lmloss.objectives.preference.metrics import dpo_reward_metrics, mean_loss
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor
PREF = "preference"


def _rewards(pairs: Pairs, beta: float) -> tuple[Tensor, Tensor]:
    beta = check_beta(beta)
    return beta * pairs.chosen.logratio(), beta * pairs.rejected.logratio()


@objective(
    "nca",
    trl='DPOTrainer(loss_type="nca_pair")',
    family=PREF,
    paper="Chen et al. 2024 (NCA), arXiv:2402.05369",
)
def nca(pairs: Pairs, *, beta: float = 0.1) -> LossOutput:
    """Noise Contrastive Alignment, pairwise: ``−log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l)``.

    References:
        Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards",
        arXiv:2402.05369 (NCA with K = 2). TRL 1.16 ``loss_type="nca_pair"``.
    """
    chosen, rejected = _rewards(pairs, beta)
    per_pair = -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "bco",
    trl='DPOTrainer(loss_type="bco_pair")',
    family=PREF,
    paper="Jung et al. 2024 (BCO), arXiv:2404.04656",
)
def bco(pairs: Pairs, *, beta: float = 0.1) -> LossOutput:
    """Binary Classifier Optimization on pairs: ``−log σ(r_w) − log σ(−r_l)``.

    Chosen completions are the positive class, rejected ones the negative class, with the
    implicit reward as the classifier logit (the pair form, without BCO's running reward
    shift δ).

    References:
        Jung et al., "Binary Classifier Optimization for Large Language Model Alignment",
        arXiv:2404.04656. TRL 1.16 ``loss_type="bco_pair"``.
    """
    chosen, rejected = _rewards(pairs, beta)
    per_pair = -F.logsigmoid(chosen) - F.logsigmoid(-rejected)
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "apo_zero",
    trl='DPOTrainer(loss_type="apo_zero")',
    family=PREF,
    paper="D'Oosterlinck et al. 2024 (APO), arXiv:2408.06266",
)
def apo_zero(pairs: Pairs, *, beta: float = 0.1) -> LossOutput:
    """Anchored Preference Optimization, zero anchor: ``(1 − σ(r_w)) + σ(r_l)``.

    Raises the chosen likelihood and lowers the rejected one; use when the chosen outputs
    are better than the model's own.

    References:
        D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions",
        arXiv:2408.06266, Eq. 7. TRL 1.16 ``loss_type="apo_zero"``.
    """
    chosen, rejected = _rewards(pairs, beta)
    per_pair = torch.sigmoid(-chosen) + torch.sigmoid(rejected)
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "apo_down",
    trl='DPOTrainer(loss_type="apo_down")',
    family=PREF,
    paper="D'Oosterlinck et al. 2024 (APO), arXiv:2408.06266",
)
def apo_down(pairs: Pairs, *, beta: float = 0.1) -> LossOutput:
    """Anchored Preference Optimization, down anchor: ``σ(r_w) + (1 − σ(r_w − r_l))``.

    Lowers both likelihoods, the rejected one more; use when the chosen outputs are worse
    than the model's own.

    References:
        D'Oosterlinck et al., arXiv:2408.06266, Eq. 8. TRL 1.16 ``loss_type="apo_down"``.
    """
    chosen, rejected = _rewards(pairs, beta)
    per_pair = torch.sigmoid(chosen) + torch.sigmoid(rejected - chosen)
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "sppo_hard",
    trl='DPOTrainer(loss_type="sppo_hard")',
    family=PREF,
    paper="Wu et al. 2024 (SPPO), arXiv:2405.00675",
)
def sppo_hard(pairs: Pairs, *, beta: float = 0.1, average_sides: bool = False) -> LossOutput:
    """Self-Play Preference Optimization with hard win probabilities (1 for y_w, 0 for y_l):

    ``(Δ_w − 1/(2β))² + (Δ_l + 1/(2β))²`` with Δ the log-ratio.

    Differs from the authors' code: ``uclaml/SPPO`` averages the two squared terms, a loss
    half of this one (same minimizer, half the gradient); this sum is TRL's
    ``loss_type="sppo_hard"``. ``average_sides=True`` gives the authors' form.

    References:
        Wu et al., "Self-Play Preference Optimization for Language Model Alignment",
        arXiv:2405.00675, Eq. 4.7 with P(y_w ≻ π) = 1, P(y_l ≻ π) = 0.
        TRL 1.16 ``loss_type="sppo_hard"``.
    """
    half_inverse = 0.5 / check_beta(beta)
    per_pair = (pairs.chosen.logratio() - half_inverse) ** 2 + (
        pairs.rejected.logratio() + half_inverse
    ) ** 2
    if average_sides:
        per_pair = per_pair / 2
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))
