"""Front door of the classification and ranking family: ``classification_loss(name, ...)``."""

from __future__ import annotations

import torch

from lmloss import _checks, registry
from lmloss.objectives.binding import bind, renamed
from lmloss.output import LossOutput

Tensor = torch.Tensor

FAMILY = "classify"
_AGGREGATIONS = ("mean", "sum")


def classification_loss(
    name: str,
    *,
    logits: Tensor,
    labels: Tensor,
    aggregation: str | None = None,
    **kwargs,
) -> LossOutput:
    """A classification or ranking objective on ``[N, C]`` logits (or scores).

    Args:
        name: registry name (``lmloss.list_objectives("classify")``): ``spherical_z``,
            ``ldr_kl``, ``aldr_kl``, ``comp_sum_logits``, ``self_adjusting_dice``,
            ``anyloss``, ``auc``, ``infonce``, ``decoupled_softmax``, ``multi_similarity``,
            ``hl_gauss``, ``ensloss``.
        logits: the scores; their layout depends on the objective (its docstring says).
        labels: class indices, 0/1 labels, multi-hot positives or regression targets.
        aggregation: ``"mean"`` (default) or ``"sum"`` of the per-example losses (formerly
            ``reduction=``, deprecated).
        **kwargs: the objective's hyper-parameters and optional inputs (``mask``).

    Returns:
        :class:`LossOutput` with the reduced loss and the per-example losses (a 0-d tensor
        for objectives defined on the whole batch, such as ``anyloss``).

    Example:
        >>> logits, labels = torch.randn(4, 5), torch.tensor([0, 3, 1, 4])
        >>> out = classification_loss("ldr_kl", logits=logits, labels=labels, margin=0.0)
        >>> out.per_example.shape
        torch.Size([4])
    """
    aggregation = renamed(kwargs, "reduction", "aggregation", aggregation, "classification_loss")
    aggregation = aggregation or "mean"
    entry = registry.get(name, family=FAMILY)
    _checks.require_choice("aggregation (reduction)", aggregation, _AGGREGATIONS)
    inputs, hyper = bind(entry.spec, kwargs)
    per_example = entry(logits, labels, **inputs, **hyper)
    loss = per_example.mean() if aggregation == "mean" else per_example.sum()
    return LossOutput(loss=loss, per_example=per_example)


# objectives of the classify family that score preference pairs (``[N, 2]`` logits, the
# preferred column as label): what reward-model trainers accept
PAIRWISE_SCORE_OBJECTIVES = ("bradley_terry",)


def reward_objective(name: str, hyper: dict | None = None) -> registry.Entry:
    """The pairwise reward-model objective ``name``; with ``hyper``, its keywords are checked
    too (an unknown one raises :class:`~lmloss.ObjectiveArgumentError`)."""
    entry = registry.get(name, family=FAMILY)
    if entry.name not in PAIRWISE_SCORE_OBJECTIVES:
        raise ValueError(
            f"objective {entry.name!r} does not score preference pairs; reward models train "
            f"with {', '.join(PAIRWISE_SCORE_OBJECTIVES)}"
        )
    if hyper is not None:
        bind(entry.spec, hyper, require=())
    return entry


def reward_model_loss(
    name: str,
    *,
    chosen: Tensor,
    rejected: Tensor,
    margin: Tensor | None = None,
    **hyper,
) -> LossOutput:
    """A pairwise reward-model objective on the scores ``[N]`` of chosen and rejected
    completions, with the metrics reward-model training logs.

    Args:
        name: an objective of :data:`PAIRWISE_SCORE_OBJECTIVES` (``bradley_terry``).
        chosen, rejected: ``[N]`` scalar scores of the preferred and the other completion.
        margin: optional ``[N]`` required gap (a ``margin`` data column).
        **hyper: the objective's hyper-parameters (``center_rewards_coefficient``).

    Returns:
        :class:`LossOutput` (mean over pairs) with metrics ``accuracy`` (the fraction of
        pairs scored in the right order, ties counting as wrong), ``margin`` (mean
        ``r_chosen − r_rejected``) and the mean scores ``rewards/chosen``, ``rewards/rejected``.

    Example:
        >>> out = reward_model_loss("bradley_terry", chosen=torch.tensor([2.0, 0.0]),
        ...                         rejected=torch.tensor([1.0, 1.0]))
        >>> float(out.metrics["accuracy"]), float(out.metrics["margin"])
        (0.5, 0.0)
    """
    entry = reward_objective(name)
    chosen = _checks.require_floating("chosen", chosen)
    _checks.require_ndim("chosen", chosen, (1,))
    _checks.require_shape("rejected", rejected, chosen.shape, "chosen")
    logits = torch.stack([chosen, rejected], dim=1)
    labels = torch.zeros(len(chosen), dtype=torch.long, device=chosen.device)
    optional = {} if margin is None else {"margin": margin.to(logits.dtype)}
    out = classification_loss(entry.name, logits=logits, labels=labels, **optional, **hyper)
    with torch.no_grad():
        gap = (chosen - rejected).float()
        out.metrics = {
            "accuracy": (gap > 0).float().mean(),
            "margin": gap.mean(),
            "rewards/chosen": chosen.float().mean(),
            "rewards/rejected": rejected.float().mean(),
        }
    return out
