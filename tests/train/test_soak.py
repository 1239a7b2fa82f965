"""Crash soak: a run killed with SIGKILL again and again, resumed each time, ends
bit-identical (weights and metrics) to a run that was never interrupted.

Each *life* is a process forked from a forkserver that imported torch and lmloss once, so
a life costs the run's own set-up, not Python's start. A life restarts the run the way a
job scheduler would (``--resume`` when a checkpoint exists, ``--overwrite`` when the run
died before its first one) and is killed at a random moment of one of three kinds:

* ``startup``: any time after the start (loading, resuming, the first steps);
* ``step``: just after a checkpoint was completed (inside the next step or save);
* ``save``: while a checkpoint is being written (``LMLOSS_TEST_SAVE_PAUSE`` sleeps at each
  stage of a save to widen that window).

``test_kill_resume_soak`` runs in CI (>= 20 kills); ``test_kill_resume_soak_long``
(``-m soak``, deselected by default) does 200.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_testkit import write_jsonl

from lmloss.train import checkpoint, rundir
from lmloss.train.loop import train
from lmloss.train.progress import read_jsonl
from lmloss.train.recipe import parse

SAVE_PAUSE = "0.01"  # seconds slept at each stage of a save
KINDS = ("startup", "step", "save")
# imported once by the forkserver, so that each life starts in a fraction of a second
PRELOAD = [
    "datasets",
    "transformers.models.llama.modeling_llama",
    "lmloss.train.loop",
    "lmloss.train.data",
    "test_soak",
]


def _recipe(model: Path, data: Path, run_dir: Path, steps: int) -> dict:
    return {
        "model": {"name": str(model)},
        "data": {"path": str(data), "max_length": 48, "max_prompt_length": 24},
        "objective": {"name": "ce"},
        "train": {"max_steps": steps, "batch_size": 2, "lr": 1e-2, "threads": 1},
        "output": {
            "dir": str(run_dir),
            "save_every": 1,
            "progress": False,
            "plot": False,
            "tensorboard": False,
        },
    }


def life(recipe: dict) -> None:
    """One process's attempt at the run: resume it, or start it (over)."""
    os.environ["LMLOSS_TEST_SAVE_PAUSE"] = SAVE_PAUSE
    torch.set_num_threads(1)
    run = parse(recipe)
    root = Path(run.output.dir)
    resume = checkpoint.latest(root / "checkpoints") is not None
    overwrite = not resume and bool(rundir.used_outputs(root))
    train(run, resume=resume, overwrite=overwrite, echo=lambda *_: None)


def _pointed_step(root: Path) -> int:
    try:
        return int((root / "latest").read_text().split("-")[1])
    except (OSError, ValueError, IndexError):
        return -1


def _saving(root: Path, after: int) -> bool:
    return any(int(p.name.split("-")[-1]) > after for p in root.glob(".tmp-step-*"))


def _kill_at_random(process, kind: str, root: Path, rng: random.Random) -> bool:
    """Wait for the moment ``kind`` names, then SIGKILL; False if the life ended first."""
    start, deadline = _pointed_step(root), time.monotonic() + 60
    if kind == "startup":
        ready = time.monotonic() + rng.uniform(0.0, 1.0)
        moment = lambda: time.monotonic() > ready  # noqa: E731
    elif kind == "step":
        moment = lambda: _pointed_step(root) > start  # noqa: E731
    else:
        moment = lambda: _saving(root, start)  # noqa: E731
    while not moment():
        if not process.is_alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    if kind != "startup":
        time.sleep(rng.uniform(0.0, 0.05 if kind == "save" else 0.1))
    if not process.is_alive():
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    process.close()
    return True


def _finished(run_dir: Path) -> dict:
    rows = [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in read_jsonl(run_dir / "metrics.jsonl")
    ]
    return {"rows": rows, "model": load_file(str(run_dir / "model" / "model.safetensors"))}


def _soak(tiny_model: Path, tmp_path: Path, steps: int, kills: int, seed: int) -> None:
    data = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"prompt": f"say {w}", "completion": w * (i % 4 + 1)} for i, w in enumerate("abcdefgh")],
    )
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)

    def run_life(recipe: dict):
        process = context.Process(target=life, args=(recipe,))
        process.start()
        return process

    whole = run_life(_recipe(tiny_model, data, tmp_path / "whole", steps))
    whole.join()
    assert whole.exitcode == 0

    run_dir = tmp_path / "killed"
    recipe = _recipe(tiny_model, data, run_dir, steps)
    expected = _finished(tmp_path / "whole")
    rng = random.Random(seed)
    killed, lives, completed = {kind: 0 for kind in KINDS}, 0, 0
    while sum(killed.values()) < kills:
        lives += 1
        assert lives < 4 * kills, f"only {killed} kills in {lives} lives"
        kind = rng.choice(KINDS)
        process = run_life(recipe)
        if _kill_at_random(process, kind, run_dir / "checkpoints", rng):
            killed[kind] += 1
            continue
        process.join()
        assert process.exitcode == 0, f"life {lives} failed with {process.exitcode}"
        if (run_dir / "model").is_dir():
            # the run outlived its kills (a fast machine): check it, then soak a new one
            _assert_same_run(run_dir, expected, steps)
            completed += 1
            shutil.rmtree(run_dir)
    last = run_life(recipe)
    last.join()
    assert last.exitcode == 0
    assert killed["step"] and killed["save"], killed
    _assert_same_run(run_dir, expected, steps)
    print(f"soak: {killed} kills in {lives} lives, {completed + 1} runs completed")


def _assert_same_run(run_dir: Path, expected: dict, steps: int) -> None:
    """The killed and resumed run ended bit-identical to the uninterrupted one."""
    got = _finished(run_dir)
    assert got["rows"] == expected["rows"]
    assert [r["step"] for r in got["rows"]] == list(range(1, steps + 1))
    assert got["model"].keys() == expected["model"].keys()
    for name, value in expected["model"].items():
        assert torch.equal(got["model"][name], value), name
    assert not (run_dir / rundir.LOCK).exists()


def test_kill_resume_soak(tiny_model, tmp_path):
    _soak(tiny_model, tmp_path, steps=30, kills=20, seed=0)


@pytest.mark.soak
def test_kill_resume_soak_long(tiny_model, tmp_path):
    _soak(tiny_model, tmp_path, steps=200, kills=200, seed=1)
