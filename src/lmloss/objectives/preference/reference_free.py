"""Reference-free pairwise objectives: the policy's own log-probs play the implicit reward.

No reference model is needed; ``ref_*`` inputs are ignored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmloss import _checks
from lmloss.objectives.preference.inputs import Pairs
from lmloss.objectives.preference.margin import check_beta
from lmloss.objectives.preference.metrics import mean_loss, policy_reward_metrics
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor
PREF = "preference"
_LOG_HALF = -math.log(2.0)


@objective(
    "simpo",
    trl='CPOTrainer(loss_type="simpo", cpo_alpha=0)',
    family=PREF,
    paper="Meng et al. 2024 (SimPO), arXiv:2405.14734",
    reference="none",
)
def simpo(pairs: Pairs, *, beta: float = 2.0, gamma: float = 1.0) -> LossOutput:
    """Simple Preference Optimization, reference-free and length-normalized:

    ``−log σ(β/|y_w| · log π_θ(y_w) − β/|y_l| · log π_θ(y_l) − γ)``.

    Args:
        beta: reward scale β > 0 (the paper uses 2.0–2.5).
        gamma: target reward margin γ ≥ 0.

    References:
        Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free Reward",
        arXiv:2405.14734, Eq. 6. TRL 1.16 experimental ``CPOTrainer`` ``loss_type="simpo"``
        with ``cpo_alpha=0`` (``simpo_gamma`` = γ).
    """
    beta = check_beta(beta)
    _checks.require_in_range("gamma", gamma, 0.0, float("inf"))
    chosen, rejected = beta * pairs.chosen.mean_logp(), beta * pairs.rejected.mean_logp()
    per_pair = -F.logsigmoid(chosen - rejected - gamma)
    return mean_loss(per_pair, policy_reward_metrics(pairs, chosen, rejected))


@objective(
    "cpo",
    trl='CPOTrainer(loss_type="sigmoid")',
    family=PREF,
    paper="Xu et al. 2024 (CPO), arXiv:2401.08417",
    reference="none",
)
def cpo(pairs: Pairs, *, beta: float = 0.1, nll_weight: float = 1.0) -> LossOutput:
    """Contrastive Preference Optimization:

    ``−log σ(β log π_θ(y_w) − β log π_θ(y_l)) + η·NLL(y_w)``.

    NLL(y_w) is the token-averaged negative log-likelihood of the chosen completion (TRL
    averages over all chosen tokens of the batch: the same for equal chosen lengths).

    Args:
        nll_weight: η ≥ 0 (TRL's ``cpo_alpha``).

    References:
        Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM
        Performance in Machine Translation", arXiv:2401.08417, Eq. 3 + L_NLL.
        TRL 1.16 experimental ``CPOTrainer`` ``loss_type="sigmoid"``.
    """
    beta = check_beta(beta)
    _checks.require_in_range("nll_weight", nll_weight, 0.0, float("inf"))
    chosen, rejected = beta * pairs.chosen.sequence_logp(), beta * pairs.rejected.sequence_logp()
    per_pair = -F.logsigmoid(chosen - rejected) + nll_weight * pairs.chosen.nll()
    return mean_loss(per_pair, policy_reward_metrics(pairs, chosen, rejected))


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, with the branch at −log 2 that keeps both sides accurate."""
    return torch.where(x < _LOG_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _log_odds(mean_logp: Tensor) -> Tensor:
    """log(p / (1 − p)) of p = exp(mean log-prob); p is kept below 1 so the odds stay finite."""
    mean_logp = mean_logp.clamp(max=-1e-6)
    return mean_logp - log1mexp(mean_logp)


@objective(
    "orpo",
    trl="ORPOTrainer",
    family=PREF,
    paper="Hong et al. 2024 (ORPO), arXiv:2403.07691",
    reference="none",
)
def orpo(pairs: Pairs, *, lam: float = 0.1) -> LossOutput:
    """Odds Ratio Preference Optimization: ``NLL(y_w) − λ log σ(log odds(y_w) − log odds(y_l))``.

    odds(y) = p/(1 − p) with p = exp((1/|y|) Σ_t log π_θ(y_t | ...)), the length-averaged
    likelihood; NLL(y_w) is token-averaged per pair (TRL: over the batch's chosen tokens).

    Args:
        lam: weight λ ≥ 0 of the odds-ratio term (TRL calls it ``beta``).

    References:
        Hong et al., "ORPO: Monolithic Preference Optimization without Reference Model",
        arXiv:2403.07691, Eqs. 4–7. TRL 1.16 experimental ``ORPOTrainer``.
    """
    _checks.require_in_range("lam", lam, 0.0, float("inf"))
    log_odds = _log_odds(pairs.chosen.mean_logp()) - _log_odds(pairs.rejected.mean_logp())
    per_pair = pairs.chosen.nll() - lam * F.logsigmoid(log_odds)
    metrics = policy_reward_metrics(
        pairs, lam * pairs.chosen.mean_logp(), lam * pairs.rejected.mean_logp()
    )
    metrics["log_odds_ratio"] = log_odds.detach().mean()
    return mean_loss(per_pair, metrics)
