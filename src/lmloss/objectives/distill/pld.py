"""PLD: Plackett–Luce distillation over the teacher's ranking with the gold label first."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lmloss import _checks
from lmloss.objectives.distill.finish import token_mean_output
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor


def plackett_luce_order(teacher_top_ids: Tensor, labels: Tensor) -> Tensor:
    """The ranking PLD optimizes: the gold label, then the teacher's top ids without it.

    Args:
        teacher_top_ids: ``[..., k]`` the teacher's ``k`` most likely ids, most likely first.
        labels: ``[...]`` gold ids.

    Returns:
        ``[..., k]`` ids: ``labels`` first, then the first ``k - 1`` teacher ids ≠ label.
    """
    is_gold = (teacher_top_ids == labels[..., None]).to(torch.int8)
    # A stable sort on the gold flag moves the gold id (if present) last, keeping the order.
    _, order = torch.sort(is_gold, dim=-1, stable=True)
    others = teacher_top_ids.gather(-1, order)[..., :-1]
    return torch.cat([labels[..., None], others], dim=-1)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - e^x)`` for ``x < 0``, accurate at both ends."""
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


def plackett_luce_terms(student_logits: Tensor, student_lse: Tensor) -> Tensor:
    """``log Σ_{l ≥ j} e^{s_{π_l}} - s_{π_j}`` for each ranked position ``j`` (≥ 0).

    The choice set at position ``j`` is the whole vocabulary minus the ``j - 1`` ids ranked
    before it, so ``Σ_{l ≥ j} e^{s} = e^{s_j} + e^{lse} (1 - Σ_{i ≤ j} p_s(π_i))``; the
    second part is formed in log space with the covered mass capped just below 1.
    """
    log_probs = student_logits - student_lse[..., None]
    cap = -torch.finfo(log_probs.dtype).eps
    covered = torch.logcumsumexp(log_probs, dim=-1).clamp(max=cap)
    log_rest = student_lse[..., None] + _log1mexp(covered)
    return torch.logaddexp(student_logits, log_rest) - student_logits


@objective(
    "pld",
    family="distill",
    paper="Bassam, Zhu, Bian 2025, PLD: A Choice-Theoretic List-Wise Knowledge Distillation, "
    "arXiv:2506.12542",
    stats=("plackett_luce",),
)
def pld(
    terms: Mapping[str, Tensor],
    mask: Tensor | None = None,
    *,
    top_k: int = 8,
    num_items: float | Tensor | None = None,
) -> LossOutput:
    """Plackett–Luce distillation, truncated to the first ``top_k`` ranked positions.

    With π the gold label followed by the teacher's ranking of the other tokens, ``s`` the
    student's logits and ``α_j = p_t(π_j)`` the teacher's confidence in each choice:

        ℓ = Σ_{j=1..k} α_j [ -s_{π_j} + log Σ_{l ≥ j} e^{s_{π_l}} ],

    where the inner sum runs over every token not ranked before ``j`` (the whole vocabulary
    minus ``π_1..π_{j-1}``), so the truncation drops positions, not choices. The first term
    is ``p_t(y)·CE(y)``: PLD subsumes weighted cross-entropy. ``k = V`` is the full
    list-wise loss. Both distributions use the distillation temperature; the teacher's
    weights carry no gradient.

    Args:
        terms: ``plackett_luce_logits [..., k]`` (student logits at π),
            ``plackett_luce_lse [...]`` (student log-sum-exp) and
            ``plackett_luce_teacher_logprobs [..., k]`` (``log α``).
        mask: 1 for trained tokens (leading shape); None trains every token.
        top_k: ``k`` ≥ 1, ranked positions (gold included).
        num_items: divide the token sum by this count instead of the unmasked-token count.

    Returns:
        :class:`~lmloss.output.LossOutput`; metric ``gold_weight``: mean ``p_t(y)``.

    References:
        arXiv:2506.12542 (abstract in ``seeds/``): "teacher-optimal" ranking with the true label
        first, then descending teacher confidence, each choice weighted by the teacher's
        confidence; the top-k truncation for large vocabularies follows the catalog.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer ≥ 1, got {top_k!r}")
    logits = terms["plackett_luce_logits"]
    _checks.require_shape(
        "plackett_luce_teacher_logprobs",
        terms["plackett_luce_teacher_logprobs"],
        logits.shape,
        "logits",
    )
    weights = terms["plackett_luce_teacher_logprobs"].detach().exp()
    per_token = (weights * plackett_luce_terms(logits, terms["plackett_luce_lse"])).sum(-1)
    return token_mean_output(per_token, mask, num_items, {"gold_weight": weights[..., 0]})
