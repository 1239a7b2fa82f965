"""Unpaired objectives: each completion is labelled desirable or undesirable on its own.

Input: :class:`~.inputs.Unpaired` — ``logps``/``mask``/``ref_logps`` ``[B, T]`` plus a
``desirable`` ``[B]`` bool label per completion, and for KTO the KL samples ``kl_logps``/
``kl_mask``/``ref_kl_logps`` (completions paired with the wrong prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmloss import _checks
from lmloss.objectives.preference.inputs import Unpaired
from lmloss.objectives.preference.margin import check_beta
from lmloss.objectives.preference.metrics import mean_loss
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor
PREF = "preference"


def _labels(desirable: object, size: int) -> Tensor:
    desirable = _checks.require_tensor("desirable", desirable)
    _checks.require_shape("desirable", desirable, (size,), "the number of completions")
    if desirable.dtype != torch.bool:
        if bool(((desirable != 0) & (desirable != 1)).any()):
            raise ValueError("desirable must hold only 0 and 1 (or be bool)")
        desirable = desirable != 0
    return desirable


@dataclass(frozen=True)
class LabelWeights:
    """λ_D and λ_U ≥ 0, the weights of desirable and undesirable completions; the registry
    flattens them into the hyper-parameters ``desirable_weight`` and ``undesirable_weight``."""

    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("desirable_weight", "undesirable_weight"):
            _checks.require_in_range(name, getattr(self, name), 0.0, float("inf"))

    def of(self, desirable: Tensor, if_desirable: Tensor, if_not: Tensor) -> Tensor:
        """λ_D · ``if_desirable`` where desirable, else λ_U · ``if_not``."""
        return torch.where(
            desirable, self.desirable_weight * if_desirable, self.undesirable_weight * if_not
        )


EQUAL_WEIGHTS = LabelWeights()


def _split_metrics(rewards: Tensor, logps: Tensor, desirable: Tensor) -> dict[str, Tensor]:
    """TRL-style metrics: means over the desirable ("chosen") and undesirable completions."""

    def mean(values: Tensor, where: Tensor) -> Tensor:
        where = where.to(values.dtype)
        return ((values * where).sum() / where.sum().clamp(min=1)).detach()

    chosen, rejected = mean(rewards, desirable), mean(rewards, ~desirable)
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "logps/chosen": mean(logps, desirable),
        "logps/rejected": mean(logps, ~desirable),
    }


@objective(
    "kto",
    trl='KTOTrainer(loss_type="kto")',
    family=PREF,
    paper="Ethayarajh et al. 2024 (KTO), arXiv:2402.01306",
)
def kto(
    batch: Unpaired,
    *,
    desirable: Tensor,
    beta: float = 0.1,
    weights: LabelWeights = EQUAL_WEIGHTS,
) -> LossOutput:
    """Kahneman–Tversky Optimization with the batch KL reference point.

    With Δ(y) = log π_θ(y)/π_ref(y) and z0 = max(0, mean over the KL samples of Δ)
    (detached: an estimate of KL(π_θ ‖ π_ref), as TRL computes it):

    * desirable y: ``λ_D (1 − σ(β(Δ(y) − z0)))``
    * undesirable y: ``λ_U (1 − σ(β(z0 − Δ(y))))``

    Args:
        batch: completions with ``desirable`` labels and the KL samples ``kl_*``.
        desirable: ``[B]`` bool, True for desirable completions.
        beta: β > 0.
        desirable_weight, undesirable_weight: λ_D, λ_U ≥ 0 (:class:`LabelWeights`).

    References:
        Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization",
        arXiv:2402.01306, Eq. 7. TRL 1.16 ``KTOTrainer`` ``loss_type="kto"``.
    """
    beta = check_beta(beta)
    desirable = _labels(desirable, batch.size)
    if batch.reference_point is None:
        raise ValueError(
            "kto needs KL samples for its reference point: pass kl_logps=, kl_mask= and "
            "ref_kl_logps= (completions paired with other prompts)"
        )
    z0 = batch.reference_point.logratio().mean().detach().clamp(min=0)
    logratio = batch.completions.logratio()
    good = torch.sigmoid(-beta * (logratio - z0))
    bad = torch.sigmoid(-beta * (z0 - logratio))
    per_example = weights.of(desirable, good, bad)
    metrics = _split_metrics(beta * logratio, batch.completions.sequence_logp(), desirable)
    metrics["kl"] = z0
    return mean_loss(per_example, metrics)


@objective(
    "apo_zero_unpaired",
    trl='KTOTrainer(loss_type="apo_zero_unpaired")',
    family=PREF,
    paper="D'Oosterlinck et al. 2024 (APO), arXiv:2408.06266",
)
def apo_zero_unpaired(
    batch: Unpaired,
    *,
    desirable: Tensor,
    beta: float = 0.1,
    weights: LabelWeights = EQUAL_WEIGHTS,
) -> LossOutput:
    """Anchored Preference Optimization (zero anchor) on unpaired data.

    desirable y: ``λ_D (1 − σ(βΔ(y)))``; undesirable y: ``λ_U σ(βΔ(y))``.

    References:
        D'Oosterlinck et al., arXiv:2408.06266, Eq. 7 split per completion.
        TRL 1.16 ``KTOTrainer`` ``loss_type="apo_zero_unpaired"``.
    """
    beta = check_beta(beta)
    desirable = _labels(desirable, batch.size)
    rewards = beta * batch.completions.logratio()
    per_example = weights.of(desirable, torch.sigmoid(-rewards), torch.sigmoid(rewards))
    metrics = _split_metrics(rewards, batch.completions.sequence_logp(), desirable)
    return mean_loss(per_example, metrics)
