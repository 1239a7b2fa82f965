"""Per-token estimators of KL(π_θ ‖ π_ref) from tokens sampled by π_θ, and KL in the reward.

With ``d = log π_θ(y_t) − log π_ref(y_t)`` (Schulman 2020, "Approximating KL divergence",
http://joschu.net/blog/kl-approx.html; the sample comes from π_θ):

==================  ======================================  =====================================
name                value                                   note
==================  ======================================  =====================================
``k1``              d                                       unbiased, high variance, can be < 0
``k2``              d² / 2                                  biased, low variance; its gradient
                                                            is the reverse-KL gradient
``k3``              exp(−d) + d − 1                         unbiased, ≥ 0 (GRPO, TRL)
``abs``             |d|
``low_var_kl``      min(k3, 10)                             verl's clamped k3
``k1+`` ``k3+``     value of k1 / k3, gradient of k2        straight-through (verl "k1+" "k3+")
``low_var_kl+``     value of low_var_kl, gradient of k2
==================  ======================================  =====================================

Sign convention: ``k1 = log π_θ − log π_ref`` (the catalog's ``k1 = −r`` writes r for
``log π_ref − log π_θ``). ``exp`` is taken of ``−d`` clamped to [−20, 20] (as verl does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmloss import _checks
from lmloss.objectives.reduce import as_mask, masked_sum

Tensor = torch.Tensor

_EXP_CLAMP = 20.0
_LOW_VAR_CAP = 10.0


def _k1(d: Tensor) -> Tensor:
    return d


def _k2(d: Tensor) -> Tensor:
    return 0.5 * d.square()


def _k3(d: Tensor) -> Tensor:
    neg = (-d).clamp(-_EXP_CLAMP, _EXP_CLAMP)
    return torch.exp(neg) - neg - 1.0


def _abs(d: Tensor) -> Tensor:
    return d.abs()


def _low_var_kl(d: Tensor) -> Tensor:
    return _k3(d).clamp(max=_LOW_VAR_CAP)


def _straight_through(value_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Value of ``value_fn``, gradient of k2 (the unbiased reverse-KL gradient)."""

    def estimator(d: Tensor) -> Tensor:
        surrogate = _k2(d)
        return surrogate - surrogate.detach() + value_fn(d).detach()

    return estimator


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "k3": _k3,
    "abs": _abs,
    "low_var_kl": _low_var_kl,
    "k1+": _straight_through(_k1),
    "k3+": _straight_through(_k3),
    "low_var_kl+": _straight_through(_low_var_kl),
}


def per_token_kl(estimator: str, logps: Tensor, ref_logps: Tensor, valid: Tensor) -> Tensor:
    """The estimator on every token; exact zeros (and zero gradient) where ``valid`` is False."""
    _checks.require_choice("kl_estimator", estimator, KL_ESTIMATORS)
    d = torch.where(valid, logps - ref_logps, torch.zeros_like(logps))
    return torch.where(valid, KL_ESTIMATORS[estimator](d), torch.zeros_like(d))


def kl_estimate(estimator: str, logps: Tensor, ref_logps: Tensor, mask: Tensor) -> Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate ``[B, T]``, zero at masked tokens.

    Args:
        estimator: one of :data:`KL_ESTIMATORS` (``"k3"`` is GRPO's).
        logps: ``[B, T]`` log π_θ of the sampled tokens (differentiable).
        ref_logps: ``[B, T]`` log π_ref of the same tokens.
        mask: ``[B, T]`` 0/1 completion mask.

    Returns:
        ``[B, T]`` estimates; reduce them with :mod:`lmloss.objectives.reduce`.

    Example:
        >>> lp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
        >>> kl_estimate("k1", lp, ref, torch.ones(1, 2))
        tensor([[0.5000, 0.0000]])
    """
    logps = _checks.require_floating("logps", logps)
    _checks.require_ndim("logps", logps, (2,))
    ref_logps = _checks.require_floating("ref_logps", ref_logps)
    _checks.require_shape("ref_logps", ref_logps, logps.shape, "logps")
    valid = as_mask("mask", mask, logps, "logps") > 0
    return per_token_kl(estimator, logps, ref_logps.to(logps.dtype), valid)


def kl_in_reward(
    rewards: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    beta: float,
    estimator: str = "k1",
    per_token: bool = False,
) -> Tensor:
    """Fold a KL penalty into the rewards instead of the loss (RLOO, REINFORCE++, PPO-RLHF).

    Sequence form (TRL ``RLOOTrainer``): ``R_i − β Σ_t kl_it`` → ``[B]``.
    Token form (REINFORCE++ returns-to-go with γ = 1): the reward at token t is
    ``−β kl_it`` plus ``R_i`` on the last token, so its return is
    ``R_i − β Σ_{s ≥ t} kl_is`` → ``[B, T]`` (zero at masked tokens).
    Everything is detached: shaped rewards carry no gradient.

    Args:
        rewards: ``[B]`` sequence rewards.
        logps, ref_logps, mask: ``[B, T]``; ``logps`` are the sampling policy's.
        beta: KL coefficient (≥ 0).
        estimator: a :data:`KL_ESTIMATORS` name (``"k1"`` is the classic one).
        per_token: return the token-level returns instead of sequence rewards.
    """
    rewards = _checks.require_floating("rewards", rewards)
    _checks.require_ndim("rewards", rewards, (1,))
    _checks.require_in_range("beta", beta, 0.0, float("inf"))
    with torch.no_grad():
        kl = kl_estimate(estimator, logps.detach(), ref_logps.detach(), mask)
        _checks.require_shape("rewards", rewards, kl.shape[:1], "logps.shape[0]")
        valid = as_mask("mask", mask, kl, "logps") > 0
        if not per_token:
            return rewards.to(kl.dtype) - beta * masked_sum(kl, valid.to(kl.dtype))
        # reverse cumulative sum: Σ_{s ≥ t} kl_s
        tail = kl.flip(-1).cumsum(-1).flip(-1)
        returns = rewards.to(kl.dtype)[:, None] - beta * tail
        return torch.where(valid, returns, torch.zeros_like(returns))
