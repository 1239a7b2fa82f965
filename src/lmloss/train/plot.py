"""``lmloss plot run_dir/``: the run's curves as one PNG (matplotlib, no display needed).

One panel per quantity (loss, token loss, rewards, margins, KL, entropy, completion length,
gradient norm, learning rate, held-out metrics), whole-number step ticks, and values
written out as they are (no shared offset on the learning-rate axis)."""

from __future__ import annotations

from pathlib import Path

from lmloss.train.progress import EVALS, METRICS, read_jsonl

# panel title -> predicate on a metric name; a panel is drawn when some metric matches.
# One quantity per panel (chosen and rejected rewards are one quantity, on one scale).
PANELS = (
    ("loss", lambda k: k == "loss"),
    ("token loss", lambda k: k == "token_loss"),
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
    ("grad norm", lambda k: k == "grad_norm"),
    ("learning rate", lambda k: k == "lr"),
)
# held-out panels, from eval.jsonl
EVAL_PANELS = (
    ("held-out eval", ("accuracy", "bare_number")),
    ("held-out loss", ("eval_loss",)),
)


def _axes_style(ax, title: str) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter

    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    if title == "learning rate":  # each tick its own value: no shared exponent or offset
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    else:
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax.grid(alpha=0.3)


def panels_of(rows: list[dict], evals: list[dict]) -> list[tuple[str, list[str], list[dict]]]:
    """``(title, metric names, rows)`` of every panel with something to draw."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))} - {"step"})
    panels = [(title, [k for k in keys if match(k)], rows) for title, match in PANELS]
    for title, names in EVAL_PANELS:
        panels.append((title, [k for k in names if any(k in e for e in evals)], evals))
    return [p for p in panels if p[1]]


def draw(rows: list[dict], evals: list[dict], title: str):
    """The matplotlib figure of a run's metrics (one panel per quantity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = panels_of(rows, evals)
    columns = min(3, len(panels))
    rows_n = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows_n, columns, figsize=(5 * columns, 3.4 * rows_n), squeeze=False)
    for ax, (name, ks, source) in zip(axes.flat, panels):
        for k in ks:
            points = [(r["step"], r[k]) for r in source if isinstance(r.get(k), (int, float))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=k)
        _axes_style(ax, name)
        if len(ks) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw every available panel of ``metrics.jsonl`` (and held-out evals) to a PNG."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / METRICS)
    evals = read_jsonl(run_dir / EVALS)
    if not rows and not evals:
        raise ValueError(f"{run_dir} has no {METRICS} or {EVALS} to plot")
    figure = draw(rows, evals, run_dir.name)
    path = Path(out) if out is not None else run_dir / "curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
