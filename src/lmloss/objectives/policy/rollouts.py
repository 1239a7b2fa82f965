"""What every policy objective shares: its input kind, its options, ratios and the finish.

:class:`Rollouts` is the input kind the front door builds once from the keyword tensors
(:func:`rollouts`); :class:`PolicyOptions` holds the options every policy objective takes
(the KL penalty, the entropy bonus, the aggregation and its normalizers). The registry
flattens its fields into the objective's hyper-parameters, so callers and recipes pass
``beta=``, ``aggregation=`` ... directly.

The finish turns a per-token policy loss into a :class:`~lmloss.output.LossOutput`: it adds
the KL penalty to the reference (``β · kl_t`` per token, TRL's placement), aggregates
(:mod:`.aggregate`), subtracts the entropy bonus and computes the metrics.

Conventions (all objectives):

* Per-token inputs are ``[B, T]``. Masked positions are replaced by exact zeros before any
  math, so garbage there (padding, ``-inf``) never produces NaN or gradient.
* ``logps``, ``old_logps`` and ``ref_logps`` above 0 by more than
  :data:`lmloss._checks.LOGPROB_TOLERANCE` at a completion token are refused: a probability
  or a logit passed by mistake.
* ``old_logps=None`` means on-policy: ``log π_old = log π_θ`` detached, so the ratio is
  ``exp(logp − logp.detach()) = 1`` and its gradient is the plain policy gradient.
* Log-ratios are clamped to [−20, 20] before ``exp`` (verl's guard; gradients vanish past
  it, where any clipped objective has already stopped them).
* Computation runs in float32 at least (float64 stays float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmloss import _checks
from lmloss.objectives.policy.aggregate import aggregate, check_aggregation
from lmloss.objectives.policy.kl import per_token_kl
from lmloss.objectives.reduce import as_mask, masked_mean, masked_sum, token_count
from lmloss.output import LossOutput

Tensor = torch.Tensor

LOG_RATIO_CLAMP = 20.0


@dataclass(frozen=True)
class PolicyOptions:
    """Options shared by every policy objective (see :func:`finish`).

    Attributes:
        beta: KL coefficient; needs ``ref_logps`` when non-zero.
        kl_estimator: name in :data:`~lmloss.objectives.policy.kl.KL_ESTIMATORS`.
        kl_importance_weighted: multiply the per-token KL by the ratio (DeepSeek-V3.2's
            unbiased off-policy KL; TRL ``use_bias_correction_kl``).
        entropy_coef: subtract ``entropy_coef ·`` (token mean of the entropy) from the loss
            (TRL's convention: a plain token mean whatever the aggregation).
        aggregation, num_items, max_tokens: see :mod:`.aggregate`.
    """

    beta: float = 0.0
    kl_estimator: str = "k3"
    kl_importance_weighted: bool = False
    entropy_coef: float = 0.0
    aggregation: str = "seq_mean_token_mean"
    num_items: float | Tensor | None = None
    max_tokens: float | None = None


DEFAULT_OPTIONS = PolicyOptions()


@dataclass(frozen=True)
class Rollouts:
    """The input kind of policy objectives: checked, masked, compute-dtype per-token tensors
    of sampled completions (built by :func:`rollouts`).

    Attributes:
        logps: log π_θ, zero where masked.
        old_logps: log π_old (detached); ``logps.detach()`` when on-policy.
        ref_logps: log π_ref or None.
        advantages: ``[B, T]`` (a ``[B]`` input is broadcast), zero where masked.
        entropy: token entropy or None, zero where masked.
        mask: 0/1 in the compute dtype; ``valid`` is its bool view.
        seq_advantages: the ``[B]`` input when advantages were per sequence, else None.
    """

    logps: Tensor
    old_logps: Tensor
    ref_logps: Tensor | None
    advantages: Tensor
    entropy: Tensor | None
    mask: Tensor
    valid: Tensor
    seq_advantages: Tensor | None


def _per_token(name: str, value: object, like: Tensor, valid: Tensor) -> Tensor:
    tensor = _checks.require_floating(name, value)
    _checks.require_shape(name, tensor, like.shape, "logps")
    tensor = tensor.to(like.dtype)
    return torch.where(valid, tensor, torch.zeros_like(tensor))


def rollouts(
    logps: Tensor,
    mask: Tensor,
    advantages: Tensor,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    entropy: Tensor | None = None,
) -> Rollouts:
    """Validate the per-token inputs and zero them at masked positions."""
    logps = _checks.require_floating("logps", logps)
    _checks.require_ndim("logps", logps, (2,))
    _checks.require_nonempty("logps", logps)
    logps = logps.to(torch.promote_types(logps.dtype, torch.float32))
    mask = as_mask("mask", mask, logps, "logps")
    valid = mask > 0
    logps = torch.where(valid, logps, torch.zeros_like(logps))
    _checks.require_log_probabilities("logps", logps)

    advantages = _checks.require_floating("advantages", advantages)
    seq_advantages = None
    if advantages.dim() == 1:
        _checks.require_shape("advantages", advantages, logps.shape[:1], "logps.shape[0]")
        seq_advantages = advantages.to(logps.dtype)
        advantages = seq_advantages[:, None].expand_as(logps)
    elif advantages.dim() != 2 or advantages.shape != logps.shape:
        raise ValueError(
            f"advantages must be [B] = {tuple(logps.shape[:1])} or [B, T] = "
            f"{tuple(logps.shape)} (matching logps), got {tuple(advantages.shape)}"
        )
    advantages = torch.where(valid, advantages.to(logps.dtype), torch.zeros_like(logps))

    if old_logps is None:
        old = logps.detach()
    else:
        old = _per_token("old_logps", old_logps, logps, valid).detach()
        _checks.require_log_probabilities("old_logps", old)
    ref = None
    if ref_logps is not None:
        ref = _per_token("ref_logps", ref_logps, logps, valid).detach()
        _checks.require_log_probabilities("ref_logps", ref)
    ent = None if entropy is None else _per_token("entropy", entropy, logps, valid)
    return Rollouts(logps, old, ref, advantages, ent, mask, valid, seq_advantages)


def choose(condition: Tensor, if_true: float, if_false: float, like: Tensor) -> Tensor:
    """Per-element ``if_true``/``if_false`` in ``like``'s dtype (``torch.where`` on two Python
    numbers would round them through the default float32)."""
    return torch.where(condition, like.new_tensor(if_true), like.new_tensor(if_false))


def check_clip(eps_low: float | None, eps_high: float | None) -> None:
    """Clip widths: ε_low ∈ [0, 1] (the lower bound 1 − ε_low stays ≥ 0), ε_high ≥ 0."""
    if eps_low is not None:
        _checks.require_in_range("eps_low", eps_low, 0.0, 1.0)
    if eps_high is not None:
        _checks.require_in_range("eps_high", eps_high, 0.0, float("inf"))


def token_log_ratio(b: Rollouts) -> Tensor:
    """log π_θ/π_old per token, clamped, zero where masked."""
    return (b.logps - b.old_logps).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


# ratio level -> [B, T] log-ratio (a sequence level is broadcast over its tokens)
def _sequence_mean(b: Rollouts) -> Tensor:
    # GSPO: log of the geometric mean of the token ratios, one value per sequence.
    return masked_mean(token_log_ratio(b), b.mask)[:, None].expand_as(b.logps)


def _sequence_sum(b: Rollouts) -> Tensor:
    # RLOO (TRL): ratio of the sequence probabilities.
    total = masked_sum(token_log_ratio(b), b.mask)
    return total.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)[:, None].expand_as(b.logps)


RATIO_LEVELS = {"token": token_log_ratio, "sequence": _sequence_mean, "sequence_sum": _sequence_sum}


def log_ratio(b: Rollouts, level: str) -> Tensor:
    """Importance log-ratio at ``level`` (``token`` | ``sequence`` | ``sequence_sum``)."""
    _checks.require_choice("ratio_level", level, RATIO_LEVELS)
    return RATIO_LEVELS[level](b)


def _masked_stats(prefix: str, values: Tensor, b: Rollouts) -> dict[str, Tensor]:
    values = values.detach()
    if not bool(b.valid.any()):
        zero = values.new_zeros(())
        return {f"{prefix}_mean": zero, f"{prefix}_min": zero, f"{prefix}_max": zero}
    picked = values[b.valid]
    return {
        f"{prefix}_mean": picked.mean(),
        f"{prefix}_min": picked.min(),
        f"{prefix}_max": picked.max(),
    }


def batch_token_mean(values: Tensor, b: Rollouts) -> Tensor:
    """Mean of ``values`` over all unmasked tokens of the batch (0 when all are masked)."""
    return masked_sum(values, b.mask).sum() / token_count(b.mask).sum().clamp(min=1)


def token_fraction(flags: Tensor, b: Rollouts) -> Tensor:
    """Detached fraction of unmasked tokens where the bool ``flags`` hold."""
    return batch_token_mean(flags.to(b.mask.dtype), b).detach()


def finish(
    per_token: Tensor,
    b: Rollouts,
    options: PolicyOptions,
    *,
    ratio: Tensor,
    clipped_low: Tensor | None = None,
    clipped_high: Tensor | None = None,
    extra_metrics: dict[str, Tensor] | None = None,
) -> LossOutput:
    """Add the KL penalty, aggregate, subtract the entropy bonus, compute metrics.

    Args:
        per_token: ``[B, T]`` policy loss per token (anything at masked positions is ignored).
        b: the checked inputs.
        options: the KL penalty, entropy bonus and aggregation (:class:`PolicyOptions`).
        ratio: ``[B, T]`` importance ratio used by the objective (for ratio metrics and the
            importance-weighted KL).
        clipped_low, clipped_high: bool ``[B, T]`` flags of clipped tokens, for metrics.
        extra_metrics: objective-specific metrics (detached here).

    Returns:
        ``LossOutput`` with ``loss = per_example.mean() − entropy_coef · H̄``.
    """
    beta, entropy_coef = options.beta, options.entropy_coef
    _checks.require_in_range("beta", beta, 0.0, float("inf"))
    _checks.require_in_range("entropy_coef", entropy_coef, float("-inf"), float("inf"))
    check_aggregation(options.aggregation, options.num_items, options.max_tokens)
    if beta != 0 and b.ref_logps is None:
        raise ValueError(f"beta={beta} needs ref_logps (the reference policy's log-probs)")
    if entropy_coef != 0 and b.entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy (per-token entropies)")

    metrics: dict[str, Tensor] = {}
    total = per_token
    if b.ref_logps is not None:
        kl = per_token_kl(options.kl_estimator, b.logps, b.ref_logps, b.valid)
        metrics["kl"] = batch_token_mean(kl, b).detach()
        if beta != 0:
            total = total + beta * (kl * ratio if options.kl_importance_weighted else kl)
    per_example = aggregate(
        total,
        b.mask,
        options.aggregation,
        num_items=options.num_items,
        max_tokens=options.max_tokens,
    )
    loss = per_example.mean()
    if b.entropy is not None:
        mean_entropy = batch_token_mean(b.entropy, b)
        metrics["entropy"] = mean_entropy.detach()
        if entropy_coef != 0:
            loss = loss - entropy_coef * mean_entropy

    metrics.update(_masked_stats("ratio", ratio, b))
    if clipped_low is not None:
        metrics["clip_frac_low"] = token_fraction(clipped_low, b)
    if clipped_high is not None:
        metrics["clip_frac_high"] = token_fraction(clipped_high, b)
    if clipped_low is not None and clipped_high is not None:
        metrics["clip_frac"] = token_fraction(clipped_low | clipped_high, b)
    for key, value in (extra_metrics or {}).items():
        metrics[key] = value.detach()
    return LossOutput(loss=loss, per_example=per_example, metrics=metrics)
