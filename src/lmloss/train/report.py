"""The end-of-run report: an honest before/after table, wall time, peak memory, and whether
the run went wrong (:mod:`lmloss.train.health`), in ``summary.md``, ``summary.json`` and
the last console line."""

from __future__ import annotations

import json
import resource

from lmloss.train.loop import Summary

LABELS = {
    "accuracy": "accuracy (exact numeric answer)",
    "bare_number": "answers that are a bare number",
    "answer_tokens": "mean answer length (tokens)",
    "eval_loss": "held-out loss (data.eval_path)",
}


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _heldout_table(summary: Summary) -> list[str]:
    before, after = summary.metrics("before"), summary.metrics("after")
    if not before and not after:
        return []
    problems = before.get("problems") or after.get("problems")
    title = f"{problems} problems never seen in training, greedy" if problems else "held-out rows"
    lines = [f"Held-out evaluation ({title}):", "", "| metric | before | after |", "|---|---|---|"]
    for key, label in LABELS.items():
        if key in before or key in after:
            b = f"{before[key]:.3f}" if key in before else "-"
            a = f"{after[key]:.3f}" if key in after else "-"
            lines.append(f"| {label} | {b} | {a} |")
    return [*lines, ""]


def times(summary: Summary) -> str:
    """The run's wall time, labelled: loading, training (with evaluation), export."""
    training = summary.seconds - summary.export_seconds
    total = summary.load_seconds + summary.seconds
    return (
        f"{total:.0f} s wall: load {summary.load_seconds:.0f} s, train {training:.0f} s, "
        f"export {summary.export_seconds:.0f} s"
    )


def render(summary: Summary, command: str) -> str:
    """The report; its last line says whether the run went wrong (when it was judged)."""
    lines = [
        f"Run: {summary.run_dir}  ({summary.steps} steps, {times(summary)}, "
        f"peak memory {peak_memory_mb():.0f} MB)",
        f"Command: {command}",
        "",
        *_heldout_table(summary),
    ]
    if summary.losses:
        lines.append(
            f"loss: first step {summary.losses[0]:.4f}, last step {summary.losses[-1]:.4f}"
        )
    if summary.health is not None:
        lines.append(summary.health.line())
    return "\n".join(lines)


def write(summary: Summary, command: str) -> str:
    text = render(summary, command)
    (summary.run_dir / "summary.md").write_text(text + "\n")
    data = {
        "steps": summary.steps,
        "seconds": summary.seconds,
        "load_seconds": summary.load_seconds,
        "export_seconds": summary.export_seconds,
        "peak_memory_mb": peak_memory_mb(),
        "before": summary.before,
        "after": summary.after,
        "health": summary.health.as_dict() if summary.health is not None else None,
        "command": command,
    }
    (summary.run_dir / "summary.json").write_text(json.dumps(data, indent=2))
    return text
