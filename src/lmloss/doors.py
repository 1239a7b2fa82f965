"""The two doors to every objective: :func:`loss` and :func:`fused_loss`.

Both look the objective up in the registry and hand the call to its family's front door,
as the family declares it (:class:`lmloss.objectives.spec.Family`): ``loss`` to the door on
per-token statistics or logits (``preference_loss``, ``policy_loss``, ``likelihood_loss``,
``divergence_loss``, ``classification_loss``), ``fused_loss`` to the door on hidden states
and LM heads, which never builds the ``[tokens, vocab]`` logits. The inputs are the
keywords of that door (``lmloss.spec(name)`` lists them); on the fused door a
:class:`lmloss.Head` may replace each head's keywords.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from lmloss import registry
from lmloss.head import Head
from lmloss.objectives.binding import ObjectiveArgumentError
from lmloss.objectives.spec import Family
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


def _expand_heads(family: Family, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with each :class:`Head` role (``head=``, ``ref_head=``, ...) replaced by the
    keywords of the family's fused door; giving a head and its keywords both is an error."""
    out = dict(inputs)
    transform = None
    for role, (param_prefix, transform_prefix) in family.heads:
        head = out.pop(role, None)
        if head is None:
            continue
        if not isinstance(head, Head):
            raise TypeError(f"{role} must be an lmloss.Head, got {type(head).__name__}")
        keywords = {f"{param_prefix}weight": head.weight, f"{param_prefix}bias": head.bias}
        if transform_prefix is None:  # the role shares the first head's transform
            if transform is not None and head.transform_kwargs() != transform:
                raise ValueError(
                    f"{role}'s softcap/logit_scale must equal head's: the {family.name} "
                    "family applies one logit transform to both models"
                )
        else:
            keywords |= {f"{transform_prefix}{k}": v for k, v in head.transform_kwargs().items()}
            transform = transform or head.transform_kwargs()
        both = sorted(k for k in keywords if k in out)
        if both:
            raise ObjectiveArgumentError(f"give {role}= or {', '.join(both)}=, not both")
        out |= keywords
    return out


def fused_loss(name: str, **inputs: Any) -> LossOutput:
    """The objective ``name`` from hidden states and LM heads, without the logits.

    Args:
        name: a registry name or alias of a family with a fused door (every family but
            ``classify``, whose inputs are already logits).
        **inputs: the keywords of the family's fused door (``fused_likelihood_loss``,
            ``fused_preference_loss``, ``fused_policy_loss``, ``fused_divergence_loss``);
            ``head=Head(weight, bias, softcap, logit_scale)`` may replace ``weight``,
            ``bias``, ``softcap`` and ``logit_scale`` (for distillation: ``student_weight``
            ...), and ``ref_head=`` (preference, policy) or ``teacher_head=`` (distill)
            the other model's.

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
    return _door(family.fused)(name, **_expand_heads(family, inputs))
