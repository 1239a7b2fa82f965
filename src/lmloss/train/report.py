"""The end-of-run report: an honest before/after table, wall time and peak memory."""

from __future__ import annotations

import json
import resource

from lmloss.train.loop import Summary

LABELS = {
    "accuracy": "accuracy (exact numeric answer)",
    "bare_number": "answers that are a bare number",
    "answer_tokens": "mean answer length (tokens)",
}


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def times(summary: Summary) -> str:
    """The run's wall time, labelled: loading, training (with evaluation), export."""
    training = summary.seconds - summary.export_seconds
    total = summary.load_seconds + summary.seconds
    return (
        f"{total:.0f} s wall: load {summary.load_seconds:.0f} s, train {training:.0f} s, "
        f"export {summary.export_seconds:.0f} s"
    )


def render(summary: Summary, command: str) -> str:
    lines = [
        f"Run: {summary.run_dir}  ({summary.steps} steps, {times(summary)}, "
        f"peak memory {peak_memory_mb():.0f} MB)",
        f"Command: {command}",
        "",
    ]
    if summary.before is not None or summary.after is not None:
        before = (summary.before or {}).get("metrics", {})
        after = (summary.after or {}).get("metrics", {})
        problems = before.get("problems") or after.get("problems")
        lines += [f"Held-out evaluation ({problems} problems never seen in training, greedy):", ""]
        lines += ["| metric | before | after |", "|---|---|---|"]
        for key, label in LABELS.items():
            if key in before or key in after:
                b = f"{before[key]:.3f}" if key in before else "-"
                a = f"{after[key]:.3f}" if key in after else "-"
                lines.append(f"| {label} | {b} | {a} |")
        lines.append("")
    if summary.losses:
        lines.append(
            f"loss: first step {summary.losses[0]:.4f}, last step {summary.losses[-1]:.4f}"
        )
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
        "command": command,
    }
    (summary.run_dir / "summary.json").write_text(json.dumps(data, indent=2))
    return text
