"""No second process, crash, full disk or signal costs a run its data (issue 26).

Each test replays one attack on a run directory: an ``--overwrite`` from a second process,
several processes racing for a stale lock, a kill or a full disk (``RLIMIT_FSIZE``) while
``metrics.jsonl`` is cut back or a checkpoint written, a refused run's leftovers, SIGINT and
SIGTERM during training.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_testkit import SAY_ROWS, sft_run, write_jsonl

from lmloss.cli import main
from lmloss.train import checkpoint, progress, rundir
from lmloss.train.loop import Trainer, train
from lmloss.train.progress import read_jsonl, truncate_after
from lmloss.train.signals import Interrupted

QUIET = {"echo": lambda *_: None}
# rundir.py needs only the standard library: subprocesses load it alone, without torch
HOLD_LOCK = (
    "import importlib.util, sys, time; from pathlib import Path\n"
    "spec = importlib.util.spec_from_file_location('rundir', sys.argv[2])\n"
    "rundir = importlib.util.module_from_spec(spec); spec.loader.exec_module(rundir)\n"
    "go = Path(sys.argv[3]) if len(sys.argv) > 3 else None\n"
    "if go is not None: print('ready', flush=True)\n"
    "while go is not None and not go.exists(): time.sleep(0.001)\n"
    "try:\n"
    "    rundir.RunLock(Path(sys.argv[1])).acquire(lambda line: None); print('got', flush=True)\n"
    "    time.sleep(float(sys.argv[4]) if len(sys.argv) > 4 else 30)\n"
    "except ValueError:\n"
    "    print('refused', flush=True)\n"
)


def _run(tiny_model, tmp_path, name="run", **sections):
    return sft_run(tiny_model, tmp_path, name, steps=2, **sections)


def _holder(run_dir: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-c", HOLD_LOCK, str(run_dir), rundir.__file__, *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def _listing(run_dir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(run_dir)): p.stat().st_size
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != rundir.LOCK
    }


# ---- a second process


def test_overwrite_from_a_second_process_deletes_nothing_of_the_live_run(tiny_model, tmp_path):
    run = _run(tiny_model, tmp_path, output={"save_every": 1})
    train(run, **QUIET)
    run_dir = tmp_path / "run"
    before = _listing(run_dir)
    assert {"recipe.json", "metrics.jsonl"} <= set(before)
    live = _holder(run_dir)  # the "running" job holds the lock
    try:
        assert live.stdout.readline().strip() == "got"
        with pytest.raises(ValueError, match=f"in use by process {live.pid}"):
            Trainer(run, overwrite=True, **QUIET)
        with pytest.raises(ValueError, match="in use"):
            rundir.take(run_dir, resume=False, overwrite=True, echo=QUIET["echo"])
        assert _listing(run_dir) == before  # nothing deleted
    finally:
        live.kill()
        live.wait()


def test_racing_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = json.dumps({"pid": gone.pid, "host": os.uname().nodename, "started": "1"})
    for trial in range(4):
        run_dir = tmp_path / f"trial{trial}"
        run_dir.mkdir()
        (run_dir / rundir.LOCK).write_text(stale)
        go = tmp_path / f"go{trial}"
        racers = [_holder(run_dir, str(go), "0.5") for _ in range(3)]
        assert all(p.stdout.readline().strip() == "ready" for p in racers)
        go.touch()  # all three are polling for it: they race
        outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
        assert outcomes == ["got", "refused", "refused"], (trial, outcomes)


# ---- a kill or a full disk while writing


def _in_child(target, *args) -> int:
    """Run ``target(*args)`` in a forked child; its exit code (negative: killed by a signal)."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the child process hung")
    return child.exitcode


def _metrics(path: Path, rows: int = 100) -> bytes:
    write_jsonl(path, [{"step": s, "loss": 1.0 / s, "note": "x" * 40} for s in range(1, rows + 1)])
    return path.read_bytes()


