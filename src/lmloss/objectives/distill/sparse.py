"""Sparse teacher: the teacher known only through its top-k token ids and log-probabilities.

An inference server returns, per position, ``k`` token ids and the teacher's log-probs of
them; the rest of the vocabulary is unknown. Divergences are then taken over a small
support built from those ``k`` entries, with the student's log-probs at the same ids (exact:
the student's full distribution is available). Two treatments of the unseen tail:

* ``"bucket"`` (default, TRL's ``add_tail_bucket=True``): a ``(k+1)``-th entry holds the
  remaining mass ``1 - Σ_k p`` for each model, so both stay proper distributions over
  ``k+1`` outcomes and a student that puts mass outside the teacher's top-k is penalized.
  The covered mass is capped at ``exp(-1e-7)`` (the tail at ≈ 1e-7) so its log stays finite.
* ``"renormalize"``: both distributions restricted to the ``k`` ids and renormalized
  (softmax over the support); the student's mass elsewhere is ignored.

The teacher's log-probs are used as given (the server's temperature); ``temperature``
applies to the student. With ``k = V`` and ``"renormalize"``, the sparse path is the dense
one exactly; with ``"bucket"`` it differs by the ≈ 1e-7 tail.
"""

from __future__ import annotations

import math

import torch

from lmloss import _checks

Tensor = torch.Tensor

TAILS = ("bucket", "renormalize")
MAX_SUPPORT_LOG_MASS = -1e-7
# Log-probabilities may exceed 0 / sum past 1 by rounding on the server: this much is tolerated.
LOGPROB_TOLERANCE = 1e-3


def with_tail_bucket(log_probs: Tensor) -> Tensor:
    """Append ``log(1 - Σ exp(log_probs))`` as a last entry along the last dimension."""
    covered = torch.logsumexp(log_probs, dim=-1, keepdim=True).clamp(max=MAX_SUPPORT_LOG_MASS)
    return torch.cat([log_probs, torch.log(-torch.expm1(covered))], dim=-1)


def sparse_support(
    student_logits_at_ids: Tensor,
    student_lse: Tensor | None,
    teacher_logprobs: Tensor,
    tail: str,
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probs over the sparse support, ``[..., k]`` or ``[..., k+1]``.

    Args:
        student_logits_at_ids: the student's (temperature-scaled) logits at the ids.
        student_lse: the student's full log-sum-exp (needed for ``"bucket"`` only).
        teacher_logprobs: the teacher's log-probs at the same ids.
        tail: ``"bucket"`` or ``"renormalize"``.
    """
    _checks.require_choice("sparse_tail", tail, TAILS)
    if tail == "renormalize":
        return torch.log_softmax(student_logits_at_ids, -1), torch.log_softmax(teacher_logprobs, -1)
    if student_lse is None:
        raise ValueError("the tail bucket needs the student's log-sum-exp over the vocabulary")
    student = student_logits_at_ids - student_lse[..., None]
    return with_tail_bucket(student), with_tail_bucket(teacher_logprobs)


def check_sparse_teacher(
    ids: object, logprobs: object, leading: tuple[int, ...], vocab: int, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Validate top-k ``ids [..., k]`` and ``logprobs [..., k]`` at the trained positions.

    Positions with ``mask == 0`` may hold anything (padding ids, ``-inf``); they are replaced
    by a harmless uniform support so no NaN can reach the loss or its gradient.
    """
    ids = _checks.require_integer("teacher_topk_ids", ids)
    logprobs = _checks.require_floating("teacher_topk_logprobs", logprobs)
    if ids.dim() != len(leading) + 1 or tuple(ids.shape[:-1]) != leading:
        raise ValueError(
            f"teacher_topk_ids must have shape {leading} + (k,) (the student's rows), "
            f"got {tuple(ids.shape)}"
        )
    k = ids.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(
            f"teacher_topk_ids must hold between 1 and V = {vocab} ids per row, got {k}"
        )
    _checks.require_shape("teacher_topk_logprobs", logprobs, ids.shape, "teacher_topk_ids")
    if mask is not None:
        keep = mask[..., None]
        ids = torch.where(keep, ids, torch.arange(k, device=ids.device))
        logprobs = torch.where(keep, logprobs, logprobs.new_full((), -math.log(k)))
    bad = (ids < 0) | (ids >= vocab)
    if bool(bad.any()):
        raise ValueError(
            f"teacher_topk_ids must lie in [0, {vocab}) at trained positions; "
            f"found {int(ids[bad][0])}"
        )
    if k > 1 and bool((ids.sort(-1).values.diff(dim=-1) == 0).any()):
        raise ValueError("teacher_topk_ids must not repeat an id within a position")
    if not bool(torch.isfinite(logprobs).all()) or bool((logprobs > LOGPROB_TOLERANCE).any()):
        raise ValueError(
            "teacher_topk_logprobs must be finite log-probabilities (≤ 0) at trained positions"
        )
    if bool((torch.logsumexp(logprobs.double(), -1) > LOGPROB_TOLERANCE).any()):
        raise ValueError(
            "teacher_topk_logprobs must not sum (as probabilities) to more than 1 in a position"
        )
    return ids, logprobs
