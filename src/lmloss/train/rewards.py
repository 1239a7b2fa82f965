"""Reward functions of online policy optimization: built-in verifiers and user functions.

A reward function takes the decoded completions and keyword columns, and returns one float
per completion::

    def my_reward(completions: list[str], prompts: list[str], **columns) -> list[float]

``columns`` holds the dataset's other columns for the same rows (``answer=[...]``), as
TRL passes them. Recipes name built-ins (:data:`BUILTIN`) or ``"module:function"``.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

RewardFn = Callable[..., Sequence[float]]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """The number a text states: its last number (thousands separators ignored)."""
    found = _NUMBER.findall(str(text).replace(",", ""))
    return float(found[-1]) if found else None


def exact_numeric(completions: list[str], answer: Sequence, **_: object) -> list[float]:
    """1 when the last number of the completion equals the ``answer`` column, else 0."""
    out = []
    for completion, expected in zip(completions, answer):
        target = parse_number(expected)
        if target is None:
            raise ValueError(f"answer {expected!r} holds no number")
        got = parse_number(completion)
        out.append(float(got is not None and math.isclose(got, target, abs_tol=1e-6)))
    return out


_ONLY_NUMBER = re.compile(r"\s*-?\d+(?:\.\d+)?\.?\s*")


def format_number(completions: list[str], **_: object) -> list[float]:
    """1 when the completion is a bare number (as the task's instruction asks), else 0."""
    return [float(_ONLY_NUMBER.fullmatch(c) is not None) for c in completions]


def soft_overlong_punishment(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, Eq. 13) of
    completions of ``lengths`` tokens, ``L_max = max_length``, ``L_cache = buffer``::

        0                                 |y| <= L_max - L_cache
        (L_max - L_cache - |y|) / L_cache  L_max - L_cache < |y| <= L_max
        -1                                L_max < |y|

    Built into the policy mode (``policy.overlong_buffer``): it needs token counts, which
    reward functions of decoded text do not see. A completion cut at ``max_length`` gets −1.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(
            f"policy.overlong_buffer must be in (0, max_new_tokens = {max_length}], got {buffer}"
        )
    lengths = lengths.to(torch.float32)
    start = max_length - buffer
    return ((start - lengths) / buffer).clamp(min=-1.0, max=0.0)


BUILTIN: dict[str, RewardFn] = {"exact_numeric": exact_numeric, "format_number": format_number}


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable."""


@dataclass(frozen=True)
class Reward:
    name: str
    fn: RewardFn
    weight: float


def resolve(name: str) -> RewardFn:
    """A built-in by name, or ``module:function`` imported from the Python path."""
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attribute = name.partition(":")
    if not sep:
        raise ValueError(
            f"reward {name!r} is neither a built-in ({', '.join(BUILTIN)}) nor 'module:function'"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward {name!r} cannot be loaded: {error}") from error
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not callable")
    return fn


def build(names: Sequence[str], weights: Sequence[float]) -> list[Reward]:
    weights = list(weights) or [1.0] * len(names)
    if not names:
        raise ValueError("policy.rewards is empty: online training needs a reward function")
    return [Reward(n, resolve(n), float(w)) for n, w in zip(names, weights)]


def score(
    rewards: Sequence[Reward], completions: list[str], prompts: list, columns: dict[str, list]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total ``[N]`` and the mean of each reward (for the logs).

    A reward function that raises, returns the wrong count or a non-finite value stops
    the run with a message naming it.
    """
    # rewards are Python numbers: they are summed on the host (the trainer moves the batch)
    total = torch.zeros(len(completions), dtype=torch.float32, device="cpu")
    means = {}
    for reward in rewards:
        try:
            values = reward.fn(completions=completions, prompts=prompts, **columns)
        except Exception as error:
            raise RewardError(
                f"reward function {reward.name!r} raised {type(error).__name__}: {error}"
            ) from error
        values = torch.as_tensor(list(values), dtype=torch.float32, device="cpu")
        if values.shape != (len(completions),):
            raise RewardError(
                f"reward function {reward.name!r} returned {values.numel()} values for "
                f"{len(completions)} completions"
            )
        if not bool(torch.isfinite(values).all()):
            raise RewardError(f"reward function {reward.name!r} returned a non-finite value")
        total += reward.weight * values
        means[reward.name] = float(values.mean())
    return total, means
