"""Parts of the trainer: schedules, the task generator, verifiers, encoding, the sampler."""

from __future__ import annotations

import pytest
import torch
from train_testkit import char_tokenizer

from lmloss.train import lr_schedule, rewards, tasks
from lmloss.train.config import DataConfig, TrainConfig
from lmloss.train.data import Encoder, Sampler, pad_sequences
from lmloss.train.generation import completion_mask


def _lr(config: TrainConfig) -> list[float]:
    fn = lr_schedule.multiplier(config)
    return [fn(s) for s in range(config.max_steps)]


def test_schedules():
    assert _lr(TrainConfig(max_steps=4)) == [1.0] * 4
    warm = _lr(TrainConfig(max_steps=6, warmup_steps=2))
    assert warm[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    config = TrainConfig(max_steps=10, schedule="cosine", min_lr_ratio=0.1)
    cosine = _lr(config)
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.55) and cosine[-1] > 0.1
    assert lr_schedule.multiplier(config)(10) == pytest.approx(0.1)
    wsd = _lr(TrainConfig(max_steps=10, schedule="wsd", decay_fraction=0.4))
    assert wsd[:6] == [1.0] * 6 and wsd[6:] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_task_is_seeded_and_held_out_is_disjoint():
    train = tasks.generate("arithmetic", 500, seed=3)
    assert train == tasks.generate("arithmetic", 500, seed=3)
    assert train != tasks.generate("arithmetic", 500, seed=4)
    held = tasks.generate("arithmetic", 200, seed=3, split="heldout")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    for row in train[:50]:
        assert rewards.exact_numeric([row["answer"]], answer=[row["answer"]]) == [1.0]
    with pytest.raises(ValueError, match="did you mean 'arithmetic'"):
        tasks.generate("arithmetic2", 3)


def test_verifiers():
    answers = ["12"] * 5
    texts = ["12", "The answer is 12.", "12 apples, not 13", "twelve", " 12. "]
    assert rewards.exact_numeric(texts, answer=answers) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert rewards.format_number(texts) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert rewards.exact_numeric(["1,200"], answer=["1200"]) == [1.0]


def test_chat_encoding_masks_prompt_and_keeps_end_of_turn():
    tokenizer = char_tokenizer()
    encoder = Encoder(tokenizer, DataConfig(path="x", system_prompt="be brief"))
    prompt = encoder.prompt("hi")
    assert tokenizer.decode(prompt) == "<|system|>be brief<|user|>hi<|assistant|>"
    completion = encoder.completion("hi", prompt, "yo")
    assert tokenizer.decode(completion) == "yo<eos>"
    chat = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "de"},
    ]
    ids, trained = encoder.conversation(chat)
    assert tokenizer.decode([t for t, k in zip(ids, trained) if k]) == "b<eos>de<eos>"


def test_padding_and_targets_shift():
    seqs = pad_sequences([[5, 6, 7], [8, 9]], [[False, True, True], [False, True]], pad_id=0)
    assert seqs.ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert seqs.targets.tolist() == [[6, 7], [9, -100]]
    assert seqs.trained_tokens == 3


def test_completion_mask_stops_after_first_eos():
    completions = torch.tensor([[4, 1, 1, 1], [4, 5, 6, 7], [1, 0, 0, 0]])
    assert completion_mask(completions, eos=1).tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
    ]


def test_sampler_covers_epochs_and_restores():
    sampler = Sampler(5, seed=1)
    first = sampler.take(5)
    assert sorted(first) == list(range(5))
    sampler.take(2)
    state = sampler.state_dict()
    upcoming = sampler.take(6)
    again = Sampler(5, seed=1)
    again.load_state_dict(state)
    assert again.take(6) == upcoming
