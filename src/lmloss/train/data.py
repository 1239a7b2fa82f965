"""Rows from local files (or a built-in task), tokens from rows, batches from tokens.

* Files: JSONL, Parquet or CSV on the local disk, read with Hugging Face ``datasets``
  (offline; nothing is fetched from the hub). Columns may be renamed with ``data.columns``.
* Chat templates: prompts (strings or lists of ``{role, content}`` messages) are wrapped in
  the tokenizer's chat template with the generation prompt; a completion is the assistant
  turn that follows, ending with the template's end-of-turn token.
* Prompt masking (``data.train_on``): ``assistant`` trains every assistant turn (the
  completion), ``last`` only the last assistant turn, ``all`` every token.
* Lengths: a prompt over ``max_prompt_length`` stops the run with an error naming the row
  (or, with ``long_prompts = "drop"``, the row is dropped); a sequence over ``max_length``
  loses the end of its completion. Both are counted and reported, never silent.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmloss.train import tasks
from lmloss.train.config import DataConfig
from lmloss.train.files import read_rows
from lmloss.train.formats import DataError
from lmloss.train.hub import dataset_directory, is_hub_id

IGNORE = -100
HOST = torch.device("cpu")  # batches are assembled here; the trainer moves them to its device


# --------------------------------------------------------------------------- rows


def encode_rows(encode, rows: list[dict], positions: Sequence[int], source: str) -> list:
    """``encode(i, row)`` of every row; a row it refuses is named by file and line (the
    encoders say ``row <index>``, an index into ``rows``, not a line of the file)."""
    out = []
    for index, row in enumerate(rows):
        try:
            out.append(encode(index, row))
        except DataError:
            raise
        except ValueError as error:
            what = re.sub(rf"^row {index}: ", "", str(error))
            raise DataError(source, positions[index], what) from None
    return out


def load_rows(config: DataConfig, run_dir: Path, seed: int) -> tuple[list[dict], str]:
    """The rows of ``data.path`` or of the built-in ``data.task``; returns (rows, source)."""
    if config.task is not None:
        rows = tasks.generate(config.task, config.task_size, seed=seed, split="train")
        path = run_dir / "data" / f"{config.task}-train.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        # written aside and renamed: data-parallel ranks write the same file at once
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        aside.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(aside, path)
    else:
        path = Path(config.path)
        if not path.exists() and is_hub_id(config.path):
            return read_hub_dataset(config.path), f"hub:{config.path}"
    return read_file(path), str(path)


def read_hub_dataset(name: str) -> list[dict]:
    """The ``train`` split of Hub data set ``name`` (see :mod:`lmloss.train.hub`)."""
    import datasets

    datasets.disable_progress_bars()
    directory = dataset_directory(name)
    return datasets.load_dataset(str(directory), split="train", keep_in_memory=True).to_list()


def read_file(path: Path) -> list[dict]:
    """Rows of a local JSONL / JSON / CSV / Parquet file (errors name the file and row)."""
    return read_rows(path)[0]


def rename_columns(rows: list[dict], columns: dict[str, str], source: str = "data") -> list[dict]:
    """``data.columns = {canonical = "name in the file"}`` applied to every row; a name
    the file does not have is an error (a typo would otherwise be ignored)."""
    if rows and columns:
        missing = {k: v for k, v in columns.items() if v not in rows[0]}
        if missing:
            canonical, actual = next(iter(missing.items()))
            raise ValueError(
                f"{source}: data.columns renames {actual!r} to {canonical!r}, but the file has "
                f"no column {actual!r}; it has {', '.join(map(repr, sorted(rows[0])))}"
            )
    out = []
    for row in rows:
        row = dict(row)
        for canonical, actual in columns.items():
            if actual in row:
                row[canonical] = row.pop(actual)
        out.append(row)
    return out


def require_columns(rows: list[dict], needed: Sequence[str], source: str, why: str) -> None:
    """Every row has the ``needed`` columns, else a ValueError naming them and the file."""
    present = set(rows[0]) if rows else set()
    missing = [c for c in needed if c not in present]
    if not rows:
        raise ValueError(f"{source} has no rows")
    if missing:
        raise ValueError(
            f"{source} lacks column(s) {', '.join(map(repr, missing))} needed by {why}; it has "
            f"{', '.join(map(repr, sorted(present)))} (rename with data.columns = "
            f"{{{missing[0]} = '...'}})"
        )


# --------------------------------------------------------------------------- tokens


@dataclass
class LengthReport:
    """What the length limits did to the data; printed and saved with the run."""

    rows: int = 0
    dropped_long_prompts: int = 0
    truncated_completions: int = 0
    truncated_tokens: int = 0
    examples: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"data: {self.rows} rows"]
        if self.dropped_long_prompts:
            out.append(f"  dropped {self.dropped_long_prompts} rows whose prompt is too long")
        if self.truncated_completions:
            out.append(
                f"  truncated {self.truncated_completions} completions "
                f"({self.truncated_tokens} tokens cut) to fit data.max_length"
            )
        return out


class Encoder:
    """Turns prompts, completions and conversations into token ids for one tokenizer."""

    def __init__(self, tokenizer, config: DataConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if config.chat_template == "on" and not has_template:
            raise ValueError("data.chat_template = 'on' but the tokenizer has no chat template")
        self.chat = has_template if config.chat_template == "auto" else config.chat_template == "on"
        self.eos = tokenizer.eos_token_id
        self.report = LengthReport()

    # ---- building blocks

    def _messages(self, prompt: str | list) -> list[dict]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self.config.system_prompt is not None and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": self.config.system_prompt}, *messages]
        return messages

    def _template(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def prompt(self, prompt: str | list) -> list[int]:
        """Token ids of a prompt, ending where the model's answer starts."""
        if self.chat:
            return self._template(self._messages(prompt), generation_prompt=True)
        if not isinstance(prompt, str):
            raise ValueError("a list-of-messages prompt needs a chat template")
        text = (self.config.system_prompt + "\n" if self.config.system_prompt else "") + prompt
        return list(self.tokenizer(text).input_ids)

    def completion(self, prompt: str | list, prompt_ids: list[int], completion: str) -> list[int]:
        """Token ids of the answer to ``prompt``, including the end-of-turn token."""
        if self.chat:
            messages = [*self._messages(prompt), {"role": "assistant", "content": completion}]
            full = self._template(messages, generation_prompt=False)
            if full[: len(prompt_ids)] == prompt_ids:
                return self._until_eos(full[len(prompt_ids) :])
        ids = list(self.tokenizer(completion, add_special_tokens=False).input_ids)
        return ids + ([self.eos] if self.eos is not None else [])

    def _until_eos(self, ids: list[int]) -> list[int]:
        """Cut what the template adds after the end-of-turn token (a newline, say)."""
        if self.eos in ids:
            return ids[: ids.index(self.eos) + 1]
        return ids

    def conversation(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """Ids of a whole chat and a mask of the assistant tokens (the trained ones)."""
        if not self.chat:
            raise ValueError("a messages column needs a chat template (data.chat_template)")
        messages = self._messages(messages)
        ids = self._template(messages, generation_prompt=False)
        if self.config.train_on == "all":
            return ids, [True] * len(ids)
        assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        if self.config.train_on == "last":
            assistant = assistant[-1:]
        trained = [False] * len(ids)
        for i in assistant:
            start = self._template(messages[:i], generation_prompt=True)
            end = self._template(messages[: i + 1], generation_prompt=False)
            if ids[: len(start)] != start or ids[: len(end)] != end:
                raise ValueError(
                    "the tokenizer's chat template does not render a conversation as the "
                    "concatenation of its turns; cannot find the assistant tokens"
                )
            turn = self._until_eos(end[len(start) :])
            for t in range(len(start), len(start) + len(turn)):
                trained[t] = True
        return ids, trained

    # ---- limits

    def check_prompt(self, ids: list[int], row_index: int) -> bool:
        """True to keep the row; a too-long prompt raises or is dropped (counted)."""
        limit = self.config.max_prompt_length
        if len(ids) <= limit:
            return True
        if self.config.long_prompts == "error":
            raise ValueError(
                f"row {row_index}: the prompt has {len(ids)} tokens, more than "
                f"data.max_prompt_length = {limit} (raise the limit, or set "
                "data.long_prompts = 'drop' to skip such rows)"
            )
        self.report.dropped_long_prompts += 1
        return False

    def fit(self, prompt_ids: list[int], completion_ids: list[int]) -> list[int]:
        """The completion cut so that prompt + completion fits ``max_length`` (counted)."""
        room = self.config.max_length - len(prompt_ids)
        if len(completion_ids) <= room:
            return completion_ids
        self.report.truncated_completions += 1
        self.report.truncated_tokens += len(completion_ids) - room
        return completion_ids[:room]


# --------------------------------------------------------------------------- batches


@dataclass
class Sequences:
    """Right-padded rows: ids, attention mask and next-token targets (``IGNORE`` = untrained).

    ``targets[:, t]`` is the token at ``t + 1`` where it is trained: the engine scores the
    hidden state at ``t`` against it (the causal shift is done here, once).
    """

    ids: torch.Tensor
    attention: torch.Tensor | None  # None: packed rows, attention follows the position ids
    targets: torch.Tensor

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())


