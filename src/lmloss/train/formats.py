"""Data formats: which kind of rows a file holds, checked row by row and brought to one shape.

Detected from the columns (after ``data.columns`` renames), or named by ``data.format``:

==================  ==============================================  ==========================
format              columns of a row                                becomes
==================  ==============================================  ==========================
prompt_completion   ``prompt``, ``completion``                      itself
messages            ``messages``: ``[{role, content}, ...]``         itself
sharegpt            ``conversations``: ``[{from, value}, ...]``      ``messages``
preference          ``prompt``, ``chosen``, ``rejected``            itself
unpaired            ``prompt``, ``completion``, ``label``           itself
listwise            ``prompt``, ``completions``, ``scores``         itself
negative            ``prompt``, ``rejected``                        itself
prompt              ``prompt`` (+ reward columns)                   itself
==================  ==============================================  ==========================

Prompts may be strings or message lists (TRL's "conversational" rows); a completion,
chosen or rejected answer may be a string or a list holding one assistant message. A
preference row without ``prompt`` (TRL's implicit prompt) has whole conversations as
``chosen`` and ``rejected``: their shared first turns are the prompt. ShareGPT role names
are mapped (``human`` -> ``user``, ``gpt`` -> ``assistant``; ``system`` kept).
``data.unpair = true`` turns each paired row into two unpaired rows (``label`` true for the
chosen answer, false for the rejected one), the form KTO trains on. A listwise row holds
``K >= 2`` answers to one prompt and one number per answer (higher is better; LiPO):
every row of a file holds the same ``K``. A negative row holds only a dispreferred answer
(NPO, D2O); ``data.format = "negative"`` reads the ``rejected`` answers of paired rows
that way.

Every problem is a :class:`DataError` whose text is ``<file>:<row>: <what>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

FORMATS = (
    "prompt_completion",
    "messages",
    "sharegpt",
    "preference",
    "unpaired",
    "listwise",
    "negative",
    "prompt",
)
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
    "function_call": "tool",
    "observation": "tool",
}
LABELS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class DataError(ValueError):
    """A problem with one row (or the whole file) of a data file: ``<file>:<row>: <what>``."""

    def __init__(self, source: str, row: int | None, what: str) -> None:
        super().__init__(f"{source}: {what}" if row is None else f"{source}:{row}: {what}")
        self.source, self.row, self.what = source, row, what


def detect(columns: Sequence[str]) -> str:
    """The data format of rows with these ``columns`` (see the module's table)."""
    present = set(columns)
    if "conversations" in present:
        return "sharegpt"
    if "messages" in present:
        return "messages"
    if {"completions", "scores"} <= present:
        return "listwise"
    if {"chosen", "rejected"} <= present:
        return "preference"
    if {"prompt", "rejected"} <= present:
        return "negative"
    if {"completion", "label"} <= present:
        return "unpaired"
    if {"prompt", "completion"} <= present:
        return "prompt_completion"
    if "prompt" in present:
        return "prompt"
    raise ValueError(
        f"cannot tell the data format from the columns {', '.join(map(repr, sorted(present)))}"
        f" (formats: {', '.join(FORMATS)}; rename columns with data.columns = "
        "{prompt = '...'} or name the format with data.format)"
    )


# --------------------------------------------------------------------------- checks of values


@dataclass
class RowChecker:
    """Checks and normalizes the rows of one file; ``positions[i]`` is row i's number there."""

    source: str
    positions: Sequence[int]

    def error(self, index: int, what: str) -> DataError:
        return DataError(self.source, self.positions[index], what)

    def text(self, index: int, row: dict, column: str) -> str:
        value = row.get(column)
        if column not in row:
            raise self.error(
                index, f"no column {column!r} (the row has {', '.join(map(repr, sorted(row)))})"
            )
        if value is None:
            raise self.error(index, f"column {column!r} is empty (null)")
        if not isinstance(value, str):  # a number too: JSON and Parquet keep the writer's type
            quoted = f' (write it as text: "{value}")' if _kind(value) in ("int", "float") else ""
            raise self.error(
                index, f"column {column!r} must be text, got {_kind(value)} {value!r}{quoted}"
            )
        return value

    def messages(self, index: int, value, column: str, roles=None) -> list[dict]:
        """A list of ``{role, content}`` messages (``roles``: ShareGPT ``from``/``value``)."""
        if value is None:
            raise self.error(index, f"column {column!r} is missing or empty (null)")
        if not isinstance(value, list) or not value:
            raise self.error(index, f"column {column!r} must be a non-empty list of messages")
        key_role, key_content = ("from", "value") if roles else ("role", "content")
        out = []
        for turn, message in enumerate(value):
            where = f"{column}[{turn}]"
            if not isinstance(message, dict):
                raise self.error(index, f"{where} must be a message object, got {_kind(message)}")
            role, content = message.get(key_role), message.get(key_content)
            if roles:
                if role not in roles:
                    raise self.error(
                        index,
                        f"{where}.{key_role} = {role!r} is not a known ShareGPT role "
                        f"({', '.join(roles)})",
                    )
                role = roles[role]
            elif role not in ROLES:
                raise self.error(
                    index, f"{where}.role = {role!r} must be one of {', '.join(ROLES)}"
                )
            if not isinstance(content, str):
                raise self.error(index, f"{where}.{key_content} must be text, got {_kind(content)}")
            out.append({"role": role, "content": content})
        return out

    def prompt(self, index: int, row: dict) -> str | list[dict]:
        value = row.get("prompt")
        if isinstance(value, list):
            return self.messages(index, value, "prompt")
        return self.text(index, row, "prompt")

    def answer(self, index: int, row: dict, column: str) -> str:
        """A completion: text, or a list holding one assistant message."""
        value = row.get(column)
        if not isinstance(value, list):
            return self.text(index, row, column)
        messages = self.messages(index, value, column)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise self.error(index, f"column {column!r} must hold one assistant message")
        return messages[0]["content"]

    def completions(self, index: int, row: dict) -> list[str]:
        """A listwise row's answers: a list of at least two, each as :meth:`answer` takes."""
        value = row.get("completions")
        if not isinstance(value, list) or len(value) < 2:
            raise self.error(
                index, f"column 'completions' must be a list of at least 2 answers, got {value!r}"
            )
        items = {f"completions[{i}]": item for i, item in enumerate(value)}
        return [self.answer(index, items, column) for column in items]

    def scores(self, index: int, row: dict, count: int) -> list[float]:
        """One finite number per answer of a listwise row (higher is better)."""
        value = row.get("scores")
        if not isinstance(value, list) or len(value) != count:
            raise self.error(
                index,
                f"column 'scores' must be a list of {count} numbers (one per completion), "
                f"got {value!r}",
            )
        for i, score in enumerate(value):
            if not isinstance(score, (int, float)) or isinstance(score, bool):
                raise self.error(index, f"scores[{i}] must be a number, got {_kind(score)}")
            if not math.isfinite(score):
                raise self.error(index, f"scores[{i}] must be a finite number, got {score}")
        return [float(score) for score in value]

    def label(self, index: int, row: dict) -> bool:
        value = row.get("label")
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in LABELS:
            return LABELS[value.strip().lower()]
        raise self.error(index, f"column 'label' must be true or false, got {value!r}")

    def implicit_prompt(self, index: int, row: dict) -> dict:
        """``chosen``/``rejected`` conversations -> shared prompt + one answer each."""
        chosen = self.messages(index, row.get("chosen"), "chosen")
        rejected = self.messages(index, row.get("rejected"), "rejected")
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt = chosen[:shared]
        if not prompt or rejected[:shared] != prompt:
            raise self.error(
                index,
                "rows without 'prompt' need chosen and rejected "
                "conversations that start with the same turns",
            )
        return {**row, "prompt": prompt, "chosen": chosen[shared:], "rejected": rejected[shared:]}

    # ---- one row of each format

    def row(self, index: int, row: dict, fmt: str) -> dict:
        if fmt == "sharegpt":
            messages = self.messages(
                index, row.get("conversations"), "conversations", SHAREGPT_ROLES
            )
            return {**_without(row, "conversations"), "messages": messages}
        if fmt == "messages":
            return {**row, "messages": self.messages(index, row.get("messages"), "messages")}
        if fmt == "preference" and "prompt" not in row:
            row = self.implicit_prompt(index, row)
        out = {**row, "prompt": self.prompt(index, row)}
        if fmt in ("prompt_completion", "unpaired"):
            out["completion"] = self.answer(index, row, "completion")
        if fmt == "unpaired":
            out["label"] = self.label(index, row)
        if fmt == "preference":
            out["chosen"] = self.answer(index, row, "chosen")
        if fmt in ("preference", "negative"):
            out["rejected"] = self.answer(index, row, "rejected")
        if fmt == "listwise":
            out["completions"] = self.completions(index, row)
            out["scores"] = self.scores(index, row, len(out["completions"]))
        return out


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _without(row: dict, column: str) -> dict:
    return {k: v for k, v in row.items() if k != column}


def normalize(
    rows: list[dict], positions: Sequence[int], source: str, fmt: str = "auto"
) -> tuple[list[dict], str]:
    """``rows`` checked and brought to their format's shape; returns (rows, format)."""
    if not rows:
        raise DataError(source, 1, "the file has no rows")
    if fmt == "auto":
        try:
            fmt = detect(rows[0])
        except ValueError as error:
            raise DataError(source, positions[0], str(error)) from None
    checker = RowChecker(source, positions)
    out = [checker.row(i, row, fmt) for i, row in enumerate(rows)]
    if fmt == "listwise":  # lists are batched as [B, K, T]: one K per file
        size = len(out[0]["completions"])
        for i, row in enumerate(out):
            if len(row["completions"]) != size:
                raise checker.error(
                    i,
                    f"the row has {len(row['completions'])} completions, the first row {size}: "
                    "every list of a file needs the same number",
                )
    return out, fmt


def unpair(rows: list[dict], positions: Sequence[int]) -> tuple[list[dict], list[int]]:
    """Paired rows -> unpaired rows: (prompt, chosen, label true), (prompt, rejected, false)."""
    out, where = [], []
    for row, position in zip(rows, positions):
        rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
        out += [
            {**rest, "completion": row["chosen"], "label": True},
            {**rest, "completion": row["rejected"], "label": False},
        ]
        where += [position, position]
    return out, where


# --------------------------------------------------------------------------- what objectives need


FAMILY_FORMATS = {
    "likelihood": ("prompt_completion", "messages", "sharegpt"),
    "distill": ("prompt_completion", "messages", "sharegpt"),
    "policy": ("prompt", "prompt_completion", "preference", "unpaired", "listwise", "negative"),
}
# a preference objective's input kind -> the format of its rows
KIND_FORMATS = {
    "Pairs": ("preference",),
    "Unpaired": ("unpaired",),
    "Lists": ("listwise",),
    "Negatives": ("negative",),
}
FORMAT_COLUMNS = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "listwise": ("prompt", "completions", "scores"),
    "negative": ("prompt", "rejected"),
    "prompt": ("prompt",),
}
# per-example inputs of an objective that its rows' format already holds
FORMAT_INPUTS = {"desirable": "label", "scores": "scores"}


