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
