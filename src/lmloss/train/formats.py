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
prompt              ``prompt`` (+ reward columns)                   itself
==================  ==============================================  ==========================

Prompts may be strings or message lists (TRL's "conversational" rows); a completion,
chosen or rejected answer may be a string or a list holding one assistant message. A
preference row without ``prompt`` (TRL's implicit prompt) has whole conversations as
``chosen`` and ``rejected``: their shared first turns are the prompt. ShareGPT role names
are mapped (``human`` -> ``user``, ``gpt`` -> ``assistant``; ``system`` kept).
``data.unpair = true`` turns each paired row into two unpaired rows (``label`` true for the
chosen answer, false for the rejected one), the form KTO trains on.

Every problem is a :class:`DataError` whose text is ``<file>:<row>: <what>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FORMATS = ("prompt_completion", "messages", "sharegpt", "preference", "unpaired", "prompt")
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
    if {"chosen", "rejected"} <= present:
        return "preference"
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
            out["rejected"] = self.answer(index, row, "rejected")
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
    return [checker.row(i, row, fmt) for i, row in enumerate(rows)], fmt


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
    "policy": ("prompt", "prompt_completion", "preference", "unpaired"),
}
FORMAT_COLUMNS = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
}


def objective_formats(entry) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The data formats an objective trains on and extra columns it reads: ``(formats,
    extra)``. Preference objectives read paired or unpaired rows by their input kind, plus a
    column per per-example input without a default (``strength`` of OSP)."""
    if entry.family != "preference":
        return FAMILY_FORMATS.get(entry.family, ()), ()
    spec = entry.spec
    formats = {"Pairs": ("preference",), "Unpaired": ("unpaired",)}.get(spec.kind, ())
    extra = tuple(n for n in spec.extra_inputs if n != "desirable")
    return formats, extra


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
    return text


def check_objective(fmt: str, entry, rows: list[dict], source: str, unpaired: bool) -> None:
    """The rows' format is one the objective trains on, else a ValueError naming both."""
    from lmloss.train.modes import mode_for

    mode_for(entry.family)  # families lmloss train cannot train are named first
    formats, extra = objective_formats(entry)
    why = f"the {entry.family} objective {entry.name!r}"
    if fmt not in formats:
        needed = FORMAT_COLUMNS[formats[0]] if formats else ()
        present = sorted(rows[0])
        missing = [c for c in needed if c not in rows[0]]
        hint = ""
        if formats == ("unpaired",) and fmt == "preference" and not unpaired:
            hint = "; paired rows train it with data.unpair = true"
        raise ValueError(
            f"{source} holds {fmt} rows; {why} needs {' or '.join(formats) or 'no'} rows"
            + (f": it lacks column(s) {', '.join(map(repr, missing))}" if missing else "")
            + f"; it has {', '.join(map(repr, present))}{hint} (rename with data.columns, "
            "or set data.format)"
        )
    for index, row in enumerate(rows):
        missing = [c for c in extra if row.get(c) is None]
        if missing:
            raise ValueError(
                f"{source} lacks column(s) {', '.join(map(repr, missing))} needed by {why} "
                f"(row {index + 1})"
            )
