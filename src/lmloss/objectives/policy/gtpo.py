"""GTPO: protect conflict tokens, drop high-entropy completions (Simoni et al. 2025).

Sources: the abstract (arXiv:2508.03772) and the authors' public code
(github.com/winstonsmith1897/GTPO, ``gtpo/gtpo_training.py``, the trainer its
``config.yaml`` selects; defaults from that ``config.yaml``: ``ent_threshold 0.7``,
``ent_scale 0.1``, ``w_raw 2.0``, ``num_generations 8``). The paper's equations could not be
read here; the differences to the authors' code are listed in :func:`gtpo`.
"""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.policy.rollouts import (
    DEFAULT_OPTIONS,
    PolicyOptions,
    Rollouts,
    check_clip,
    choose,
    finish,
    token_log_ratio,
)
from lmloss.objectives.policy.surrogates import clip_loss
from lmloss.objectives.reduce import masked_mean
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor


def conflict_tokens(
    token_ids: Tensor, valid: Tensor, seq_advantages: Tensor, group_size: int
) -> Tensor:
    """Bool ``[B, T]``: the token at (i, t) also appears at position t in a completion of
    the same group with a positive advantage *and* in one with a negative advantage."""
    n, t = token_ids.shape[0] // group_size, token_ids.shape[1]
    ids = token_ids.reshape(n, group_size, t)
    ok = valid.reshape(n, group_size, t)
    adv = seq_advantages.reshape(n, group_size)
    # same[g, i, j, t]: completion j holds completion i's token at position t
    same = (ids[:, :, None, :] == ids[:, None, :, :]) & ok[:, None, :, :]
    in_positive = (same & (adv > 0)[:, None, :, None]).any(dim=2)
    in_negative = (same & (adv < 0)[:, None, :, None]).any(dim=2)
    return (in_positive & in_negative & ok).reshape(-1, t)


@objective(
    "gtpo",
    family="policy",
    paper="Simoni et al. 2025, arXiv:2508.03772",
    stats=("logp", "entropy"),
    batch_coupled=True,  # a token's conflicts are read from the other completions of its group
)
def gtpo(
    b: Rollouts,
    *,
    token_ids: Tensor,
    group_size: int | None = None,
    positive_weight: float = 2.0,
    entropy_threshold: float = 0.7,
    entropy_scale: float = 0.1,
    group_sum: bool = False,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """GTPO: group-relative policy gradient with conflict-token protection and entropy filter.

    With sequence advantages ``A_i`` (GRPO's, groups of ``group_size`` consecutive rows),
    a token is in *conflict* when the same token id sits at the same position in a
    positively and in a negatively rewarded completion of the group (:func:`conflict_tokens`).
    Its weight is ``w_it = positive_weight`` if ``A_i > 0``, ``0`` if ``A_i < 0`` (negative
    updates skipped); other tokens have ``w_it = 1``. With ``H̄_i`` the completion's mean token
    entropy (no gradient), completions with ``H̄_i > entropy_threshold`` are dropped and the
    others get ``Â_i = A_i − entropy_scale · H̄_i``. The loss is the clipped surrogate on the
    token advantages ``w_it Â_i`` (on-policy, as the authors train, this is
    ``−w_it Â_i log π_θ`` in gradient), no KL (β = 0), GRPO's per-sequence token mean.

    Differences to the authors' code, deliberately: conflicts are any matching positions (the
    code keeps only the leading run of conflict positions counted from the start and the
    trailing run counted from each completion's end); each completion's loss is not divided
    by its number of conflict tokens (the code does so; the abstract does not); conflict
    signs use the advantages before the entropy shift (as the code); the completions of a
    group are averaged, as every GRPO-family objective here, where the authors sum them
    (``group_sum=True`` gives the authors' form: the loss times ``group_size``).

    Args:
        logps, mask, old_logps, ref_logps: as :func:`~.surrogates.clipped_surrogate`.
        advantages: ``[B]`` sequence advantages (required per sequence: signs define conflicts).
        entropy: ``[B, T]`` token entropies (required; used without gradient).
        token_ids: ``[B, T]`` sampled token ids (required).
        group_size: completions per prompt (required; the paper uses 8).
        positive_weight: weight of conflict tokens in positive completions.
        entropy_threshold: drop completions with mean entropy above it (nats).
        entropy_scale: advantage shift per nat of mean entropy.
        group_sum: sum over a group's completions instead of averaging (the authors').

    Returns:
        ``LossOutput``; extra metrics ``conflict_frac`` and ``filtered_frac``.
    """
    if b.entropy is None:
        raise ValueError("gtpo needs entropy= ([B, T] token entropies)")
    if group_size is None or isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"gtpo needs group_size= (an int), got {group_size!r}")
    _checks.require_positive("group_size", group_size)
    _checks.require_in_range("positive_weight", positive_weight, 0.0, float("inf"))
    _checks.require_in_range("entropy_threshold", entropy_threshold, 0.0, float("inf"))
    _checks.require_in_range("entropy_scale", entropy_scale, 0.0, float("inf"))
    check_clip(eps_low, eps_high)
    if b.seq_advantages is None:
        raise ValueError("gtpo needs sequence advantages [B]; got per-token advantages")
    rows = b.logps.shape[0]
    if rows % group_size:
        raise ValueError(f"batch of {rows} completions does not divide into groups of {group_size}")
    token_ids = _checks.require_integer("token_ids", token_ids)
    _checks.require_shape("token_ids", token_ids, b.logps.shape, "logps")

    with torch.no_grad():
        conflict = conflict_tokens(token_ids, b.valid, b.seq_advantages, group_size)
        positive = (b.seq_advantages > 0)[:, None]
        protected = choose(positive, positive_weight, 0.0, b.logps)
        weight = torch.where(conflict, protected, torch.ones_like(protected))
        mean_entropy = masked_mean(b.entropy.detach(), b.mask)
        kept = mean_entropy <= entropy_threshold
        shifted = torch.where(kept, b.seq_advantages - entropy_scale * mean_entropy, 0.0)
        token_advantages = weight * shifted[:, None]

    ratio = torch.exp(token_log_ratio(b))
    per_token, low, high = clip_loss(ratio, token_advantages, eps_low, eps_high)
    out = finish(
        per_token,
        b,
        options,
        ratio=ratio,
        clipped_low=low,
        clipped_high=high,
        extra_metrics={
            "conflict_frac": conflict.sum() / b.valid.sum().clamp(min=1),
            "filtered_frac": (~kept).to(b.logps.dtype).mean(),
        },
    )
    if not group_sum:
        return out
    return LossOutput(out.loss * group_size, out.per_example * group_size, out.metrics)
