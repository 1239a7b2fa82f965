"""A language model's output head as one value, and how the fused doors build it.

:class:`Head` ``(weight, bias, softcap, logit_scale)`` (defined with the engine's other
inputs in :mod:`lmloss.stats.model_input`) is what every fused door takes as ``head=``,
``ref_head=``, ``student_head=`` or ``teacher_head=``; :func:`lmloss.hf.head_of` reads one
from a Hugging Face model. The doors also keep the per-keyword forms users know
(``weight=``, ``bias=``, ``softcap=``, ``logit_scale=``; ``ref_weight=`` ...;
``teacher_weight=`` ...): :func:`door_head` and :func:`policy_and_reference_heads` turn
either form into one :class:`Head` at the top of each door, so the code below a door sees
one value per model.
"""

from __future__ import annotations

from collections.abc import Mapping

from lmloss.objectives.binding import ObjectiveArgumentError
from lmloss.stats.model_input import Head

__all__ = ["Head", "door_head", "policy_and_reference_heads"]

# The preference and policy doors' keywords for the policy's head and the reference's.
_POLICY = ("weight", "bias", "softcap", "logit_scale")
_REFERENCE = ("ref_weight", "ref_bias")


def _given_head(role: str, head: object, keywords: Mapping[str, object]) -> Head | None:
    """``head`` checked, or None when it was not given; never together with its keywords."""
    if head is None:
        return None
    if not isinstance(head, Head):
        raise TypeError(f"{role} must be an lmloss.Head, got {type(head).__name__}")
    both = [name for name, value in keywords.items() if value is not None]
    if both:
        raise ObjectiveArgumentError(f"give {role}= or {'=, '.join(both)}=, not both")
    return head


def door_head(
    role: str, head: object, keywords: Mapping[str, object], *, required: bool = False
) -> Head | None:
    """A model's head from ``{role}=`` or from the door's four keywords for it.

    Args:
        role: the door's name of the Head keyword (``"head"``, ``"teacher_head"``).
        head: its value (a :class:`Head`) or None.
        keywords: the door's names and values for the weight, the bias, the soft cap and
            the logit scale, in that order (e.g. ``{"teacher_weight": w, "teacher_bias": b,
            "teacher_softcap": s, "teacher_logit_scale": x}``); None where not given
            (``logit_scale`` None means 1).
        required: refuse a call that gives neither (the trained model's head).

    Returns:
        The head, or None when neither ``head`` nor a weight was given and the model may be
        absent.
    """
    given = _given_head(role, head, keywords)
    if given is not None:
        return given
    weight, bias, softcap, logit_scale = keywords.values()
    if weight is None:
        if required:
            raise ObjectiveArgumentError(f"missing {role}= (or {next(iter(keywords))}=)")
        return None
    return Head(weight, bias, softcap, 1.0 if logit_scale is None else logit_scale)


def policy_and_reference_heads(
    family: str, heads: tuple[object, object], keywords: dict[str, object]
) -> tuple[Head, Head | None]:
    """The policy's and the reference's heads of a preference or policy door.

    Args:
        family: the door's family (named in errors).
        heads: the door's ``head=`` and ``ref_head=``.
        keywords: the door's other keywords; the per-keyword forms of the heads are taken
            out of them (``weight``, ``bias``, ``softcap``, ``logit_scale``; ``ref_weight``,
            ``ref_bias``), what is left are the objective's inputs and hyper-parameters. The
            reference has the policy's soft cap and logit scale: these doors apply one
            logit transform to both models.

    Returns:
        The policy's head (required) and the reference's, None when neither ``ref_head`` nor
        ``ref_weight`` was given.
    """
    head, ref_head = heads
    policy_given = {name: keywords.pop(name, None) for name in _POLICY}
    ref_given = {name: keywords.pop(name, None) for name in _REFERENCE}
    policy = door_head("head", head, policy_given, required=True)
    given = _given_head("ref_head", ref_head, ref_given)
    if given is not None:
        if given.transform_kwargs() != policy.transform_kwargs():
            raise ValueError(
                f"ref_head's softcap/logit_scale must equal head's: the {family} family applies "
                "one logit transform to both models"
            )
        return policy, given
    ref_weight, ref_bias = ref_given.values()
    if ref_weight is None:
        if ref_bias is not None:
            raise ValueError("ref_bias= needs ref_weight= (or give the reference as ref_head=)")
        return policy, None
    return policy, Head(ref_weight, ref_bias, policy.softcap, policy.logit_scale)
