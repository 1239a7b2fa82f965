"""Tiny random causal LMs and toy data for the trainer tests (seconds each, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lmloss.train.recipe import parse

CHARS = list(" abcdefghijklmnopqrstuvwxyz0123456789.,?!:")
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ '<eos>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def char_tokenizer():
    """A character-level tokenizer with a chat template (vocabulary of 49)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def save_tiny_model(path: Path, seed: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    # written aside and renamed: data-parallel test ranks write the same file while the
    # other reads it
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    aside.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(aside, path)
    return path


def recipe(model: Path, data_path: Path, run_dir: Path, objective: dict, **sections) -> object:
    """A recipe for the tiny model: quiet (no progress bar, no plot), float32 (tests compare
    numbers: precision is pinned, "auto" would pick bf16 on a CPU with native bf16)."""
    base = {
        "model": {"name": str(model)},
        "data": {"path": str(data_path), "max_length": 64, "max_prompt_length": 32},
        "objective": objective,
        "train": {"max_steps": 10, "batch_size": 4, "lr": 1e-2, "seed": 0, "precision": "fp32"},
        "output": {
            "dir": str(run_dir),
            "progress": False,
            "plot": False,
            "save_model": False,
            "tensorboard": False,
        },
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return parse(base)


SAY_ROWS = [{"prompt": f"say {w}", "completion": w * 3} for w in ("ab", "cd", "ef", "gh")]


def sft_run(model: Path, tmp_path: Path, name: str = "run", steps: int = 3, **sections):
    """A ``ce`` recipe on four short rows (``tmp_path/sft.jsonl``) writing ``tmp_path/name``."""
    data = tmp_path / "sft.jsonl"
    if not data.exists():
        write_jsonl(data, SAY_ROWS)
    sections["train"] = {"max_steps": steps, **sections.get("train", {})}
    return recipe(model, data, tmp_path / name, {"name": "ce"}, **sections)


def letter_a_reward(completions: list[str], **_: object) -> list[float]:
    """The fraction of characters that are 'a': a dense reward a tiny model can learn."""
    return [c.count("a") / max(1, len(c)) for c in completions]


def raising_reward(completions: list[str], **_: object) -> list[float]:
    raise KeyError("no such column")
