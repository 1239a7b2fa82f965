"""The run summary's wall time is labelled: loading, training (with evaluation) and export,
which add up to the whole run (loading and export used to be left out of "wall")."""

from __future__ import annotations

from pathlib import Path

from train_testkit import recipe, write_jsonl

from lmloss.train.loop import Summary, train
from lmloss.train.report import render


def test_the_report_labels_each_part_of_the_wall_time():
    summary = Summary(Path("run"), steps=3, seconds=50.0, load_seconds=30.0, export_seconds=8.0)
    first = render(summary, "lmloss train r.toml").splitlines()[0]
    assert "(3 steps, 80 s wall: load 30 s, train 42 s, export 8 s, peak memory" in first


def test_a_run_measures_its_loading_and_export(tiny_model, tmp_path):
    rows = [{"prompt": "say a", "completion": " a a"}] * 4
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    run = recipe(
        tiny_model, data, tmp_path / "run", {"name": "ce"}, train={"max_steps": 1},
        output={"save_model": True},
    )  # fmt: skip
    summary = train(run, echo=lambda *_: None)
    assert summary.load_seconds > 0 and 0 < summary.export_seconds < summary.seconds
    assert (tmp_path / "run" / "model").is_dir()
