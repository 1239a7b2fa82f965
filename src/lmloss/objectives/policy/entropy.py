"""Entropy-control variants of the clipped surrogate: Clip-Cov, KL-Cov, STEER, Lp-Reg.

Each reweights or regularizes a selected subset of tokens; the selections and weights are
computed without gradient. Formulas were read from the authors' code (cited per function).
The plain entropy bonus is the ``entropy_coef`` option every policy objective has.
"""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.policy.kl import per_token_kl
from lmloss.objectives.policy.rollouts import (
    DEFAULT_OPTIONS,
    PolicyOptions,
    Rollouts,
    batch_token_mean,
    check_clip,
    finish,
    token_fraction,
    token_log_ratio,
)
from lmloss.objectives.policy.surrogates import check_dual_clip_and_delta, clip_loss
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor


def centered_covariance(b: Rollouts) -> Tensor:
    """Per-token ``(A_t − Ā)(log π_t − mean log π)``, means over unmasked tokens (no grad)."""
    count = b.mask.sum().clamp(min=1)
    adv = b.advantages.detach()
    logp = b.logps.detach()
    adv_mean = (adv * b.mask).sum() / count
    logp_mean = (logp * b.mask).sum() / count
    return (adv - adv_mean) * (logp - logp_mean)


def selection_size(fraction: float, b: Rollouts) -> int:
    """``max(1, ⌊fraction · N⌋)`` tokens among the N unmasked ones (0 when N = 0)."""
    n = int(b.valid.sum())
    return 0 if n == 0 else max(1, int(fraction * n))


