"""PEFT models: the adapter finds the real backbone, the LoRA layers stay in the graph."""

from __future__ import annotations

import peft
import torch
from hf_testkit import tiny
from test_hf_patch import assert_same, batch, loss_and_grads

import lmloss.hf


def lora(kind: str = "llama_untied") -> peft.PeftModel:
    model = tiny(kind, torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    wrapped = peft.get_peft_model(model, config)
    torch.manual_seed(1)
    for name, parameter in wrapped.named_parameters():
        if "lora_B" in name:  # zero at init: make the adapters change the output
            torch.nn.init.normal_(parameter, std=0.1)
    return wrapped


def test_adapter_functions_see_through_peft():
    model = lora()
    inputs = batch()
    ids, attention, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    inner = model.get_base_model()
    assert lmloss.hf.causal_lm_of(model) is inner
    assert lmloss.hf.causal_lm_of(model.base_model) is inner  # the LoraModel tuner
    assert lmloss.hf.head_of(model).weight is inner.lm_head.weight

    stats = lmloss.hf.causal_lm_forward(model, ids, attention, labels)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    valid = (labels[:, 1:] != -100) & (attention[:, 1:] == 1)
    logp = torch.log_softmax(logits, -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])
    torch.testing.assert_close(stats.logp, logp.squeeze(-1) * valid, atol=1e-5, rtol=1e-5)

    hidden = lmloss.hf.hidden_states(model, ids, attention)
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    grads = torch.autograd.grad(hidden.square().sum(), lora_a)
    assert all(bool(g.abs().sum() > 0) for g in grads)  # the adapters ran
    with model.disable_adapter():
        plain = lmloss.hf.hidden_states(model, ids, attention)
    assert not torch.allclose(hidden, plain)


def test_patched_lora_model_equals_its_own_loss_and_adapter_gradients():
    model = lora()
    inputs = batch()
    inputs["num_items_in_batch"] = torch.tensor(13)
    reference = loss_and_grads(model, inputs)
    assert lmloss.hf.patch(model) is model
    assert lmloss.hf.is_patched(model.get_base_model())
    assert model(**inputs).logits is None
    fused = loss_and_grads(model, inputs)
    assert len(fused[1]) == 8  # lora_A and lora_B of q_proj and v_proj, two layers
    assert_same(fused, reference)
    lmloss.hf.unpatch(model)
    assert model(**inputs).logits is not None
