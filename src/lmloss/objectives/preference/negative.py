"""Negative-only objectives: learn from dispreferred completions without preferred ones.

Input: :class:`~.inputs.Negatives` — the negatives ``logps``/``mask``/``ref_logps``
``[B, T]`` and, for D2O, ``K`` samples per prompt from the reference policy
``sample_logps``/``sample_mask``/``ref_sample_logps`` ``[B, K, T]``.
"""

from __future__ import annotations

import torch.nn.functional as F

from lmloss import _checks
from lmloss.objectives.preference.inputs import Negatives
from lmloss.objectives.preference.margin import check_beta
from lmloss.objectives.preference.metrics import mean_loss, reward_metrics
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

PREF = "preference"


@objective("npo", family=PREF, paper="Zhang et al. 2024 (NPO), arXiv:2404.05868")
def npo(batch: Negatives, *, beta: float = 0.1) -> LossOutput:
    """Negative Preference Optimization (unlearning): ``(2/β) log(1 + (π_θ(y)/π_ref(y))^β)``.

    Computed as ``(2/β) softplus(β Δ)`` with Δ = log π_θ(y)/π_ref(y) on the forget data.
    As β → 0 it tends to gradient ascent on log π_θ(y) (up to a constant).

    References:
        Zhang et al., "Negative Preference Optimization: From Catastrophic Collapse to
        Effective Unlearning", arXiv:2404.05868.
    """
    beta = check_beta(beta)
    logratio = batch.negatives.logratio()
    per_example = (2.0 / beta) * F.softplus(beta * logratio)
    metrics = {
        "rewards/rejected": (beta * logratio).detach().mean(),
        "logps/rejected": batch.negatives.sequence_logp().detach().mean(),
    }
    return mean_loss(per_example, metrics)


@objective("d2o", family=PREF, paper="Duan et al. 2024 (D2O), arXiv:2403.03419", samples=True)
def d2o(batch: Negatives, *, beta: float = 0.1, alpha: float = 0.1) -> LossOutput:
    """Distributional Dispreference Optimization, negatives only:

    ``−log σ((β/K) Σ_i log π_θ(y_i)/π_ref(y_i) − α log π_θ(y_l)/π_ref(y_l))``

    with y_l the human-labelled negative and y_1..y_K samples drawn from the reference
    policy for the same prompt (the paper's self-generated responses). The paper allows a
    different reference for the samples and for the negative; pass whichever reference
    log-probs you use as ``ref_sample_logps`` and ``ref_logps``.

    Args:
        batch: negatives ``[B, T]`` and samples ``[B, K, T]``.
        beta: β > 0, scale of the sampled responses' log-ratios.
        alpha: α > 0, scale of the negative's log-ratio.

    References:
        Duan et al., "Negating Negatives: Alignment without Human Positive Samples via
        Distributional Dispreference Optimization", arXiv:2403.03419, the D2O loss.
    """
    beta = check_beta(beta)
    alpha = _checks.require_positive("alpha", alpha)
    samples = batch.require_samples().logratio()  # [B, K]
    negative = batch.negatives.logratio()
    sample_reward = beta * samples.mean(dim=1)
    negative_reward = alpha * negative
    per_example = -F.logsigmoid(sample_reward - negative_reward)
    metrics = reward_metrics(
        sample_reward,
        negative_reward,
        batch.samples.sequence_logp().mean(dim=1),
        batch.negatives.sequence_logp(),
    )
    return mean_loss(per_example, metrics)
