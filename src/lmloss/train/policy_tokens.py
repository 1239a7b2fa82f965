"""Per-token values of policy rollouts besides the loss: what sampling records, and the
token weights of the loop's knobs.

Recorded while decoding (:func:`sampling_recorder`, no extra forward pass), from each
step's logits ``z`` divided by the sampling temperature, the distribution the tokens are
drawn from and the trainer scores (TRL's convention):

* ``logp``: log π_sampler(y_t), the sampler's own log-prob of the drawn token (for
  truncated importance sampling and the logged sampler/trainer mismatch);
* ``entropy``: H_t = −Σ_v p_v log p_v (for ``top_entropy_quantile``);
* ``proxy_logp``: log π_proxy(y_t) of Lp-Reg's min-p proxy (arXiv:2510.03222): the
  tokens with ``p_v ≥ κ · max p`` renormalized (``PROXY_FLOOR`` for a filtered token).

Token weights multiply each token's advantage. For objectives whose per-token loss is
positively homogeneous in the advantage (PPO/GRPO clip, dual clip, CISPO, SAPO, GSPO, ...)
that equals TRL's multiplication of the policy-gradient term per token: the KL penalty
and the normalizers are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmloss.objectives.policy.rollouts import LOG_RATIO_CLAMP

Tensor = torch.Tensor

# log-prob of a token the min-p proxy filters out: far below any sampled token's log-prob,
# so Lp-Reg never selects it, and finite (its KL estimators stay finite)
PROXY_FLOOR = -100.0


def min_p_log_prob(logp_all: Tensor, token: Tensor, min_p: float) -> Tensor:
    """log π_proxy(token) of each row: ``logp_all [N, V]`` kept where ``p ≥ min_p · max p``
    and renormalized; ``PROXY_FLOOR`` where the token is filtered out."""
    keep = logp_all >= logp_all.amax(-1, keepdim=True) + math.log(min_p)
    proxy = torch.log_softmax(logp_all.masked_fill(~keep, float("-inf")), -1)
    picked = proxy.gather(-1, token[:, None]).squeeze(1)
    return torch.where(torch.isfinite(picked), picked, torch.full_like(picked, PROXY_FLOOR))


def sampling_recorder(
    temperature: float = 1.0, min_p: float | None = None
) -> Callable[[Tensor, Tensor], dict]:
    """The ``record`` function of :func:`lmloss.train.generation.generate`: ``logp`` and
    ``entropy`` of each step at ``temperature``, and ``proxy_logp`` when ``min_p`` is given."""

    def record(logits: Tensor, token: Tensor) -> dict[str, Tensor]:
        logp_all = torch.log_softmax(logits.float() / temperature, -1)
        out = {
            "logp": logp_all.gather(-1, token[:, None]).squeeze(1),
            "entropy": -(logp_all.exp() * logp_all).sum(-1),
        }
        if min_p is not None:
            out["proxy_logp"] = min_p_log_prob(logp_all, token, min_p)
        return out

    return record


def top_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Bool ``[N, C]``: the completion tokens whose entropy is in the top ``quantile`` of the
    batch's (at or above its ``1 − quantile`` quantile; TRL's rule). Wang et al. 2025,
    "Beyond the 80/20 Rule" (arXiv:2506.01939): training only the ~20% high-entropy
    "forking" tokens matches or beats training all of them."""
    mask = mask.bool()
    if quantile >= 1.0 or not bool(mask.any()):
        return mask
    threshold = torch.quantile(entropy[mask].float(), 1.0 - quantile)
    return mask & (entropy >= threshold)


def truncated_importance_weights(
    train_logps: Tensor, sampler_logps: Tensor, mask: Tensor, cap: float
) -> Tensor:
    """``min(π_train_old(y_t) / π_sampler(y_t), cap)`` per token, 0 outside ``mask``.

    Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"; TRL ``vllm_importance_sampling_mode =
    'token_truncate'``): the sampler's tokens are drawn from a distribution that differs
    from the trainer's (precision, another engine); the capped ratio corrects the gradient
    without letting rare tokens blow it up.
    """
    log_ratio = (train_logps - sampler_logps).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.where(mask.bool(), log_ratio.exp().clamp(max=cap), torch.zeros_like(log_ratio))
