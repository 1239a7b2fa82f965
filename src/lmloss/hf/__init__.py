"""Adapters to Hugging Face causal LMs: hidden states and the head, never the logits.

:func:`patch` makes a model's own ``forward(labels=...)`` compute its loss this way, for
``transformers.Trainer`` and every trainer built on it.
"""

from lmloss._extras import is_missing_dependency, missing_extra

try:
    from lmloss.hf.adapter import (
        Head,
        backbone_of,
        causal_lm_forward,
        causal_lm_of,
        head_of,
        hidden_states,
    )
    from lmloss.hf.patch import PATCHABLE_MODEL_TYPES, causal_lm_loss, is_patched, patch, unpatch
except ModuleNotFoundError as error:
    if not is_missing_dependency(error):
        raise
    raise missing_extra(error, "lmloss.hf", "hf") from None

__all__ = [
    "PATCHABLE_MODEL_TYPES",
    "Head",
    "backbone_of",
    "causal_lm_forward",
    "causal_lm_loss",
    "causal_lm_of",
    "head_of",
    "hidden_states",
    "is_patched",
    "patch",
    "unpatch",
]
