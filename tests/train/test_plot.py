"""Run curves: one panel per quantity, whole-number steps, a plain learning-rate axis."""

from __future__ import annotations

import json

from lmloss.train.plot import draw, plot_run

ROWS = [
    {
        "step": s,
        "loss": 3 - 0.2 * s,
        "token_loss": 2.9 - 0.2 * s,
        "lr": 1e-5 * s / 3,
        "grad_norm": 1 / s,
    }
    for s in range(1, 4)
]
EVALS = [{"step": 0, "eval_loss": 3.1}, {"step": 3, "eval_loss": 2.5}]


def test_one_panel_per_quantity_with_integer_steps():
    figure = draw(ROWS, EVALS, "run")
    axes = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    assert set(axes) == {"loss", "token loss", "grad norm", "learning rate", "held-out loss"}
    assert [len(ax.get_lines()) for ax in axes.values()] == [1] * 5
    figure.canvas.draw()
    for ax in axes.values():
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
    lr_axis = axes["learning rate"].yaxis
    labels = [t.get_text() for t in lr_axis.get_ticklabels() if t.get_text()]
    assert labels and all("e-" in text or text == "0" for text in labels), labels
    assert lr_axis.get_offset_text().get_text() == ""  # no shared "1e-5" factor or offset


def test_plot_run_writes_a_png(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    path = plot_run(tmp_path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_reward_panel_keeps_one_series_per_reward_component():
    rows = [
        {"step": s, "reward": 0.5, "reward/exact_numeric": 0.3, "reward/format_number": 0.2}
        for s in range(1, 4)
    ]
    figure = draw(rows, [], "run")
    (panel,) = [ax for ax in figure.axes if ax.get_title() == "reward"]
    labels = [line.get_label() for line in panel.get_lines()]
    assert labels == ["reward", "reward/exact_numeric", "reward/format_number"]
