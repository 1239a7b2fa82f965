"""Adapters to Hugging Face causal LMs: hidden states and the head, never the logits."""

from lmloss.hf.adapter import Head, causal_lm_forward, head_of, hidden_states

__all__ = ["Head", "causal_lm_forward", "head_of", "hidden_states"]
