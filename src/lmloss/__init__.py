"""lmloss: language-model post-training objectives, each defined once, fused by default.

The top level re-exports the public API: the two doors to every objective, :func:`loss`
(per-token statistics or logits) and :func:`fused_loss` (hidden states and LM heads), and
each family's own door. Family front doors are imported on first use so that ``import
lmloss`` stays light (the engine only).
"""

from __future__ import annotations

import importlib
from typing import Any

from lmloss.doors import fused_loss, loss
from lmloss.head import Head
from lmloss.objectives.binding import ObjectiveArgumentError
from lmloss.objectives.spec import ObjectiveSpec
from lmloss.output import LossOutput
from lmloss.registry import describe, list_objectives, spec
from lmloss.stats import LogitTransform, TokenStats, token_stats, token_stats_from_logits
from lmloss.stats.backend import backend

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "linear_cross_entropy": "lmloss.linear_ce",
    "preference_loss": "lmloss.preference",
    "fused_preference_loss": "lmloss.preference",
    "lcpo": "lmloss.preference",
    "advantages": "lmloss.policy",
    "policy_loss": "lmloss.policy",
    "fused_policy_loss": "lmloss.policy",
    "kl_estimate": "lmloss.policy",
    "kl_in_reward": "lmloss.policy",
    "dynamic_sampling_mask": "lmloss.policy",
    "likelihood_loss": "lmloss.likelihood",
    "fused_likelihood_loss": "lmloss.likelihood",
    "classification_loss": "lmloss.classify",
    "reward_model_loss": "lmloss.classify",
    "divergence_loss": "lmloss.distill",
    "fused_divergence_loss": "lmloss.distill",
    "token_divergence": "lmloss.distill",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmloss' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Head",
    "LogitTransform",
    "LossOutput",
    "ObjectiveArgumentError",
    "ObjectiveSpec",
    "TokenStats",
    "backend",
    "describe",
    "fused_loss",
    "list_objectives",
    "loss",
    "spec",
    "token_stats",
    "token_stats_from_logits",
    *_LAZY,
]
