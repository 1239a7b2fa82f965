"""Prompts over ``data.max_prompt_length`` found by ``lmloss validate``, with file and line.

The length of a prompt is a count of tokens, so it needs the tokenizer; the tokenizer needs
no weights and loads in seconds. ``lmloss validate`` loads it only from local files (the
bundled model's package, a model folder, the Hub cache) and tokenizes each prompt exactly as
the trainer will (:class:`lmloss.train.data.Encoder`: chat template, system prompt); a
prompt over the limit is named ``<file>:<line>``, as the trainer would name it after loading
the model. A tokenizer that does not load from local files skips the check, said in one line.
``lmloss train`` does not repeat it: it tokenizes every row right after loading the model.
"""

from __future__ import annotations

from pathlib import Path

from lmloss.models import BUNDLED_MODELS, smollm2_tokenizer
from lmloss.train.data import Encoder, encode_rows
from lmloss.train.hub import resolve_model


def offline_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of ``model.name`` from local files only (no weights are read)."""
    from transformers import AutoTokenizer

    if name in BUNDLED_MODELS:
        return smollm2_tokenizer()
    found = resolve_model(name)
    source = found if Path(found).is_dir() else name
    return AutoTokenizer.from_pretrained(
        source, local_files_only=True, trust_remote_code=trust_remote_code
    )


def prompt_ids(encoder: Encoder, row: dict) -> list[int]:
    """The prompt's tokens as the trainer's modes cut them: a ``prompt`` column's, or a
    conversation's tokens before its first trained one."""
    if row.get("messages") is not None:
        ids, trained = encoder.conversation(row["messages"])
        return ids[: trained.index(True)] if any(trained) else ids
    return encoder.prompt(row["prompt"])


def check_prompt_lengths(recipe, table) -> str:
    """Every prompt of ``table`` (a :class:`lmloss.train.validate.Table`) within
    ``data.max_prompt_length``; a ``DataError`` names the first one over it. Returns the
    report line."""
    config = recipe.data
    limit = f"data.max_prompt_length = {config.max_prompt_length}"
    if config.long_prompts != "error":
        return f"prompt lengths: over {limit} are dropped (data.long_prompts = 'drop')"
    if not table.rows or not {"prompt", "messages"} & set(table.rows[0]):
        return f"prompt lengths: not checked ({table.format} rows have no prompt)"
    try:
        tokenizer = offline_tokenizer(recipe.model.name, recipe.model.trust_remote_code)
    except Exception as error:  # whatever the loader raises: skip the check, never fail
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        return (
            f"prompt lengths: skipped, the tokenizer of {recipe.model.name!r} does not load "
            f"from local files ({reason}); the trainer checks them after loading the model"
        )
    encoder = Encoder(tokenizer, config)

    def length_ok(index: int, row: dict) -> bool:
        return encoder.check_prompt(prompt_ids(encoder, row), index)

    encode_rows(length_ok, table.rows, table.positions, table.source)
    return f"prompt lengths: {len(table.rows)} prompts within {limit}"
