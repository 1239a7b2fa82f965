"""Held-out evaluation: greedy answers on a verifiable task, graded by the task's verifiers;
a reward model's pairwise accuracy on held-out preference pairs.

The held-out split is generated apart from the training rows (see
:mod:`lmloss.train.tasks`); prompts are encoded exactly as in training (same chat
template and system prompt), answers decoded greedily with a fixed budget.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from lmloss.train import rewards, tasks
from lmloss.train.data import Encoder
from lmloss.train.files import read_rows
from lmloss.train.formats import normalize
from lmloss.train.generation import generate


def evaluate_task(
    model,
    tokenizer,
    encoder: Encoder,
    task: str,
    *,
    size: int,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    autocast: AbstractContextManager | None = None,
    shown: int = 3,
) -> dict:
    """Mean of each grader over ``size`` held-out problems, answer length, a few samples."""
    rows = tasks.generate(task, size, seed=seed, split="heldout")
    graders = {name: rewards.resolve(fn) for name, fn in tasks.GRADERS[task].items()}
    totals = {name: 0.0 for name in graders}
    tokens, samples = 0, []
    start = time.perf_counter()
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        prompts = [encoder.prompt(r["prompt"]) for r in chunk]
        out = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            autocast=autocast or nullcontext(),
        )
        texts = out.texts(tokenizer)
        columns = {k: [r[k] for r in chunk] for k in chunk[0] if k != "prompt"}
        for name, fn in graders.items():
            totals[name] += sum(
                fn(completions=texts, prompts=[r["prompt"] for r in chunk], **columns)
            )
        tokens += int(out.mask.sum())
        samples += [
            {"prompt": r["prompt"], "answer": r["answer"], "output": t}
            for r, t in zip(chunk[: max(0, shown - len(samples))], texts)
        ]
    result = {name: value / len(rows) for name, value in totals.items()}
    result["answer_tokens"] = tokens / len(rows)
    result["problems"] = len(rows)
    result["seconds"] = time.perf_counter() - start
    return {"metrics": result, "samples": samples}


def evaluate_pairs(judge, path: Path, batch_size: int) -> dict:
    """A reward model (:class:`~lmloss.train.reward_model.RewardModel`) on the held-out
    preference pairs of ``path``: ``pairwise_accuracy`` (chosen scored above rejected; a tie
    counts as wrong), mean ``margin`` (score of chosen minus rejected), and the mean scores."""
    rows, positions = read_rows(path)
    rows, fmt = normalize(rows, positions, str(path))
    if fmt != "preference":
        raise ValueError(f"--pairs {path}: needs prompt/chosen/rejected rows, got {fmt} rows")
    start = time.perf_counter()
    gaps, chosen_total = [], 0.0
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        prompts = [r["prompt"] for r in chunk]
        chosen = judge(prompts, [r["chosen"] for r in chunk])
        rejected = judge(prompts, [r["rejected"] for r in chunk])
        gaps.append(chosen - rejected)
        chosen_total += float(chosen.sum())
    gap = torch.cat(gaps)
    return {
        "pairwise_accuracy": float((gap > 0).float().mean()),
        "margin": float(gap.mean()),
        "mean_chosen_score": chosen_total / len(rows),
        "pairs": len(rows),
        "seconds": time.perf_counter() - start,
    }