def pad_sequences(rows: list[list[int]], trained: list[list[bool]], pad_id: int) -> Sequences:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=HOST)
    attention = torch.zeros(len(rows), width, dtype=torch.long, device=HOST)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long, device=HOST)
    for i, (row, mask) in enumerate(zip(rows, trained)):
        n = len(row)
        ids[i, :n] = torch.tensor(row, device=HOST)
        attention[i, :n] = 1
        keep = torch.tensor(mask, dtype=torch.bool, device=HOST)
        labels[i, :n] = torch.where(keep, ids[i, :n], IGNORE)
    return Sequences(ids=ids, attention=attention, targets=labels[:, 1:])


def prompt_completion(prompt_ids: list[int], completion_ids: list[int]):
    """One row and its trained-token mask: the completion only."""
    return prompt_ids + completion_ids, [False] * len(prompt_ids) + [True] * len(completion_ids)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask (for generation)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=HOST)
    attention = torch.zeros(len(rows), width, dtype=torch.long, device=HOST)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, device=HOST)
        attention[i, width - len(row) :] = 1
    return ids, attention


# --------------------------------------------------------------------------- order


class Sampler:
    """Seeded epoch permutations of ``n`` rows; its position is saved and restored exactly."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        if n == 0:
            raise ValueError("no rows left to train on")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.offset = 0, 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=generator, device=generator.device).tolist()

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        order = self._order()
        while len(out) < count:
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                order = self._order()
            step = min(count - len(out), self.n - self.offset)
            out += order[self.offset : self.offset + step]
            self.offset += step
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
