"""The two doors to every objective: :func:`loss` and :func:`fused_loss`.

Both look the objective up in the registry and hand the call to its family's front door,
as the family declares it (:class:`lmloss.objectives.spec.Family`): ``loss`` to the door on
per-token statistics or logits (``preference_loss``, ``policy_loss``, ``likelihood_loss``,
``divergence_loss``, ``classification_loss``), ``fused_loss`` to the door on hidden states
and LM heads, which never builds the ``[tokens, vocab]`` logits. The inputs are the
keywords of that door (``lmloss.spec(name)`` lists them); every fused door takes each
model's head as one :class:`lmloss.Head` (``head=``, ``ref_head=``, ``teacher_head=``) or
as the keywords users know (``weight=``, ``bias=``, ``softcap=``, ``logit_scale=`` ...).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from lmloss import registry
from lmloss.output import LossOutput


def _door(path: str) -> Callable[..., LossOutput]:
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


def loss(name: str, **inputs: Any) -> LossOutput:
    """The objective ``name`` on per-token statistics (or logits), whatever its family.

    Args:
        name: a registry name or alias (``lmloss.list_objectives()``).
        **inputs: its inputs and hyper-parameters, as its family's door takes them
            (``lmloss.spec(name).inputs``, ``lmloss.spec(name).hyper``).

    Example:
        >>> import torch, lmloss
        >>> logps = torch.log(torch.full((2, 3), 0.5))
        >>> mask = torch.ones(2, 3, dtype=torch.bool)
        >>> out = lmloss.loss("dpo", chosen_logps=logps, rejected_logps=logps,
        ...     chosen_mask=mask, rejected_mask=mask, ref_chosen_logps=logps,
        ...     ref_rejected_logps=logps)
        >>> round(out.loss.item(), 4)
        0.6931
        >>> lmloss.loss("ce", logps=logps).loss.item() == -logps.mean().item()
        True
    """
    entry = registry.get(name)
    return _door(registry.get_family(entry.family).plain)(name, **inputs)


def fused_loss(name: str, **inputs: Any) -> LossOutput:
    """The objective ``name`` from hidden states and LM heads, without the logits.

    Args:
        name: a registry name or alias of a family with a fused door (every family but
            ``classify``, whose inputs are already logits).
        **inputs: the keywords of the family's fused door (``fused_likelihood_loss``,
            ``fused_preference_loss``, ``fused_policy_loss``, ``fused_divergence_loss``):
            ``head=Head(weight, bias, softcap, logit_scale)`` for the trained model, and
            ``ref_head=`` (preference, policy) or ``teacher_head=`` (distill) for the other
            model, each in place of that door's keywords for it.

    Example:
        >>> import torch, lmloss
        >>> hidden, weight = torch.randn(2, 3, 8), torch.randn(50, 8)
        >>> targets = torch.tensor([[1, 2, -100], [3, 4, 5]])
        >>> out = lmloss.fused_loss("ce", hidden=hidden, head=lmloss.Head(weight), targets=targets)
        >>> plain = torch.nn.functional.cross_entropy((hidden @ weight.T).flatten(0, 1),
        ...     targets.flatten())
        >>> bool(torch.allclose(out.loss, plain, atol=1e-5))
        True
    """
    entry = registry.get(name)
    family = registry.get_family(entry.family)
    if not family.fused:
        raise ValueError(
            f"{entry.family} objective {entry.name!r} has no fused form (its inputs are "
            f"scores, not a language model's head): use lmloss.loss({name!r}, ...)"
        )
    return _door(family.fused)(name, **inputs)
