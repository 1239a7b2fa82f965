"""A prompt over data.max_prompt_length is found by `lmloss validate`, with file and line,
from the tokenizer alone (issue 26); a tokenizer that does not load offline skips the check
in one line.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
from train_testkit import write_jsonl

from lmloss import cli, models
from lmloss.train import model_loading, prompt_lengths

SHORT = {"prompt": "Hi", "chosen": "a", "rejected": "b"}
LONG_PROMPT = "Tell me, in as many words as you like, " * 6


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("model weights were loaded by validate")

    monkeypatch.setattr(model_loading, "load", refuse)
    monkeypatch.setattr(models, "smollm2", refuse)


def _validate(tmp_path: Path, model: str, rows: list[dict], **data) -> int:
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    recipe = tmp_path / "recipe.toml"
    lines = [f"[model]\nname = {json.dumps(model)}", f"[data]\npath = {json.dumps(str(path))}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in data.items()]
    lines += ['[objective]\nname = "dpo"', f"[output]\ndir = {json.dumps(str(tmp_path / 'run'))}"]
    recipe.write_text("\n".join(lines) + "\n")
    return cli.main(["validate", str(recipe)])


def test_a_long_prompt_is_found_by_file_and_line_with_the_bundled_tokenizer(
    tmp_path, no_weights, monkeypatch, capsys
):
    """The count is the chat-templated prompt's, as the trainer tokenizes it."""
    load_once = functools.cache(prompt_lengths.offline_tokenizer)  # one GGUF read for the test
    monkeypatch.setattr(prompt_lengths, "offline_tokenizer", load_once)
    tokenizer = load_once("smollm2")
    messages = [{"role": "user", "content": LONG_PROMPT}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    tokens = len(ids)
    rows = [SHORT, SHORT, {**SHORT, "prompt": LONG_PROMPT}, SHORT]

    assert _validate(tmp_path, "smollm2", rows, max_prompt_length=tokens - 1) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert err.startswith(f"lmloss: error: {tmp_path / 'pairs.jsonl'}:3: the prompt has {tokens}")
    assert f"more than data.max_prompt_length = {tokens - 1}" in err

    assert _validate(tmp_path, "smollm2", rows, max_prompt_length=tokens) == 0
    assert f"prompt lengths: 4 prompts within data.max_prompt_length = {tokens}" in (
        capsys.readouterr().out
    )
    assert _validate(tmp_path, "smollm2", rows, max_prompt_length=8, long_prompts="drop") == 0
    assert "are dropped (data.long_prompts = 'drop')" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_that_does_not_load_offline_skips_the_check(
    tiny_model, tmp_path, no_weights, capsys
):
    """A model folder whose tokenizer files are missing: validate passes, saying it skipped."""
    bare = tmp_path / "bare_model"
    bare.mkdir()
    shutil.copy(tiny_model / "config.json", bare / "config.json")
    rows = [SHORT, {**SHORT, "prompt": LONG_PROMPT}]
    assert _validate(tmp_path, str(bare), rows, max_prompt_length=4) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("prompt lengths:")]
    assert len(skipped) == 1 and "skipped, the tokenizer of" in skipped[0], out
    # with its tokenizer (the tiny character tokenizer), the same rows are refused by line
    assert _validate(tmp_path, str(tiny_model), rows, max_prompt_length=4) == 2
    assert ":2: the prompt has" in capsys.readouterr().err


def test_a_long_first_turn_of_a_conversation_is_found_too(tiny_model, tmp_path, capsys):
    """``messages`` rows: the prompt is what precedes the first trained (assistant) token."""
    talk = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    long = [{"role": "user", "content": "x" * 60}, talk[1]]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": talk}, {"messages": long}])
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f"[model]\nname = {json.dumps(str(tiny_model))}\n[data]\npath = {json.dumps(str(data))}\n"
        'max_prompt_length = 40\n[objective]\nname = "ce"\n'
        f"[output]\ndir = {json.dumps(str(tmp_path / 'run'))}\n"
    )
    assert cli.main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"lmloss: error: {data}:2: the prompt has "), err