def _killed_while_cutting(path: Path, where: str) -> None:
    def die(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "writing":  # after a few rows of the new file
        real, count = progress.json.dumps, [0]

        def dumps(*args, **kwargs):
            count[0] += 1
            if count[0] == 10:
                die()
            return real(*args, **kwargs)

        progress.json.dumps = dumps
    else:  # the new file complete, not yet renamed
        progress.os.replace = die
    truncate_after(path, 40)


@pytest.mark.parametrize("where", ["writing", "renaming"])
def test_a_kill_inside_truncate_after_keeps_every_row(tmp_path, where):
    path = tmp_path / "metrics.jsonl"
    original = _metrics(path)
    assert _in_child(_killed_while_cutting, path, where) == -signal.SIGKILL
    assert path.read_bytes() == original  # steps 41-100 are still there
    truncate_after(path, 40)  # the resume after the kill cuts, and clears the leftover
    assert [r["step"] for r in read_jsonl(path)] == list(range(1, 41))
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def _with_file_size_limit(limit: int, work, *args) -> None:
    """``work(*args)`` with files limited to ``limit`` bytes (a full disk); exit code 3 when
    it raised the expected one-line error, 4 when it did not raise."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        work(*args)
    except OSError:
        os._exit(3)
    except checkpoint.CheckpointError as error:
        message = str(error)
        os._exit(3 if "\n" not in message and "could not write checkpoint" in message else 5)
    os._exit(4)


def test_a_full_disk_while_cutting_metrics_keeps_every_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    original = _metrics(path)
    assert _in_child(_with_file_size_limit, 1000, truncate_after, path, 40) == 3
    assert path.read_bytes() == original


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tiny_model, tmp_path):
    run = _run(tiny_model, tmp_path, output={"save_every": 1})
    trainer = Trainer(run, **QUIET)
    trainer.train_step()
    trainer.save()
    trainer.train_step()
    root = tmp_path / "run" / "checkpoints"
    assert _in_child(_with_file_size_limit, 4096, trainer.save) == 3
    trainer.close()
    assert checkpoint.latest(root).step == 1
    assert not list(root.glob(".tmp-*"))  # the partial checkpoint was removed


# ---- a refused run leaves its directory as it found it


def test_a_run_refused_at_its_first_step_leaves_no_trace(tiny_model, tmp_path, monkeypatch):
    run = _run(tiny_model, tmp_path)

    def refuse(self):
        raise ValueError("objective.beta must be a float")

    monkeypatch.setattr(Trainer, "train_step", refuse)
    with pytest.raises(ValueError, match="beta"):
        train(run, **QUIET)
    assert not (tmp_path / "run").exists()  # made by the run, removed again
    monkeypatch.undo()
    assert train(run, **QUIET).steps == 2  # the corrected rerun is not "already holds a run"


def test_a_refused_run_keeps_what_was_in_its_folder(tiny_model, tmp_path, monkeypatch):
    run = _run(tiny_model, tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    monkeypatch.setattr(Trainer, "train_step", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(run, **QUIET)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("file", "is a file, not a directory"),
        ("file/run", "is a file, not a directory"),
        ("locked/run", "is not writable"),
    ],
)
def test_an_output_dir_that_cannot_be_one_is_one_line(tiny_model, tmp_path, output, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "locked").mkdir(mode=0o500)
    if output.startswith("locked") and os.access(tmp_path / "locked", os.W_OK):
        pytest.skip("running as root: permissions do not bind")
    run = _run(tiny_model, tmp_path, name=output)
    with pytest.raises(ValueError, match=message):
        Trainer(run, **QUIET)


# ---- signals


def _signal_at_step(signum: int, at: int):
    real = Trainer.train_step

    def step(self):
        row = real(self)
        if self.step == at:
            os.kill(os.getpid(), signum)  # delivered now, handled by the loop's handler
        return row

    return step


def test_ctrl_c_saves_the_step_and_says_how_to_resume(tiny_model, tmp_path, monkeypatch):
    """SIGINT in-process (SIGTERM end to end: test_sigterm_to_the_cli_saves_and_exits_143)."""
    signum = signal.SIGINT
    run = _run(tiny_model, tmp_path, train={"max_steps": 6}, output={"save_every": 4})
    monkeypatch.setattr(Trainer, "train_step", _signal_at_step(signum, 2))
    with pytest.raises(Interrupted) as stopped:
        train(run, **QUIET)
    name = signal.Signals(signum).name
    assert stopped.value.exit_code == 128 + signum
    assert f"stopped by {name} after step 2; saved" in str(stopped.value)
    assert str(stopped.value).endswith(f"--output {tmp_path / 'run'} --resume")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").step == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    monkeypatch.undo()
    assert train(run, resume=True, **QUIET).steps == 6


def test_a_signal_without_checkpoints_says_the_run_cannot_continue(
    tiny_model, tmp_path, monkeypatch
):
    run = _run(tiny_model, tmp_path, train={"max_steps": 4}, output={"save_every": 0})
    monkeypatch.setattr(Trainer, "train_step", _signal_at_step(signal.SIGTERM, 1))
    with pytest.raises(Interrupted, match=r"keeps no checkpoint.*--overwrite"):
        train(run, **QUIET)


def test_sigterm_to_the_cli_saves_and_exits_143(tiny_model, tmp_path):
    """The real thing: a ``lmloss train`` process sent SIGTERM mid-run."""
    data = write_jsonl(tmp_path / "sft.jsonl", SAY_ROWS)
    toml = tmp_path / "r.toml"
    toml.write_text(
        f'[model]\nname = "{tiny_model}"\n[data]\npath = "{data}"\nmax_length = 64\n'
        "max_prompt_length = 32\n[objective]\nname = 'ce'\n[train]\nmax_steps = 100000\n"
        "batch_size = 2\nthreads = 1\nprecision = 'fp32'\n[output]\nprogress = false\n"
        "plot = false\nsave_model = false\nsave_every = 1000\n"
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "lmloss", "train", str(toml), "--output", str(tmp_path / "run")]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(read_jsonl(metrics)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    last = err.decode().strip().splitlines()[-1]
    assert proc.returncode == 143, err.decode()
    step = checkpoint.latest(tmp_path / "run" / "checkpoints").step
    assert last.startswith(f"lmloss: stopped by SIGTERM after step {step}; saved ")
    assert last.endswith("--resume")
    assert read_jsonl(metrics)[-1]["step"] == step


def test_ctrl_c_while_loading_is_one_line(tiny_model, tmp_path, monkeypatch, capsys):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lmloss.train.model_loading.load", interrupted)
    data = write_jsonl(tmp_path / "sft.jsonl", SAY_ROWS)
    argv = ["train", "--set", f"model.name={json.dumps(str(tiny_model))}"]
    argv += ["--set", f"data.path={json.dumps(str(data))}", "--set", "objective.name='ce'"]
    argv += ["--output", str(tmp_path / "run")]
    before = signal.getsignal(signal.SIGTERM)
    assert main(argv) == 130
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler is gone again
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmloss: interrupted (train)")
    assert not (tmp_path / "run").exists()
