"""Importance-weighted policy-gradient surrogates: the clipped family, CISPO, SAPO, VESPO.

Notation (per token t of completion i): ``ρ = π_θ/π_old`` (the importance ratio at the
objective's level), ``A`` the advantage, ``ℓ`` the per-token loss; the batch loss is then
aggregated (:mod:`.aggregate`), a β·KL term to the reference and an entropy bonus are added
(:func:`.common.finish`). Formulas were checked against TRL 1.16 ``GRPOTrainer._compute_loss``
(``trl/trainer/grpo_trainer.py``) and, where noted, the authors' code.
"""

from __future__ import annotations

import math

import torch

from lmloss import _checks
from lmloss.objectives.policy.rollouts import (
    DEFAULT_OPTIONS,
    PolicyOptions,
    Rollouts,
    batch_token_mean,
    check_clip,
    choose,
    finish,
    log_ratio,
    token_log_ratio,
)
from lmloss.objectives.reduce import masked_sum
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor


def clip_loss(
    ratio: Tensor,
    advantages: Tensor,
    eps_low: float,
    eps_high: float,
    *,
    dual_clip: float | None = None,
    delta: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate per token, and the low/high clipped-token flags.

    ``ℓ = −min(ρ̃ A, clip(ρ, 1−ε_low, 1+ε_high) A)`` with ``ρ̃ = min(ρ, δ)`` when the
    two-sided cap ``delta`` is set (INTELLECT-2, arXiv:2505.07291), and for ``A < 0`` dual
    clipping ``ℓ = min(ℓ, −c A)`` when ``dual_clip = c`` (Ye et al. 2020, arXiv:1912.09729).
    Flags follow TRL: low = ``ρ < 1−ε_low`` with ``A < 0``; high = ``ρ > 1+ε_high`` with ``A > 0``.
    """
    unclipped = ratio if delta is None else ratio.clamp(max=delta)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(unclipped * advantages, clipped * advantages)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    low = (ratio < 1.0 - eps_low) & (advantages < 0)
    high = (ratio > 1.0 + eps_high) & (advantages > 0)
    return loss, low, high


def check_dual_clip_and_delta(dual_clip: float | None, delta: float | None) -> None:
    if dual_clip is not None:
        _checks.require_in_range("dual_clip", dual_clip, 1.0, float("inf"), low_open=True)
    if delta is not None:
        _checks.require_positive("delta", delta)


@objective(
    "ppo",
    family="policy",
    paper="Schulman et al. 2017, arXiv:1707.06347",
    defaults={"aggregation": "token_mean"},
)
@objective(
    "grpo",
    trl='GRPOTrainer(loss_type="grpo")',
    family="policy",
    paper="Shao et al. 2024 (DeepSeekMath), arXiv:2402.03300",
)
@objective(
    "dr_grpo",
    trl='GRPOTrainer(loss_type="dr_grpo")',
    family="policy",
    paper="Liu et al. 2025 (Understanding R1-Zero-like training), arXiv:2503.20783",
    defaults={"aggregation": "token_sum_norm"},
)
@objective(
    "dapo",
    trl='GRPOTrainer(loss_type="dapo")',
    family="policy",
    paper="Yu et al. 2025, arXiv:2503.14476",
    defaults={"eps_high": 0.28, "aggregation": "token_mean"},
)
@objective(
    "bnpo",
    trl='GRPOTrainer(loss_type="bnpo")',
    family="policy",
    paper="Xiao et al. 2025, arXiv:2506.02864",
    defaults={"eps_high": 0.28, "dual_clip": 10.0, "aggregation": "seq_mean_token_sum"},
)
@objective(
    "gspo",
    trl='GRPOTrainer(importance_sampling_level="sequence")',
    family="policy",
    paper="Zheng et al. 2025, arXiv:2507.18071",
    defaults={"ratio_level": "sequence", "eps_low": 3e-4, "eps_high": 4e-4},
)
@objective(
    "luspo",
    trl='GRPOTrainer(loss_type="luspo")',
    family="policy",
    paper="LUSPO, arXiv:2602.05261 (as implemented in TRL 1.16)",
    defaults={
        "ratio_level": "sequence",
        "eps_low": 3e-4,
        "eps_high": 4e-4,
        "aggregation": "seq_mean_token_sum",
    },
)
@objective(
    "rloo",
    family="policy",
    paper="Ahmadian et al. 2024, arXiv:2402.14740; LOOP: Chen et al. 2025, arXiv:2502.01600",
    aliases=("loop",),
    defaults={"ratio_level": "sequence_sum"},
)
def clipped_surrogate(
    b: Rollouts,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    delta: float | None = None,
    ratio_level: str = "token",
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """The PPO clipped surrogate and the registry entries that differ only in settings.

    ``ℓ_t = −min(ρ_t A_t, clip(ρ_t, 1−ε_low, 1+ε_high) A_t) + β·kl_t`` (see :func:`clip_loss`
    for the dual clip and the δ cap), aggregated by ``aggregation``. The entries:

    ==========  ==================  ===============  =====================  ===============
    name        ρ                   ε_low / ε_high   aggregation            other
    ==========  ==================  ===============  =====================  ===============
    ppo         token               0.2 / 0.2        token_mean
    grpo        token               0.2 / 0.2        seq_mean_token_mean    β=0.04 in paper
    dr_grpo     token               0.2 / 0.2        token_sum_norm         (max_tokens)
    dapo        token               0.2 / 0.28       token_mean             (num_items)
    bnpo        token               0.2 / 0.28       seq_mean_token_sum     dual clip 10
    gspo        sequence (geo mean) 3e-4 / 4e-4      seq_mean_token_mean
    luspo       sequence (geo mean) 3e-4 / 4e-4      seq_mean_token_sum
    rloo, loop  sequence_sum        0.2 / 0.2        seq_mean_token_mean
    ==========  ==================  ===============  =====================  ===============

    Sources: GRPO per DeepSeekMath eq. 3 and TRL ``loss_type="grpo"`` (its advantage
    normalization lives in :mod:`.advantages`; the paper used β = 0.04 with k3, here β
    defaults to 0 as in TRL since it needs ``ref_logps``). Dr. GRPO divides token sums by a
    constant (``max_tokens``, TRL's ``max_completion_length``). DAPO: clip-higher
    ε_high = 0.28 and one token mean over the batch (``num_items`` for the global count).
    BNPO: its advantages are in :mod:`.advantages`; clip, dual clip c = 10 and
    seq-mean-token-sum are the authors' ``recipe/bnpo/run.sh`` (TRL's ``loss_type="bnpo"``
    is instead ``aggregation="token_mean"``). GSPO: ``ρ_i = exp(mean_t log ρ_it)`` clipped
    per sequence (the paper's ε = 3e-4 / 4e-4; TRL ``importance_sampling_level="sequence"``).
    LUSPO: GSPO with each sequence's loss multiplied by its length (TRL). RLOO/LOOP: the
    ratio of whole-sequence probabilities ``exp(Σ_t log ρ_it)`` clipped per sequence, mean
    over sequences, as TRL ``RLOOTrainer`` (LOOP's paper clips per token: use
    ``ratio_level="token"``); its leave-one-out advantages are in :mod:`.advantages`.

    Args:
        logps: ``[B, T]`` log π_θ of the sampled tokens.
        mask: ``[B, T]`` completion mask.
        advantages: ``[B]`` or ``[B, T]``.
        old_logps: ``[B, T]`` log π_old; None = on-policy (ρ = 1, plain policy gradient).
        ref_logps: ``[B, T]`` log π_ref, needed when ``beta > 0`` (also logged as ``kl``).
        entropy: ``[B, T]`` token entropies, for ``entropy_coef`` and the ``entropy`` metric.
        eps_low, eps_high: clip widths. dual_clip: c > 1 or None. delta: ρ cap or None.
        ratio_level: ``token`` | ``sequence`` | ``sequence_sum``.
        beta, kl_estimator, kl_importance_weighted, entropy_coef, aggregation, num_items,
        max_tokens: see :func:`lmloss.objectives.policy.rollouts.finish`.

    Returns:
        ``LossOutput``; metrics ``clip_frac_low/high``, ``clip_frac``, ``ratio_mean/min/max``,
        ``kl`` (with ref_logps), ``entropy`` (with entropy).
    """
    check_clip(eps_low, eps_high)
    check_dual_clip_and_delta(dual_clip, delta)
    ratio = torch.exp(log_ratio(b, ratio_level))
    per_token, low, high = clip_loss(
        ratio, b.advantages, eps_low, eps_high, dual_clip=dual_clip, delta=delta
    )
    return finish(
        per_token,
        b,
        options,
        ratio=ratio,
        clipped_low=low,
        clipped_high=high,
    )


@objective(
    "cispo",
    trl='GRPOTrainer(loss_type="cispo")',
    family="policy",
    paper="MiniMax 2025 (MiniMax-M1), arXiv:2506.13585",
    defaults={"aggregation": "token_mean"},
)
def cispo(
    b: Rollouts,
    *,
    eps_low: float | None = None,
    eps_high: float = 4.0,
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """CISPO: clip the importance weight, stop its gradient, weight the log-likelihood.

    ``ℓ_t = −sg(clip(ρ_t, 1−ε_low, 1+ε_high)) · A_t · log π_θ(y_t)``, token mean over the
    batch (MiniMax-M1 eq. 4). Every token keeps a gradient, unlike PPO clipping. No lower
    truncation by default (``eps_low=None``, as the paper); ε_high = 4 truncates ρ at 5, the
    ScaleRL recommendation (TRL's ``loss_type="cispo"`` with ``epsilon_high=5.0`` caps ρ at
    the value ``epsilon_high`` itself: TRL ``epsilon_high = 1 + eps_high`` here).

    Args: as :func:`clipped_surrogate` (``eps_low=None`` disables the lower bound).
    Returns: ``LossOutput``; metric ``clip_frac_high`` (ρ truncated with A > 0, as TRL).
    """
    check_clip(eps_low, eps_high)
    ratio = torch.exp(token_log_ratio(b))
    low_bound = None if eps_low is None else 1.0 - eps_low
    weight = ratio.clamp(min=low_bound, max=1.0 + eps_high).detach()
    per_token = -weight * b.advantages * b.logps
    high = (ratio > 1.0 + eps_high) & (b.advantages > 0)
    return finish(
        per_token,
        b,
        options,
        ratio=ratio,
        clipped_high=high,
    )


@objective(
    "sapo",
    trl='GRPOTrainer(loss_type="sapo")',
    family="policy",
    paper="Soft Adaptive Policy Optimization, arXiv:2511.20347",
)
def sapo(
    b: Rollouts,
    *,
    temperature_pos: float = 1.0,
    temperature_neg: float = 1.05,
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """SAPO: a smooth, temperature-controlled gate instead of the hard clip.

    ``ℓ_t = −f_τ(ρ_t) A_t`` with ``f_τ(ρ) = (4/τ) σ(τ (ρ − 1))`` and ``τ = τ_pos`` when
    ``A_t > 0`` else ``τ_neg``. ``f_τ(1) = 2/τ`` and ``f_τ'(1) = 1``, so on-policy the gradient
    is the plain policy gradient; far off-policy the gate decays smoothly. Temperatures
    1.0 / 1.05 and the GRPO-style aggregation follow TRL 1.16 (``loss_type="sapo"``).
    """
    _checks.require_positive("temperature_pos", temperature_pos)
    _checks.require_positive("temperature_neg", temperature_neg)
    ratio = torch.exp(token_log_ratio(b))
    tau = choose(b.advantages > 0, temperature_pos, temperature_neg, ratio)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    return finish(
        -gate * b.advantages,
        b,
        options,
        ratio=ratio,
    )


@objective(
    "vespo",
    trl='GRPOTrainer(loss_type="vespo")',
    family="policy",
    paper="VESPO, arXiv:2602.10693 (as implemented in TRL 1.16)",
    defaults={"aggregation": "token_mean"},
)
def vespo(
    b: Rollouts,
    *,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
    options: PolicyOptions = DEFAULT_OPTIONS,
) -> LossOutput:
    """VESPO: a detached Gamma-shaped weight of the sequence importance ratio.

    ``w_i = exp(Σ_t log ρ_it)`` (log clamped to [log 1e-8, 20]),
    ``φ(w) = e^λ w^k e^{−λ w}`` (so ``φ(1) = 1``), with (k, λ) = (k_pos, λ_pos) when
    ``A ≥ 0`` else (k_neg, λ_neg), and ``ℓ_t = −sg(φ(w_i)) A_t log π_θ(y_t)``; token mean
    over the batch. Defaults and clamps are TRL 1.16's ``get_gamma_weights``.
    """
    for name, value in (("k_pos", k_pos), ("k_neg", k_neg)):
        _checks.require_in_range(name, value, 0.0, float("inf"))
    _checks.require_positive("lambda_pos", lambda_pos)
    _checks.require_positive("lambda_neg", lambda_neg)
    log_w = masked_sum(token_log_ratio(b), b.mask).clamp(math.log(1e-8), 20.0)[:, None]
    nonneg = b.advantages >= 0
    k = choose(nonneg, k_pos, k_neg, log_w)
    lam = choose(nonneg, lambda_pos, lambda_neg, log_w)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w)).detach()
    ratio = torch.exp(token_log_ratio(b))  # token level, as TRL's KL weighting uses
    return finish(
        -phi * b.advantages * b.logps,
        b,
        options,
        ratio=ratio,
        extra_metrics={"phi_mean": batch_token_mean(phi, b)},
    )
