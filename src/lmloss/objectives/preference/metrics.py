"""Logging metrics shared by the preference objectives, and the LossOutput they return.

Keys follow TRL's names so logs compare side by side: ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
``logps/rejected`` (batch means, detached).
"""

from __future__ import annotations

import torch

from lmloss.objectives.preference.inputs import Pairs
from lmloss.output import LossOutput

Tensor = torch.Tensor


def reward_metrics(
    chosen_rewards: Tensor, rejected_rewards: Tensor, chosen_logps: Tensor, rejected_logps: Tensor
) -> dict[str, Tensor]:
    """Batch means of the implicit rewards, their margin and accuracy, and the log-probs."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


def dpo_reward_metrics(pairs: Pairs, beta: float) -> dict[str, Tensor]:
    """Metrics with DPO's implicit reward β·log(π_θ(y)/π_ref(y))."""
    return reward_metrics(
        beta * pairs.chosen.logratio(),
        beta * pairs.rejected.logratio(),
        pairs.chosen.sequence_logp(),
        pairs.rejected.sequence_logp(),
    )


def policy_reward_metrics(pairs: Pairs, chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    """Metrics for reference-free objectives, whose reward is a scaled policy log-prob."""
    return reward_metrics(
        chosen, rejected, pairs.chosen.sequence_logp(), pairs.rejected.sequence_logp()
    )


def mean_loss(per_example: Tensor, metrics: dict[str, Tensor]) -> LossOutput:
    """The objective's output: the batch mean of ``per_example`` as the loss."""
    return LossOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)
