"""Reward functions for examples/grpo.toml.

A reward function gets the decoded completions, the prompts and every other data column
of the same rows (as lists, by keyword) and returns one float per completion::

    def reward(completions: list[str], prompts: list, **columns) -> list[float]
"""

from __future__ import annotations

import re


def correct_number(completions: list[str], answer: list[str], **_columns) -> list[float]:
    """1 when the completion's last number is the ``answer`` column, else 0."""
    out = []
    for text, expected in zip(completions, answer):
        numbers = re.findall(r"-?\d+", text)
        out.append(float(bool(numbers) and numbers[-1] == str(expected).strip()))
    return out


def short_answer(completions: list[str], **_columns) -> list[float]:
    """Up to 1 for answers of a few characters, less for longer ones."""
    return [1.0 / (1.0 + max(0, len(text.strip()) - 4) / 8) for text in completions]
