"""Tiny random Hugging Face causal LMs of several architectures, for the hf and trl tests."""

from __future__ import annotations

import torch
import transformers

VOCAB = 97
SMALL = dict(vocab_size=VOCAB, hidden_size=16, num_attention_heads=2, num_hidden_layers=2)
DECODER = dict(SMALL, intermediate_size=32, num_key_value_heads=1)

CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_head=2, n_layer=2, n_positions=64
    ),
    "llama": lambda: transformers.LlamaConfig(**DECODER, tie_word_embeddings=True),
    "llama_untied": lambda: transformers.LlamaConfig(**DECODER, tie_word_embeddings=False),
    "qwen2": lambda: transformers.Qwen2Config(**DECODER, tie_word_embeddings=False),
    "gemma2": lambda: transformers.Gemma2Config(**DECODER, head_dim=8, final_logit_softcapping=3.0),
    "cohere": lambda: transformers.CohereConfig(**DECODER, logit_scale=0.5),
    "granite": lambda: transformers.GraniteConfig(**DECODER, logits_scaling=4.0),
}


def tiny(kind: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A seeded random model of architecture ``kind`` (a key of :data:`CONFIGS`), in eval mode."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[kind]())
    return model.to(dtype).eval()
