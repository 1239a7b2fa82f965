"""The adapter's statistics equal those of the model's own logits, for several architectures."""

from __future__ import annotations

import pytest
import torch
from hf_testkit import tiny

from lmloss.hf import causal_lm_forward, head_of


def logits_reference(model, ids, attention, labels):
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    log_probs = torch.log_softmax(logits, -1)
    targets = labels[:, 1:]
    valid = (targets != -100) & (attention[:, 1:] == 1)
    logp = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp * valid, entropy * valid


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2", "gemma2", "cohere"])
def test_adapter_matches_model_logits(kind):
    model = tiny(kind)
    ids = torch.randint(0, 97, (2, 9))
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    labels = ids.clone()
    labels[:, :3] = -100
    stats = causal_lm_forward(
        model, ids, attention, labels, want=("logp", "entropy"), memory_budget=512
    )
    ref_logp, ref_entropy = logits_reference(model, ids, attention, labels)
    torch.testing.assert_close(stats.logp, ref_logp, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(stats.entropy, ref_entropy, atol=1e-10, rtol=1e-10)

    params = [p for p in model.parameters() if p.requires_grad]
    fused_grads = torch.autograd.grad(
        stats.logp.sum() + stats.entropy.sum(), params, allow_unused=True
    )
    ref_logp, ref_entropy = logits_reference(model, ids, attention, labels)
    ref_grads = torch.autograd.grad(ref_logp.sum() + ref_entropy.sum(), params, allow_unused=True)
    for a, b in zip(fused_grads, ref_grads):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_head_reads_transform_settings():
    assert head_of(tiny("gemma2")).softcap == 3.0
    assert head_of(tiny("cohere")).logit_scale == 0.5
    gpt2 = tiny("gpt2")
    assert gpt2.config.tie_word_embeddings
    assert head_of(gpt2).weight is gpt2.get_input_embeddings().weight


def test_bundled_real_model_through_the_engine():
    from lmloss.models import smollm2

    model, tokenizer = smollm2()
    assert model.config.vocab_size == 49152 and model.config.hidden_size == 576
    enc = tokenizer("The capital of France is Paris.", return_tensors="pt")
    ids = enc["input_ids"]
    with torch.no_grad():
        stats = causal_lm_forward(model, ids, want=("logp", "entropy"))
        logits = model(input_ids=ids).logits[:, :-1]
    log_probs = torch.log_softmax(logits.float(), -1)
    ref = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(stats.logp, ref, atol=1e-4, rtol=1e-4)
    assert float(stats.logp[0, -2]) > -1.0  # "Paris" is likely after "The capital of France is"
