"""A mixture-of-experts model is refused by ``lmloss.hf.patch`` for the reason the docs
give: its loss adds the router's auxiliary loss, which a patched loss would leave out."""

from __future__ import annotations

import pytest
import torch
import transformers

import lmloss.hf


def test_a_mixture_of_experts_model_is_refused_for_its_router_loss():
    config = transformers.MixtralConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_local_experts=2,
        num_experts_per_tok=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(TypeError, match=r"MixtralForCausalLM.*router's auxiliary loss"):
        lmloss.hf.patch(model)
