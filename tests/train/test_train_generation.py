"""The decoding loop against ``model.generate`` and the sampler against its distribution."""

from __future__ import annotations

import pytest
import torch

from lmloss.train.data import left_pad
from lmloss.train.generation import generate, pick_tokens
from lmloss.train.model_loading import load_pretrained

PROMPTS = [[7, 12, 13, 14], [7, 20, 21], [7, 30, 31, 32, 33, 34]]  # ragged: left padding


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_pretrained(str(tiny_model))


@pytest.mark.parametrize("group_size", [1, 3])
def test_greedy_equals_hugging_face_generate(tiny, group_size):
    """The prompt is encoded once per group and its cache copied; greedy rows must be
    token for token what ``model.generate`` gives for the repeated prompt."""
    model, tokenizer = tiny
    ours = generate(model, tokenizer, PROMPTS, max_new_tokens=12, group_size=group_size)
    ids, attention = left_pad(PROMPTS, tokenizer.pad_token_id)
    with torch.no_grad():
        theirs = model.generate(
            input_ids=ids.repeat_interleave(group_size, 0),
            attention_mask=attention.repeat_interleave(group_size, 0),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    width = theirs.shape[1]
    assert torch.equal(ours.ids[:, :width], theirs)
    assert (ours.ids[:, width:] == tokenizer.pad_token_id).all()  # ended rows keep padding
    assert ours.start == ids.shape[1]
    assert ours.attention.shape == ours.ids.shape


def test_stops_when_every_row_has_ended(tiny):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id

    def end_now(_module, _inputs, logits):
        return logits.index_fill(-1, torch.tensor([eos]), 1e4)  # greedy picks eos at once

    hook = model.lm_head.register_forward_hook(end_now)
    try:
        out = generate(model, tokenizer, PROMPTS, max_new_tokens=8)
    finally:
        hook.remove()
    assert out.completions.shape[1] == 1
    assert (out.completions[:, 0] == eos).all() and out.mask.all()


def test_sampling_follows_the_tempered_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    draws = pick_tokens(logits.expand(40_000, -1), {"temperature": 0.7})
    frequencies = torch.bincount(draws, minlength=5).double() / len(draws)
    expected = (logits[0].double() / 0.7).softmax(-1)
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)


def test_top_k_and_top_p_cut_the_tail():
    torch.manual_seed(0)
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).expand(5_000, -1)
    assert set(pick_tokens(logits, {"top_k": 2}).tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.64, 0.23, 0.09, ...: the nucleus of 0.8 is {0, 1}
    assert probs[0] < 0.8 < probs[:2].sum()
    assert set(pick_tokens(logits, {"top_p": 0.8}).tolist()) == {0, 1}
    assert set(pick_tokens(logits, {"top_p": 0.5}).tolist()) == {0}  # the top token stays


def test_greedy_picks_the_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert pick_tokens(logits, None).tolist() == [1, 0]
