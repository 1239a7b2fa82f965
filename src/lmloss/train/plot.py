"""``lmloss plot run_dir/``: the run's curves as one PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from lmloss.train.progress import EVALS, METRICS, read_jsonl

# panel title -> predicate on a metric name; a panel is drawn when some metric matches
PANELS = (
    ("loss", lambda k: k in ("loss", "token_loss")),
    (
        "reward",
        lambda k: (
            k == "reward"
            or k.startswith("reward/")
            or k.startswith("rewards/chosen")
            or k.startswith("rewards/rejected")
        ),
    ),
    ("reward accuracy", lambda k: "accurac" in k),
    ("margin", lambda k: "margin" in k),
    ("KL", lambda k: k == "kl" or k.endswith("/kl") or k in ("forward_kl", "reverse_kl")),
    ("entropy", lambda k: "entropy" in k),
    ("completion length", lambda k: k == "completion_length"),
    ("learning rate", lambda k: k == "lr"),
)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw every available panel of ``metrics.jsonl`` (and held-out evals) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / METRICS)
    evals = read_jsonl(run_dir / EVALS)
    if not rows and not evals:
        raise ValueError(f"{run_dir} has no {METRICS} or {EVALS} to plot")
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))} - {"step"})
    panels = [(title, [k for k in keys if match(k)]) for title, match in PANELS]
    panels = [(title, ks) for title, ks in panels if ks]
    eval_keys = [k for k in ("accuracy", "bare_number") if any(k in e for e in evals)]
    if eval_keys:
        panels.append(("held-out eval", eval_keys))
    columns = min(3, len(panels))
    rows_n = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows_n, columns, figsize=(5 * columns, 3.4 * rows_n), squeeze=False)
    for ax, (title, ks) in zip(axes.flat, panels):
        source = evals if title == "held-out eval" else rows
        for k in ks:
            points = [(r["step"], r[k]) for r in source if isinstance(r.get(k), (int, float))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(ks) > 1 or title == "held-out eval":
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    path = Path(out) if out is not None else run_dir / "curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