def objective_formats(entry, online: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The data formats an objective trains on and extra columns it reads: ``(formats,
    extra)``. Preference objectives read the format of their input kind, plus a column per
    per-example input that format lacks (``strength`` of OSP); ``online`` (sampled pairs)
    they read prompts, as policy objectives do."""
    if online:
        return FAMILY_FORMATS["policy"], ()
    if entry.family == "classify":  # reward models train on pairs
        from lmloss.classify import PAIRWISE_SCORE_OBJECTIVES

        return (("preference",) if entry.name in PAIRWISE_SCORE_OBJECTIVES else ()), ()
    if entry.family != "preference":
        return FAMILY_FORMATS.get(entry.family, ()), ()
    spec = entry.spec
    extra = tuple(n for n in spec.extra_inputs if n not in FORMAT_INPUTS)
    return KIND_FORMATS.get(spec.kind, ()), extra


def _columns_of(fmt: str, extra: tuple[str, ...] = ()) -> str:
    return f"{fmt} rows ({', '.join(FORMAT_COLUMNS[fmt] + extra)})"


def objective_columns(entry) -> str:
    """The data columns an objective needs, in words (``lmloss describe``)."""
    formats, extra = objective_formats(entry)
    if not formats:
        return "none (a loss over generic logits; lmloss train does not train it)"
    options = [" + ".join(FORMAT_COLUMNS[f] + extra) + f" ({f})" for f in formats]
    text = " | ".join(options)
    if entry.family == "policy":
        text += "; other columns go to the reward functions as keyword arguments"
    if formats == ("unpaired",):
        text += "; paired rows with data.unpair = true"
    if formats == ("negative",):
        text += "; the rejected answers of paired rows with data.format = 'negative'"
    return text


def require_trainable(family: str) -> None:
    """Families whose objectives train on rows of text (classify: as reward models); the
    others lmloss train cannot train."""
    trainable = ("preference", "classify", *FAMILY_FORMATS)
    if family not in trainable:
        raise ValueError(
            f"objectives of the {family!r} family are not trainable by lmloss train (they are "
            f"losses over generic logits); trainable families: {', '.join(trainable)}"
        )


def _hint(fmt: str, formats: tuple[str, ...], unpaired: bool) -> str:
    """How rows of format ``fmt`` could train an objective of ``formats`` anyway."""
    if formats == ("unpaired",) and fmt == "preference" and not unpaired:
        return "; paired rows train it with data.unpair = true"
    if formats == ("negative",) and fmt == "preference":
        return "; paired rows train it on their rejected answers with data.format = 'negative'"
    return ""


def check_objective(
    fmt: str, entry, rows: list[dict], source: str, unpaired: bool, online: bool = False
) -> None:
    """The rows' format is one the objective trains on, else a ValueError naming the formats
    and columns that would fit."""
    require_trainable(entry.family)  # families lmloss train cannot train are named first
    formats, extra = objective_formats(entry, online)
    why = f"the {'online ' * online}{entry.family} objective {entry.name!r}"
    if fmt not in formats:
        needed = FORMAT_COLUMNS[formats[0]] if formats else ()
        present = sorted(rows[0])
        missing = [c for c in needed if c not in rows[0]]
        wanted = " or ".join(_columns_of(f, extra) for f in formats) or "no"
        raise ValueError(
            f"{source} holds {fmt} rows; {why} needs {wanted}"
            + (f": it lacks column(s) {', '.join(map(repr, missing))}" if missing else "")
            + f"; it has {', '.join(map(repr, present))}{_hint(fmt, formats, unpaired)} "
            "(rename with data.columns, or set data.format)"
        )
    for index, row in enumerate(rows):
        missing = [c for c in extra if row.get(c) is None]
        if missing:
            raise ValueError(
                f"{source} lacks column(s) {', '.join(map(repr, missing))} needed by {why} "
                f"(row {index + 1})"
            )
