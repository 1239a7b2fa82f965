"""``lmloss.hf.patch``: the model's own loss and gradients, without the logits."""

from __future__ import annotations

import pytest
import torch
import transformers
from hf_testkit import VOCAB, tiny

import lmloss.hf

ARCHITECTURES = ["llama", "llama_untied", "qwen2", "gemma2", "cohere", "granite", "gpt2"]


def batch(rows: int = 3, steps: int = 9, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, steps), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :3] = -100  # prompt tokens
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def loss_and_grads(model, inputs) -> tuple[torch.Tensor, list]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**inputs).loss
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def assert_same(fused, reference, tol=1e-5):
    torch.testing.assert_close(fused[0], reference[0], atol=tol, rtol=tol)
    for a, b in zip(fused[1], reference[1]):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("num_items", [None, 11])
def test_patched_loss_and_gradients_equal_the_models_own(kind, num_items):
    model = tiny(kind, torch.float32)
    inputs = batch()
    if num_items is not None:
        inputs["num_items_in_batch"] = torch.tensor(num_items)
    reference = loss_and_grads(model, inputs)
    lmloss.hf.patch(model)
    out = model(**inputs)
    assert out.logits is None and out.loss.dtype == torch.float32
    assert_same(loss_and_grads(model, inputs), reference)


def test_shift_labels_and_tuple_output():
    model = tiny("llama", torch.float32)
    inputs = batch()
    shift = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[:, 1:]
    reference = model(**inputs).loss
    lmloss.hf.patch(model)
    del inputs["labels"]
    out = model(**inputs, shift_labels=shift, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], reference, atol=1e-6, rtol=1e-6)


def test_other_likelihood_objectives_with_their_hyper_parameters():
    model = tiny("qwen2", torch.float32)
    inputs = batch()
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    targets = inputs["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), targets.reshape(-1), label_smoothing=0.2
    )
    lmloss.hf.patch(model, "label_smoothing", eps=0.2)
    torch.testing.assert_close(model(**inputs).loss, expected, atol=1e-6, rtol=1e-6)
    lmloss.hf.patch(model, "z_loss", z_weight=1e-2)  # patching again replaces the objective
    lse = logits[:, :-1].logsumexp(-1)[targets != -100]
    flat = logits[:, :-1].reshape(-1, VOCAB)
    plain = torch.nn.functional.cross_entropy(flat, targets.reshape(-1))
    torch.testing.assert_close(
        model(**inputs).loss, plain + 1e-2 * (lse**2).mean(), atol=1e-6, rtol=1e-6
    )


def test_without_labels_the_forward_and_generate_are_unchanged():
    model = tiny("gemma2", torch.float32)
    inputs = batch()
    del inputs["labels"]
    prompt = inputs["input_ids"][:1, :4]
    logits = model(**inputs).logits
    tokens = model.generate(prompt, max_new_tokens=5, do_sample=False)
    lmloss.hf.patch(model)
    assert lmloss.hf.is_patched(model)
    torch.testing.assert_close(model(**inputs).logits, logits)
    assert torch.equal(model.generate(prompt, max_new_tokens=5, do_sample=False), tokens)
    lmloss.hf.unpatch(model)
    assert not lmloss.hf.is_patched(model) and "forward" not in vars(model)
    assert model(**batch()).logits is not None


def test_unsupported_architecture_and_bad_arguments_are_clear_errors():
    opt = transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=VOCAB, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
            ffn_dim=32, word_embed_proj_dim=16,
        )
    )  # fmt: skip
    with pytest.raises(TypeError, match=r"OPTForCausalLM.*model_type=.opt."):
        lmloss.hf.patch(opt)
    model = tiny("llama", torch.float32)
    with pytest.raises(ValueError, match="likelihood objective"):
        lmloss.hf.patch(model, "dpo")
    with pytest.raises(TypeError, match=r"label_smoothing. got unknown argument.*epsilon"):
        lmloss.hf.patch(model, "label_smoothing", epsilon=0.1)
    assert not lmloss.hf.is_patched(model)
