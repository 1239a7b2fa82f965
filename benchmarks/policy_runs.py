"""Side by side: finished `lmloss train` policy runs (docs/policy.md, the GRPO/DAPO comparison).

    python benchmarks/policy_runs.py RUN_DIR [RUN_DIR ...]

Reads each run's ``metrics.jsonl`` and ``eval.jsonl`` and prints markdown tables: held-out
accuracy at each evaluation, the completions sampled (the sample budget), seconds per
step (median, and the sampling steps apart from the reused ones), and the sampling entropy
and the verifier's reward every few steps. It measures nothing itself: the runs' own
logs are the figures.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from lmloss.train.progress import read_jsonl


def summary(run: Path) -> dict:
    steps = read_jsonl(run / "metrics.jsonl")
    evals = read_jsonl(run / "eval.jsonl")
    group = _group_size(run)
    # a step that sampled logs the generation's seconds; a reused step repeats its metrics
    sampled = [
        s
        for i, s in enumerate(steps)
        if i == 0 or s.get("generate_seconds") != steps[i - 1].get("generate_seconds")
    ]
    completions = sum(int(s.get("sampling_rounds", 1)) * _prompts(run) * group for s in sampled)
    return {
        "name": run.name,
        "steps": len(steps),
        "generations": len(sampled),
        "completions": completions,
        "evals": {e["step"]: (e["accuracy"], e["problems"]) for e in evals},
        "median_step_s": statistics.median(s["seconds"] for s in steps[1:]),
        "median_sampling_step_s": statistics.median(s["seconds"] for s in sampled[1:]),
        "total_train_s": sum(s["seconds"] for s in steps),
        "entropy": {s["step"]: s["entropy"] for s in steps},
        # the verifier's reward alone (DAPO's total also holds the overlong punishment)
        "reward": {s["step"]: s.get("reward/exact_numeric", s["reward"]) for s in steps},
        "clip_frac": statistics.mean(s.get("clip_frac", 0.0) for s in steps),
    }


def _recipe(run: Path) -> dict:
    import json

    return json.loads((run / "recipe.json").read_text())


def _group_size(run: Path) -> int:
    return int(_recipe(run)["policy"]["group_size"])


def _prompts(run: Path) -> int:
    return int(_recipe(run)["train"]["batch_size"])


def main(runs: list[str]) -> None:
    rows = [summary(Path(r)) for r in runs]
    print(
        "| run | steps | generations | completions sampled | median s/step | "
        "median s/sampling step | train s | mean clip_frac |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['steps']} | {r['generations']} | {r['completions']} | "
            f"{r['median_step_s']:.0f} | {r['median_sampling_step_s']:.0f} | "
            f"{r['total_train_s']:.0f} | {r['clip_frac']:.3f} |"
        )
    print()
    print("| held-out accuracy (problems) | " + " | ".join(r["name"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for step in sorted({s for r in rows for s in r["evals"]}):
        cells = [
            f"{r['evals'][step][0]:.3f} ({r['evals'][step][1]})" if step in r["evals"] else ""
            for r in rows
        ]
        print(f"| step {step} | " + " | ".join(cells) + " |")
    print()
    print(
        "| step | "
        + " | ".join(f"{r['name']} entropy | {r['name']} exact_numeric" for r in rows)
        + " |"
    )
    print("|---|" + "---|---|" * len(rows))
    last = max(r["steps"] for r in rows)
    for step in sorted({1, *range(5, last + 1, 5), last}):
        cells = []
        for r in rows:
            entropy, reward = r["entropy"].get(step), r["reward"].get(step)
            cells += [
                f"{entropy:.3f}" if entropy is not None else "",
                f"{reward:.3f}" if reward is not None else "",
            ]
        print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
