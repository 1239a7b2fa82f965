"""Advantage estimators (not losses) and DAPO's dynamic-sampling group filter.

Rewards come in groups: ``group_size`` consecutive rows are completions of one prompt
(TRL's layout). Every estimator returns detached advantages, ``[B]`` for sequence-level
estimators and ``[B, T]`` (zero at masked tokens) for token-level ones, and is found by
name in :data:`ADVANTAGE_ESTIMATORS` (see :func:`estimate_advantages`).

Standard-deviation convention (GRPO): ``A = (r − mean_g) / (std_g + eps)`` with the
unbiased (Bessel) group std and ``eps = 1e-4``, as TRL 1.16. Hence, exactly,
``dr_grpo = grpo · (std_g + eps)``, and ``dr_grpo = grpo · std_g`` when ``eps = 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from lmloss import _checks
from lmloss.objectives.reduce import as_mask

Tensor = torch.Tensor


def grouped(rewards: Tensor, group_size: int) -> Tensor:
    """``[B]`` → ``[B / G, G]``, rows are prompts."""
    return rewards.reshape(-1, group_size)


def grpo_advantages(
    rewards: Tensor,
    group_size: int,
    mask: Tensor | None = None,
    *,
    eps: float = 1e-4,
    scale: str = "group",
) -> Tensor:
    """GRPO (Shao et al. 2024, arXiv:2402.03300): ``(r_i − mean_g r) / (std + eps)``.

    ``scale="group"``: the group's unbiased std (TRL ``scale_rewards="group"``);
    ``"batch"``: the whole batch's unbiased std (TRL ``"batch"``, PPO-Lite).
    """
    _checks.require_choice("scale", scale, ("group", "batch"))
    _checks.require_in_range("eps", eps, 0.0, float("inf"))
    g = grouped(rewards, group_size)
    std = g.std(dim=1, keepdim=True) if scale == "group" else rewards.std()
    return ((g - g.mean(dim=1, keepdim=True)) / (std + eps)).reshape(-1)


def dr_grpo_advantages(rewards: Tensor, group_size: int, mask: Tensor | None = None) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, arXiv:2503.20783): ``r_i − mean_g r`` (no std division)."""
    g = grouped(rewards, group_size)
    return (g - g.mean(dim=1, keepdim=True)).reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int, mask: Tensor | None = None) -> Tensor:
    """RLOO / LOOP (arXiv:2402.14740, 2502.01600): ``r_i − mean_{j≠i} r_j``
    ``= G/(G−1) · (r_i − mean_g r)``, as TRL ``RLOOTrainer``."""
    g = grouped(rewards, group_size)
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)


