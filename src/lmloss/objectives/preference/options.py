"""Options that compose with any pairwise objective: LD-DPO, WPO, LCPO and HyPO.

Each is a pure function of :class:`~.inputs.Pairs` and/or a :class:`LossOutput`; the front
door applies them around the objective, in this order:

1. ``length_desensitized`` (LD-DPO) re-weights tokens before the objective runs;
2. the objective, wrapped by ``lcpo_em`` when LCPO is asked for;
3. ``reweighted`` by ``wpo_weights`` (WPO);
4. ``with_online_kl`` adds HyPO's on-policy KL term.

Every per-pair option needs the objective's ``per_example[i]`` to belong to pair ``i``;
objectives that sort the batch declare ``batch_coupled=True`` and refuse them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmloss import _checks
from lmloss.objectives.preference.inputs import Completions, Pairs, with_weights
from lmloss.objectives.reduce import masked_mean
from lmloss.output import LossOutput

Tensor = torch.Tensor


def length_desensitized(pairs: Pairs, ld_alpha: float) -> Pairs:
    """LD-DPO: tokens past the shorter completion of the pair count with weight α.

    The first min(|y_w|, |y_l|) completion tokens of each side keep weight 1, the rest get
    ``ld_alpha``; sequence log-probs of the policy and of per-token references become these
    weighted sums (references given already summed are used as they are). α = 1 is the
    plain sum (DPO); α = 0 keeps only the shared-length prefix.

    References:
        Liu et al., "LD-DPO: Eliminating Biased Length Preference in DPO", arXiv:2409.06411.
        TRL 1.16 ``DPOConfig.ld_alpha``.
    """
    ld_alpha = _checks.require_in_range("ld_alpha", ld_alpha, 0.0, 1.0)
    shared = torch.minimum(pairs.chosen.length(), pairs.rejected.length())

    def reweight(side: Completions, other: Completions) -> Completions:
        position = torch.cumsum(side.mask, dim=-1)  # 1-based index among completion tokens
        in_prefix = position <= shared[:, None]
        weights = torch.where(in_prefix, side.mask, ld_alpha * side.mask)
        return with_weights(side, weights)

    return pairs.map(reweight)


def wpo_weights(pairs: Pairs, *, clamp: bool = False) -> Tensor:
    """WPO pair weights w(y_w)·w(y_l), w(y) = exp((1/|y|) Σ_t [log p(y_t) − log Σ_v p_v²]).

    The per-token ``log Σ_v p_v²`` is the engine statistic ``sum_sq_probs``; subtracting it
    aligns each token's probability with the policy's own sampling distribution. No gradient
    flows through the weights. Each w(y) lies in (0, V] since p(y_t) ≤ 1 and Σ p² ≥ 1/V.

    Differs from the authors' code: ``wzhouad/WPO`` (``scripts/run_wpo.py``) caps the pair
    weight at 1, ``min(1, w(y_w)·w(y_l))``, which Eq. 2 and TRL's ``use_weighting`` do not;
    ``clamp=True`` (front door: ``wpo_clamp=True``) gives the authors' form.

    References:
        Zhou et al., "WPO: Enhancing RLHF with Weighted Preference Optimization",
        arXiv:2406.11827, Eq. 2. TRL 1.16 ``DPOConfig.use_weighting``.
    """

    def weight(side: Completions) -> Tensor:
        aligned = side.logps - side.stat("sum_sq_probs")
        return masked_mean(aligned.detach(), side.mask).exp()

    weights = weight(pairs.chosen) * weight(pairs.rejected)
    return weights.clamp(max=1.0) if clamp else weights


def reweighted(out: LossOutput, weights: Tensor) -> LossOutput:
    """Multiply each per-example loss by a weight; the loss stays the batch mean."""
    per_example = out.per_example * weights
    metrics = {**out.metrics, "weights/mean": weights.detach().mean()}
    return LossOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)


def lcpo_em(objective: Callable[[Pairs], LossOutput], pairs: Pairs, noise: float) -> LossOutput:
    """LCPO: EM re-weighting of a pairwise loss by the posterior that each label is correct.

    The loss ℓ defines a preference model P(y_w ≻ y_l) ∝ exp(−ℓ(y_w, y_l)) against the
    flipped pair, P = σ(ℓ(y_l, y_w) − ℓ(y_w, y_l)). With the label-noise rate ε:

    * E-step (no gradient): q = (1−ε)P / ((1−ε)P + ε(1−P)) = σ(logit(1−ε) + ℓ_flip − ℓ);
    * M-step loss per pair: q·ℓ(y_w, y_l) + (1 − q)·ℓ(y_l, y_w).

    ε = 0 gives q = 1, the base loss. ``metrics["lcpo/label_confidence"]`` is the mean of
    q, the M-step estimate of 1 − ε: feed ``1 − it`` (or a running mean) back as ``noise``
    to iterate EM across steps.

    References:
        Cao et al., "Latent Collective Preference Optimization: A General Framework for
        Robust LLM Alignment", arXiv:2509.24159 (E-step posterior of label correctness,
        weighted M-step).
    """
    noise = _checks.require_in_range("noise", noise, 0.0, 0.5, high_open=True)
    kept, flipped = objective(pairs), objective(pairs.swapped())
    if noise == 0.0:
        confidence = torch.ones_like(kept.per_example)
    else:
        prior = math.log1p(-noise) - math.log(noise)
        confidence = torch.sigmoid(prior + (flipped.per_example - kept.per_example).detach())
    per_example = confidence * kept.per_example + (1 - confidence) * flipped.per_example
    metrics = {**kept.metrics, "lcpo/label_confidence": confidence.mean()}
    return LossOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)


def with_online_kl(out: LossOutput, samples: Completions, weight: float) -> LossOutput:
    """HyPO: add λ·KL(π_θ ‖ π_ref), estimated on on-policy samples, to each pair's loss.

    ``samples`` holds one (``[B, T]``) or K (``[B, K, T]``) completions sampled from the
    current policy for each pair's prompt. The per-sample estimate is k = log π_θ(y)/π_ref(y);
    since the samples' distribution depends on θ, the term is the score-function surrogate
    ``sg(k)·(log π_θ(y) − sg(log π_θ(y))) + sg(k)``: its value is the KL estimate and its
    gradient E[k ∇log π_θ(y)] is the gradient of the KL. λ = 0 leaves the loss unchanged.

    References:
        Song et al., "The Importance of Online Data: Understanding Preference Fine-tuning
        via Coverage", arXiv:2406.01462 (HyPO: offline DPO + online KL regularization).
    """
    weight = _checks.require_in_range("hypo_weight", weight, 0.0, float("inf"))
    size = out.per_example.shape[0]
    if samples.batch_shape[0] != size:
        raise ValueError(
            f"online_logps must hold {size} rows (one per pair), got {samples.batch_shape[0]}"
        )
    logp = samples.sequence_logp()
    estimate = (logp - samples.ref_sequence_logp()).detach()
    surrogate = estimate * (logp - logp.detach()) + estimate
    kl = surrogate.reshape(size, -1).mean(dim=1)
    per_example = out.per_example + weight * kl
    metrics = {**out.metrics, "hypo/kl": estimate.mean()}
    return LossOutput(loss=per_example.mean(), per_example=per_example, metrics=metrics)
