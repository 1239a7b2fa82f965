"""Front door of the classification and ranking family: ``classification_loss(name, ...)``."""

from __future__ import annotations

import inspect

import torch

from lmloss import _checks, registry
from lmloss.output import LossOutput

Tensor = torch.Tensor

FAMILY = "classify"
_REDUCTIONS = ("mean", "sum")


def _extra_inputs(fn) -> set[str]:
    """Optional tensor inputs an objective takes besides logits and labels (e.g. ``mask``)."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    return {p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}


def classification_loss(
    name: str, *, logits: Tensor, labels: Tensor, reduction: str = "mean", **kwargs
) -> LossOutput:
    """A classification or ranking objective on ``[N, C]`` logits (or scores).

    Args:
        name: registry name (``lmloss.list_objectives("classify")``): ``spherical_z``,
            ``ldr_kl``, ``aldr_kl``, ``comp_sum_logits``, ``self_adjusting_dice``,
            ``anyloss``, ``auc``, ``infonce``, ``decoupled_softmax``, ``multi_similarity``,
            ``hl_gauss``, ``ensloss``.
        logits: the scores; their layout depends on the objective (its docstring says).
        labels: class indices, 0/1 labels, multi-hot positives or regression targets.
        reduction: ``"mean"`` (default) or ``"sum"`` of the per-example losses.
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
    entry = registry.get(name, family=FAMILY)
    _checks.require_choice("reduction", reduction, _REDUCTIONS)
    unknown = sorted(set(kwargs) - set(entry.hyper) - _extra_inputs(entry.fn))
    if unknown:
        raise TypeError(
            f"classification objective {entry.name!r} got unknown argument(s) {unknown}; "
            f"it takes {sorted(set(entry.hyper) | _extra_inputs(entry.fn))}"
        )
    per_example = entry(logits, labels, **kwargs)
    loss = per_example.mean() if reduction == "mean" else per_example.sum()
    return LossOutput(loss=loss, per_example=per_example)