def _log_beta_pdf(p: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    # xlogy gives 0·log 0 = 0 at the boundary (α or β = 1), where torch's Beta gives NaN.
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return torch.xlogy(alpha - 1, p) + torch.xlogy(beta - 1, 1 - p) - log_norm


def bnpo_advantages(
    rewards: Tensor,
    group_size: int,
    mask: Tensor | None = None,
    *,
    min_value: float = 0.0,
    max_value: float = 1.0,
    max_weight: float = 1e6,
) -> Tensor:
    """BNPO (Xiao et al. 2025, arXiv:2506.02864): Beta-normalized advantages.

    Rewards are mapped to [0, 1] by ``(r − min_value)/(max_value − min_value)``; ``p_g`` is
    each prompt's mean. A Beta(a, b) is fitted by moments to the batch's ``p_g`` (mean m,
    unbiased variance v): ``a = (m(1−m)/v − 1)·m``, ``b = (m(1−m)/v − 1)·(1−m)``; then
    ``α = max(1, 1 + a/3)``, ``β = max(1, 1 + b/3)`` and
    ``A_i = min(1 / Beta_pdf(p_g; α, β), max_weight) · (r_i − p_g)``.
    Source: the authors' ``compute_bnpo_outcome_advantage`` (github.com/changyi7231/BNPO).
    Where the fit is undefined (a single prompt, or v = 0) α = β = 1 is used (weight 1,
    REINFORCE with the group-mean baseline); the authors' code gives NaN or uses p = 0.
    Computed in float64.
    """
    if not max_value > min_value:
        raise ValueError(f"max_value must exceed min_value, got {min_value} and {max_value}")
    _checks.require_positive("max_weight", max_weight)
    s = (rewards.double() - min_value) / (max_value - min_value)
    if bool(((s < 0) | (s > 1)).any()):
        raise ValueError(f"rewards must lie in [min_value, max_value] = [{min_value}, {max_value}]")
    g = grouped(s, group_size)
    p = g.mean(dim=1)
    one = p.new_ones(())
    alpha, beta = one, one
    if p.numel() > 1:
        m, v = p.mean(), p.var()
        if v > 0:
            spread = m * (1 - m) / v - 1
            alpha = (1 + spread * m / 3).clamp(min=1.0)
            beta = (1 + spread * (1 - m) / 3).clamp(min=1.0)
    weight = torch.exp(-_log_beta_pdf(p, alpha, beta)).clamp(max=max_weight)
    return (weight[:, None] * (g - p[:, None])).reshape(-1).to(rewards.dtype)


def _whiten(values: Tensor, valid: Tensor, eps: float) -> Tensor:
    picked = values[valid]
    if picked.numel() < 2:
        return torch.zeros_like(values)
    centered = values - picked.mean()
    return torch.where(valid, centered * torch.rsqrt(picked.var() + eps), 0.0)


def reinforce_pp_advantages(
    rewards: Tensor,
    group_size: int | None = None,
    mask: Tensor | None = None,
    *,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262): global batch normalization.

    ``A = (x − mean) / sqrt(var + eps)`` over the whole batch (unbiased variance), with
    ``x = r − mean_g r`` when ``group_size`` is given (REINFORCE++-baseline) else ``x = r``.
    With a ``mask`` the statistics are over all unmasked tokens (each completion counts once
    per token, as OpenRLHF/verl whiten token returns) and ``[B, T]`` is returned; ``rewards``
    may then also be token-level returns ``[B, T]`` (e.g. from
    :func:`~lmloss.objectives.policy.kl.kl_in_reward` with ``per_token=True``).
    """
    _checks.require_in_range("eps", eps, 0.0, float("inf"))
    x = rewards
    if group_size is not None:
        if rewards.dim() != 1:
            raise ValueError("a group baseline needs sequence rewards [B]; got [B, T] rewards")
        x = dr_grpo_advantages(rewards, group_size)
    if mask is None:
        return _whiten(x, torch.ones_like(x, dtype=torch.bool), eps)
    if x.dim() == 1:
        x = x[:, None].expand(mask.shape)
    return _whiten(x, mask > 0, eps)


def token_group_mean_advantages(
    rewards: Tensor,
    group_size: int,
    mask: Tensor | None = None,
    *,
    eps: float = 1e-6,
    scale: bool = True,
) -> Tensor:
    """HAPO's token-level group average (Liu et al. 2025, arXiv:2509.16591).

    Group statistics over tokens: each completion's reward counts once per unmasked token,
    ``μ_g = Σ_i L_i r_i / Σ_i L_i``, ``σ_g² = Σ_i L_i (r_i − μ_g)² / Σ_i L_i``, and
    ``A_it = (r_i − μ_g)/(σ_g + eps)`` (``scale=False``: no division) → ``[B, T]``.
    Source: the authors' ``compute_hapo_outcome_advantage``
    (github.com/starriver030515/HAPO); its fallback to GRPO advantages for groups with
    some ``|A| ≥ 5`` is not included.
    """
    if mask is None:
        raise ValueError("token_group_mean needs mask= ([B, T] completion mask)")
    _checks.require_in_range("eps", eps, 0.0, float("inf"))
    lengths = grouped(mask.sum(-1), group_size)
    g = grouped(rewards, group_size)
    total = lengths.sum(dim=1, keepdim=True).clamp(min=1)
    mu = (lengths * g).sum(dim=1, keepdim=True) / total
    centered = g - mu
    if scale:
        sigma = ((lengths * centered.square()).sum(dim=1, keepdim=True) / total).sqrt()
        centered = centered / (sigma + eps)
    return centered.reshape(-1)[:, None] * mask


class Estimator(NamedTuple):
    """An advantage estimator and what it accepts."""

    fn: Callable[..., Tensor]
    needs_groups: bool  # group_size required (and >= 2)
    token_rewards: bool = False  # also takes [B, T] token returns (with a mask)


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "grpo": Estimator(grpo_advantages, needs_groups=True),
    "dr_grpo": Estimator(dr_grpo_advantages, needs_groups=True),
    "rloo": Estimator(rloo_advantages, needs_groups=True),
    "loop": Estimator(rloo_advantages, needs_groups=True),
    "bnpo": Estimator(bnpo_advantages, needs_groups=True),
    "reinforce_pp": Estimator(reinforce_pp_advantages, needs_groups=False, token_rewards=True),
    "token_group_mean": Estimator(token_group_mean_advantages, needs_groups=True),
}


def check_groups(rewards: Tensor, group_size: object, *, at_least: int = 1) -> int:
    """``group_size`` is an int ≥ ``at_least`` that divides the batch of ``rewards``."""
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {group_size!r}")
    if group_size < at_least:
        raise ValueError(f"group_size must be >= {at_least}, got {group_size}")
    rows = rewards.shape[0]
    if rows % group_size:
        raise ValueError(
            f"rewards batch of {rows} does not divide into groups of group_size={group_size}"
        )
    return group_size


def estimate_advantages(
    name: str,
    rewards: Tensor,
    group_size: int | None = None,
    *,
    mask: Tensor | None = None,
    **options: object,
) -> Tensor:
    """Advantages by estimator ``name`` (see :data:`ADVANTAGE_ESTIMATORS`), detached.

    Args:
        name: ``grpo``, ``dr_grpo``, ``rloo`` (alias ``loop``), ``bnpo``, ``reinforce_pp``,
            ``token_group_mean``.
        rewards: ``[B]`` sequence rewards (``reinforce_pp`` also takes ``[B, T]`` returns
            with a mask).
        group_size: completions per prompt; required by all but ``reinforce_pp`` (where it
            adds the group-mean baseline). Group estimators need at least 2.
        mask: ``[B, T]`` completion mask (token-level estimators).
        options: estimator options (e.g. ``eps``, ``scale``).

    Returns:
        ``[B]``, or ``[B, T]`` for token-level estimators / masked ``reinforce_pp``.
    """
    _checks.require_choice("advantage estimator", name, ADVANTAGE_ESTIMATORS)
    estimator = ADVANTAGE_ESTIMATORS[name]
    rewards = _checks.require_floating("rewards", rewards)
    _checks.require_nonempty("rewards", rewards)
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf")
    token_rewards = estimator.token_rewards and mask is not None
    _checks.require_ndim("rewards", rewards, (1, 2) if token_rewards else (1,))
    if estimator.needs_groups or group_size is not None:
        if group_size is None:
            raise ValueError(f"advantage estimator {name!r} needs group_size=")
        check_groups(rewards, group_size, at_least=2 if estimator.needs_groups else 1)
    if mask is not None:
        mask = _checks.require_tensor("mask", mask)
        _checks.require_ndim("mask", mask, (2,))
        rows = rewards.shape[0]
        shape = tuple(rewards.shape) if rewards.dim() == 2 else (rows, mask.shape[1])
        like = torch.empty(shape, dtype=rewards.dtype, device=rewards.device)
        mask = as_mask("mask", mask, like, "rewards")
    with torch.no_grad():
        return estimator.fn(rewards.detach(), group_size, mask, **options)


def dynamic_sampling_mask(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, arXiv:2503.14476): bool ``[B]``, True for the
    completions of groups whose rewards are not all equal (groups with zero advantage
    everywhere carry no gradient; DAPO drops them and samples more)."""
    rewards = _checks.require_floating("rewards", rewards)
    _checks.require_ndim("rewards", rewards, (1,))
    check_groups(rewards, group_size)
    g = grouped(rewards, group_size)
    informative = g.amax(dim=1) > g.amin(dim=1)
    return informative.repeat_interleave(group_size)
