"""Verifiable tasks the project generates itself: arithmetic word problems with exact answers.

A task is a seeded generator of ``{"prompt", "answer"}`` rows. The problem space is
partitioned once, by a hash of each problem's text, into a train side and a held-out side:
no held-out problem is ever a training row, so an improvement on it is not memorization.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from lmloss._checks import require_choice

NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma", "Noah", "Zoe")
ITEMS = ("apples", "books", "coins", "pencils", "stickers", "marbles", "cookies", "cards")

# Each template: (text with {name}/{item}/{a}/{b} slots, answer, operand sampler).
Template = tuple[str, Callable[[int, int], int], Callable[[random.Random], tuple[int, int]]]


def _pair(low: int, high: int) -> Callable[[random.Random], tuple[int, int]]:
    return lambda rng: (rng.randint(low, high), rng.randint(low, high))


def _ordered(low: int, high: int) -> Callable[[random.Random], tuple[int, int]]:
    def sample(rng: random.Random) -> tuple[int, int]:
        a, b = sorted(rng.sample(range(low, high + 1), 2), reverse=True)
        return a, b

    return sample


def _divisible(rng: random.Random) -> tuple[int, int]:
    b = rng.randint(2, 4)
    return b * rng.randint(2, 5), b


# Small numbers: the bundled 135M model can do this arithmetic, but it rambles instead of
# answering; what training can teach in minutes is to answer, correctly and then stop.
TEMPLATES: tuple[Template, ...] = (
    ("{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
     lambda a, b: a + b, _pair(1, 9)),
    ("{name} had {a} {item} and gave away {b}. How many {item} are left?",
     lambda a, b: a - b, _ordered(2, 9)),
    ("{name} buys {a} boxes with {b} {item} in each box. How many {item} is that in total?",
     lambda a, b: a * b, _pair(2, 5)),
    ("{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
     lambda a, b: a // b, _divisible),
)  # fmt: skip

INSTRUCTION = "Reply with only the number."


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: int

    def row(self) -> dict:
        return {"prompt": self.prompt, "answer": str(self.answer)}


def arithmetic_problem(rng: random.Random) -> Problem:
    text, solve, sample = rng.choice(TEMPLATES)
    a, b = sample(rng)
    question = text.format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b)
    return Problem(prompt=f"{question} {INSTRUCTION}", answer=solve(a, b))


HELDOUT_EVERY = 5  # one problem in five (by a hash of its text) is held out


def split_of(prompt: str) -> str:
    """``"heldout"`` or ``"train"``: a fixed partition of the problem space by text hash."""
    return "heldout" if zlib.crc32(prompt.encode()) % HELDOUT_EVERY == 0 else "train"


def arithmetic(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``n`` distinct arithmetic word problems of one side of a fixed train/held-out split.

    The problem space is partitioned by a hash of the problem text, so no held-out problem
    can ever appear among the training rows, whatever the seeds and sizes; each split is
    drawn from its own seeded stream.
    """
    require_choice("split", split, ("train", "heldout"))
    rng = random.Random(f"{split}-{seed}")
    out, seen = [], set()
    for _ in range(1000 * n + 10_000):
        if len(out) == n:
            return [p.row() for p in out]
        problem = arithmetic_problem(rng)
        if problem.prompt not in seen and split_of(problem.prompt) == split:
            seen.add(problem.prompt)
            out.append(problem)
    raise ValueError(f"cannot draw {n} distinct {split} problems: the task space is too small")


# task name -> generator(n, seed, split) of rows with "prompt" and "answer"
TASKS: dict[str, Callable[..., list[dict]]] = {"arithmetic": arithmetic}
# task name -> {metric: reward function name (lmloss.train.rewards)} grading its answers
GRADERS: dict[str, dict[str, str]] = {
    "arithmetic": {"accuracy": "exact_numeric", "bare_number": "format_number"}
}


def generate(task: str, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Rows of the built-in task ``task``."""
    require_choice("task", task, TASKS)
    return TASKS[task](n, seed=seed, split=split)