@objective(
    "clip_cov",
    family="policy",
    paper="Cui et al. 2025 (The Entropy Mechanism of RL for Reasoning LMs), arXiv:2505.22617",
    defaults={"aggregation": "token_mean"},
    batch_coupled=True,  # the tokens it treats apart are chosen by a covariance over the batch
)
def clip_cov(
    b: Rollouts,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_fraction: float = 2e-4,
    cov_low: float = 1.0,
    cov_high: float = 5.0,
    generator: torch.Generator | None = None,
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """Clip-Cov: drop the gradient of a few tokens with high logp–advantage covariance.

    Entropy falls when ``Cov(log π, A)`` is large. With the centered product
    ``c_t = (A_t − Ā)(log π_t − mean log π)`` over the batch's tokens, pick uniformly at
    random ``max(1, ⌊r·N⌋)`` tokens with ``cov_low < c_t < cov_high`` that PPO did not already
    clip, and zero their loss (and gradient); the rest is the PPO clipped surrogate.
    Defaults r = 2e-4, bounds (1, 5), token mean: the authors' code
    (github.com/PRIME-RL/Entropy-Mechanism-of-RL, as merged in verl ``clip_cov``).

    Args: as :func:`~.surrogates.clipped_surrogate`, plus ``clip_fraction`` (r),
        ``cov_low``/``cov_high`` (the covariance window) and ``generator`` (for the draw).
    """
    check_clip(eps_low, eps_high)
    _checks.require_in_range("clip_fraction", clip_fraction, 0.0, 1.0, low_open=True)
    ratio = torch.exp(token_log_ratio(b))
    per_token, low, high = clip_loss(ratio, b.advantages, eps_low, eps_high)
    with torch.no_grad():
        unclipped = ratio * b.advantages
        already_clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * b.advantages < unclipped
        cov = centered_covariance(b)
        window = b.valid & ~already_clipped & (cov > cov_low) & (cov < cov_high)
        candidates = window.reshape(-1).nonzero().squeeze(1)
        order = torch.randperm(candidates.numel(), generator=generator).to(candidates.device)
        picked = candidates[order[: selection_size(clip_fraction, b)]]
        detached = torch.zeros_like(window).reshape(-1).index_fill(0, picked, True)
        detached = detached.reshape(window.shape)
    per_token = torch.where(detached, torch.zeros_like(per_token), per_token)
    return finish(
        per_token,
        b,
        options,
        ratio=ratio,
        clipped_low=low,
        clipped_high=high,
        extra_metrics={"cov_clip_frac": token_fraction(detached, b)},
    )


@objective(
    "kl_cov",
    family="policy",
    paper="Cui et al. 2025 (The Entropy Mechanism of RL for Reasoning LMs), arXiv:2505.22617",
    defaults={"aggregation": "token_mean"},
    batch_coupled=True,  # the tokens it treats apart are chosen by a covariance over the batch
)
def kl_cov(
    b: Rollouts,
    *,
    kl_fraction: float = 2e-4,
    kl_coef: float = 1.0,
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """KL-Cov: a KL penalty on the tokens of largest logp–advantage covariance, no clipping.

    ``ℓ_t = −ρ_t A_t + kl_coef · |log ρ_t| · 1[t ∈ top-k of c_t]`` with ``c_t`` as in
    :func:`clip_cov` and ``k = max(1, ⌊r·N⌋)`` (the surrogate itself is not clipped).
    Defaults r = 2e-4, coefficient 1, token mean: the authors' code (PRIME-RL
    Entropy-Mechanism-of-RL, verl ``kl_cov``).
    """
    _checks.require_in_range("kl_fraction", kl_fraction, 0.0, 1.0, low_open=True)
    _checks.require_in_range("kl_coef", kl_coef, 0.0, float("inf"))
    lr = token_log_ratio(b)
    ratio = torch.exp(lr)
    with torch.no_grad():
        cov = centered_covariance(b).masked_fill(~b.valid, float("-inf")).reshape(-1)
        top = cov.topk(selection_size(kl_fraction, b)).indices
        penalized = torch.zeros_like(cov, dtype=torch.bool).index_fill(0, top, True)
        penalized = penalized.reshape(b.valid.shape) & b.valid
    per_token = -ratio * b.advantages + torch.where(penalized, kl_coef * lr.abs(), 0.0)
    return finish(
        per_token,
        b,
        options,
        ratio=ratio,
        extra_metrics={"cov_kl_frac": token_fraction(penalized, b)},
    )


def steer_weights(b: Rollouts, weight_min: float, weight_max: float, linear: bool) -> Tensor:
    """STEER token weights from the first-order entropy change ``|Ω_t|`` (no gradient).

    With ``x = π_θ(y_t)`` clamped to [1e-8, 1 − 1e-8],
    ``Ω_t = (A_t / π_old(y_t)) · x(1 − x)(log x + H_t)``.
    Linear map: ``w = w_max − (|Ω| − min|Ω|)(w_max − w_min)/(max|Ω| − min|Ω|)`` (the midpoint
    when all are equal); exponential map: ``w = clamp(exp(−k|Ω|), w_min, 1)`` with
    ``k = −ln w_min / max(max|Ω|, 0.02)``. Min/max over the batch's unmasked tokens.
    """
    with torch.no_grad():
        x = b.logps.detach().exp().clamp(1e-8, 1 - 1e-8)
        old_p = b.old_logps.exp().clamp(1e-8, 1.0)
        omega = (b.advantages / old_p) * x * (1 - x) * (x.log() + b.entropy.detach())
        omega = torch.where(torch.isfinite(omega), omega, 0.0).abs()
        if not bool(b.valid.any()):
            return torch.zeros_like(omega)
        lo, hi = omega[b.valid].min(), omega[b.valid].max()
        if linear:
            if hi > lo:
                w = weight_max - (omega - lo) * (weight_max - weight_min) / (hi - lo)
            else:
                w = torch.full_like(omega, (weight_min + weight_max) / 2)
            w = w.clamp(weight_min, weight_max)
        else:
            k = -torch.log(omega.new_tensor(weight_min)) / hi.clamp(min=0.02)
            w = torch.exp(-k * omega).clamp(weight_min, 1.0)
        return w * b.mask


@objective(
    "steer",
    family="policy",
    paper="Hao et al. 2025 (Rethinking Entropy Interventions in RLVR), arXiv:2510.10150",
    stats=("logp", "entropy"),
    defaults={"aggregation": "token_mean"},
    batch_coupled=True,  # its token weights are scaled by the batch's extremes of |Ω|
)
def steer(
    b: Rollouts,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = 3.0,
    weight_min: float = 0.8,
    weight_max: float = 1.2,
    linear: bool = True,
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """STEER: reweight each token by its predicted entropy change.

    ``ℓ_t = w_t · ℓ^{dual-clip PPO}_t`` with ``w_t`` from :func:`steer_weights`: tokens
    whose update would move the entropy most get the smallest weight. Defaults (weights in
    [0.8, 1.2], linear map, dual clip c = 3, token mean) are the authors' code
    (github.com/zz-haooo/STEER, ``compute_policy_loss_with_entropy``).
    """
    if b.entropy is None:
        raise ValueError("steer needs entropy= ([B, T] token entropies)")
    check_clip(eps_low, eps_high)
    check_dual_clip_and_delta(dual_clip, None)
    _checks.require_in_range("weight_min", weight_min, 0.0, weight_max, low_open=True)
    ratio = torch.exp(token_log_ratio(b))
    per_token, low, high = clip_loss(ratio, b.advantages, eps_low, eps_high, dual_clip=dual_clip)
    weights = steer_weights(b, weight_min, weight_max, linear)
    return finish(
        weights * per_token,
        b,
        options,
        ratio=ratio,
        clipped_low=low,
        clipped_high=high,
        extra_metrics={"weight_mean": batch_token_mean(weights, b)},
    )


def lowest_logp_tokens(b: Rollouts, among: Tensor, fraction: float) -> Tensor:
    """Bool ``[B, T]``: the ``max(1, ⌊fraction · n⌋)`` lowest-logp tokens among ``among``."""
    n = int(among.sum())
    picked = torch.zeros_like(among)
    if n == 0 or fraction == 0:
        return picked
    scores = b.logps.detach().masked_fill(~among, float("inf")).reshape(-1)
    lowest = scores.topk(max(1, int(fraction * n)), largest=False).indices
    return picked.reshape(-1).index_fill(0, lowest, True).reshape(among.shape)


@objective(
    "lp_reg",
    family="policy",
    paper="Low-probability Regularization (Lp-Reg), arXiv:2510.03222",
    defaults={"aggregation": "token_mean"},
    batch_coupled=True,  # the tokens it regularizes are the batch's lowest-logp ones
)
def lp_reg(
    b: Rollouts,
    *,
    proxy_logps: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    neg_fraction: float = 0.01,
    pos_fraction: float = 0.0,
    reg_coef: float = 1.0,
    reg_estimator: str = "low_var_kl",
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """Lp-Reg: keep low-probability "reasoning sparks" alive with a KL to a min-p proxy.

    The proxy ``π_proxy`` is the (old) policy filtered by min-p (keep tokens with
    ``p ≥ κ · max p``, renormalize); ``proxy_logps`` is ``log π_proxy(y_t)`` of the sampled
    token (very negative for filtered tokens), computed by the caller. Among the
    negative-advantage tokens, the ``max(1, ⌊neg_fraction · n⌋)`` of lowest ``log π_θ``
    (likewise for positive ones with ``pos_fraction``, off by default) that satisfy
    ``log π_θ < log π_proxy`` get ``ℓ_t = −ρ_t A_t + reg_coef · kl(π_θ, π_proxy)_t``
    (estimator ``low_var_kl``: k3 capped at 10); all other tokens get the PPO clipped loss.
    Token mean. Source: the authors' code (github.com/CarlanLark/Lp-Reg-dev,
    ``compute_policy_loss_lp_reg``: ``logp_neg_k_percent=0.01``, ``logp_pos_k_percent=0``,
    ``ppo_kl_coef=1``, ``kl_type="low_var_kl"``; the scripts' κ = 0.02). There the selection
    only runs when it picks at least two tokens; here it runs from one.

    Args: as :func:`~.surrogates.clipped_surrogate`, plus ``proxy_logps`` ``[B, T]``
        (required, no gradient), the selected fractions, ``reg_coef`` and ``reg_estimator``.
    """
    check_clip(eps_low, eps_high)
    _checks.require_in_range("neg_fraction", neg_fraction, 0.0, 1.0)
    _checks.require_in_range("pos_fraction", pos_fraction, 0.0, 1.0)
    _checks.require_in_range("reg_coef", reg_coef, 0.0, float("inf"))
    proxy = _checks.require_floating("proxy_logps", proxy_logps)
    _checks.require_shape("proxy_logps", proxy, b.logps.shape, "logps")
    proxy = torch.where(b.valid, proxy.detach().to(b.logps.dtype), 0.0)

    ratio = torch.exp(token_log_ratio(b))
    per_token, low, high = clip_loss(ratio, b.advantages, eps_low, eps_high)
    with torch.no_grad():
        chosen = lowest_logp_tokens(b, b.valid & (b.advantages < 0), neg_fraction)
        chosen |= lowest_logp_tokens(b, b.valid & (b.advantages > 0), pos_fraction)
        chosen &= b.logps.detach() < proxy
    regularized = -ratio * b.advantages + reg_coef * per_token_kl(
        reg_estimator, b.logps, proxy, b.valid
    )
    per_token = torch.where(chosen, regularized, per_token)
    return finish(
        per_token,
        b,
        options,
        ratio=ratio,
        clipped_low=low,
        clipped_high=high,
        extra_metrics={"reg_frac": token_fraction(chosen, b)},
    )
