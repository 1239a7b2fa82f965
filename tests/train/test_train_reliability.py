"""Runs that cannot be lost, mixed up or silently corrupted (issue 16).

Each test reproduces one way a run directory went wrong and shows what happens now:
checkpoints verify themselves and fall back to the newest good one; a run directory
belongs to one run; non-finite values stop (or skip) a step by name; a torn
``metrics.jsonl`` line does not block ``--resume``; ``train.dist_timeout`` reaches the
process group.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_testkit import SAY_ROWS, sft_run, write_jsonl

from lmloss.cli import main
from lmloss.train import checkpoint, distributed, rundir
from lmloss.train.loop import Trainer, train
from lmloss.train.nonfinite import NonFiniteError
from lmloss.train.progress import read_jsonl
from lmloss.train.recipe import parse

QUIET = {"echo": lambda *_: None}


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.trainable.items()}


@pytest.fixture(scope="module")
def three_checkpoints(tiny_model, tmp_path_factory):
    """A finished run with checkpoints at steps 1, 2, 3 and each step's weights."""
    root = tmp_path_factory.mktemp("three")
    run = sft_run(tiny_model, root, output={"save_every": 1, "keep": 3})
    train(run, **QUIET)
    folders = Path(run.output.dir) / "checkpoints"
    weights = {
        step: load_file(str(folders / f"step-{step:06d}" / "trainable.safetensors"))
        for step in (1, 2, 3)
    }
    return run, weights


@pytest.fixture
def saved_run(three_checkpoints, tmp_path):
    """A private copy of :func:`three_checkpoints`' run directory."""
    run, weights = three_checkpoints
    copy = tmp_path / "copy"
    shutil.copytree(run.output.dir, copy)
    output = dataclasses.replace(run.output, dir=str(copy))
    return dataclasses.replace(run, output=output), weights


def _root(run):
    return Path(run.output.dir) / "checkpoints"


def _resume(run):
    lines = []
    trainer = Trainer(run, resume=True, echo=lines.append)
    trainer.close()
    return trainer, "\n".join(lines)


# ---- 1. checkpoints that verify themselves


def test_repeated_save_of_the_last_step_never_removes_it(tiny_model, tmp_path, monkeypatch):
    # max_steps % save_every == 0: the last step is saved twice; the old code deleted the
    # first copy before renaming the second into place, and a kill there lost the run
    run = sft_run(tiny_model, tmp_path, train={"max_steps": 2}, output={"save_every": 2})
    real_rename = os.rename
    renames = []

    def killed_on_second_rename(src, dst):
        if ".tmp-step-" in str(src):
            renames.append(dst)
        if len(renames) > 1:
            raise OSError("killed")  # the process dies before the folder is back
        real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", killed_on_second_rename)
    train(run, **QUIET)
    monkeypatch.undo()
    found = checkpoint.latest(tmp_path / "run" / "checkpoints")
    assert found is not None and found.step == 2
    assert _resume(run)[0].step == 2


def test_manifest_lists_every_file(saved_run):
    run, _ = saved_run
    folder = checkpoint.latest(_root(run)).path
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    assert manifest["step"] == 3
    assert set(manifest["files"]) == set(checkpoint.FILES)
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def _flip(path, offset_from_end=100, count=8):
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[-offset_from_end - i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: _flip(f / "trainable.safetensors"), "trainable.safetensors does not match"),
        (lambda f: _flip(f / "optimizer.pt", 40, 1), "optimizer.pt does not match"),
        (lambda f: (f / "state.pt").write_bytes(b""), "state.pt has 0 bytes"),
        (lambda f: (f / "trainable.safetensors").unlink(), "trainable.safetensors is missing"),
        (lambda f: (f / checkpoint.MANIFEST).unlink(), "no manifest.json"),
        (lambda f: (f / checkpoint.MANIFEST).write_text("{"), "manifest.json is unreadable"),
        (lambda f: shutil.rmtree(f), "step-000003 does not exist"),
    ],
)
def test_damaged_checkpoint_is_named_and_the_previous_one_resumed(saved_run, damage, reason):
    run, weights = saved_run
    damage(_root(run) / "step-000003")
    trainer, said = _resume(run)
    assert trainer.step == 2
    assert "falling back to" in said and "step-000002" in said
    assert re.search(reason, said), said
    for name, value in weights[2].items():
        assert torch.equal(trainer.trainable[name].detach(), value)


@pytest.mark.parametrize("pointer", ["", "garbage", "../../other/checkpoints/step-000009\n"])
def test_latest_names_only_a_checkpoint_inside_the_run(saved_run, tmp_path, pointer):
    run, _ = saved_run
    other = tmp_path / "other" / "checkpoints" / "step-000009"  # another run's, newer
    shutil.copytree(_root(run) / "step-000001", other)
    (_root(run) / checkpoint.LATEST).write_text(pointer)
    trainer, said = _resume(run)
    assert trainer.step == 3  # the newest checkpoint of this run, found by scanning
    assert "not a step-NNNNNN name" in said


def test_no_verified_checkpoint_left_is_a_clear_error(saved_run):
    run, _ = saved_run
    for folder in _root(run).glob("step-*"):
        _flip(folder / "trainable.safetensors")
    with pytest.raises(ValueError, match=r"no complete checkpoint.*step-000003, step-000002"):
        Trainer(run, resume=True, **QUIET)


def _edit_manifest(folder, edit):
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    edit(manifest)
    (folder / checkpoint.MANIFEST).write_text(json.dumps(manifest))


class _NotData:
    """A class that ``torch.load(weights_only=True)`` refuses to unpickle."""


def _replace_state(folder, state):
    torch.save(state, folder / "state.pt")
    checkpoint._write_manifest(folder, int(folder.name.split("-")[1]))  # files verify again


def _manifest_folder(folder):
    (folder / checkpoint.MANIFEST).unlink()
    (folder / checkpoint.MANIFEST).mkdir()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (
            lambda f: _edit_manifest(
                f, lambda m: m["files"]["state.pt"].update(size=m["files"]["state.pt"].pop("bytes"))
            ),
            r"the entry of state.pt is .*not \{'bytes'",
        ),
        (
            lambda f: _edit_manifest(f, lambda m: m["files"].update({"optimizer.pt": "abc"})),
            "the entry of optimizer.pt is 'abc'",
        ),
        (lambda f: _edit_manifest(f, lambda m: m.update(step="3")), "'step' is '3'"),
        (lambda f: _edit_manifest(f, lambda m: m.update(files=[])), "'files' is"),
        (lambda f: (f / checkpoint.MANIFEST).write_text("[1, 2]"), "holds list, not an object"),
        (_manifest_folder, "manifest.json is unreadable"),
        (
            lambda f: _replace_state(f, {"rng": _NotData(), "scheduler": {}, "sampler": {}}),
            "state.pt does not load|step-000003 does not load",
        ),
        (lambda f: _replace_state(f, {"step": 3}), "state.pt lacks the fields"),
    ],
)
def test_malformed_manifest_or_state_falls_back_to_the_older_checkpoint(saved_run, damage, reason):
    run, weights = saved_run
    damage(_root(run) / "step-000003")
    trainer, said = _resume(run)
    assert trainer.step == 2
    assert re.search(reason, said), said
    for name, value in weights[2].items():
        assert torch.equal(trainer.trainable[name].detach(), value)


def test_a_checkpoint_linked_from_another_run_is_refused(saved_run, tmp_path):
    run, _ = saved_run
    other = tmp_path / "other" / "checkpoints" / "step-000300"  # another run's, verified
    shutil.copytree(_root(run) / "step-000001", other)
    _edit_manifest(other, lambda m: m.update(step=300))
    assert checkpoint.verify(other).step == 300
    (_root(run) / "step-000300").symlink_to(other)
    (_root(run) / checkpoint.LATEST).write_text("step-000300\n")
    trainer, said = _resume(run)
    assert trainer.step == 3 and "step-000300 is a symbolic link" in said
    # a linked file inside a checkpoint of this run is refused too
    state = _root(run) / "step-000003" / "state.pt"
    shutil.copy(state, tmp_path / "state.pt")
    state.unlink()
    state.symlink_to(tmp_path / "state.pt")
    trainer, said = _resume(run)
    assert trainer.step == 2 and "state.pt is a symbolic link" in said


def test_every_save_moment_leaves_a_loadable_checkpoint(saved_run, monkeypatch):
    """A crash at each stage of a save (files written, manifest, renamed, pointed)."""
    run, _ = saved_run
    trainer = Trainer(run, resume=True, **QUIET)
    trainer.train_step()

    for stage in ("files", "manifest", "renamed"):

        def crash(at, stage=stage):
            if at == stage:
                raise KeyboardInterrupt

        monkeypatch.setattr(checkpoint, "_pause_for_tests", crash)
        with pytest.raises(KeyboardInterrupt):
            trainer.save()
        assert checkpoint.latest(_root(run)).step in (3, 4)
        shutil.rmtree(_root(run) / "step-000004", ignore_errors=True)
    trainer.close()


# ---- 2. one run per run directory


def test_used_run_directory_is_refused_then_overwritten(tiny_model, tmp_path):
    first = sft_run(tiny_model, tmp_path, output={"save_every": 1})
    train(first, **QUIET)
    second = sft_run(tiny_model, tmp_path, train={"max_steps": 2}, output={"save_every": 2})
    with pytest.raises(ValueError, match=r"already holds a run .*--resume.*--overwrite"):
        train(second, **QUIET)
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    train(second, overwrite=True, **QUIET)
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == [
        "step-000002"
    ]


def test_overwrite_keeps_what_is_not_a_run_output(tiny_model, tmp_path):
    run = sft_run(tiny_model, tmp_path, train={"max_steps": 1})
    train(run, **QUIET)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train(run, overwrite=True, **QUIET)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_overwrite_never_clears_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "model").mkdir()  # the user's own, not a run's export
    with pytest.raises(ValueError, match="no lmloss run"):
        rundir.claim(tmp_path, resume=False, overwrite=True)
    assert (tmp_path / "model").is_dir()


def test_kill_before_the_first_checkpoint_then_restart(tiny_model, tmp_path):
    run = sft_run(tiny_model, tmp_path)
    trainer = Trainer(run, **QUIET)  # wrote recipe.json, then the process was killed
    trainer.close()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(run, **QUIET)
    with pytest.raises(ValueError, match=r"no checkpoint.*before its first save.*--overwrite"):
        Trainer(run, resume=True, **QUIET)
    with pytest.raises(ValueError, match="contradict"):
        Trainer(run, resume=True, overwrite=True, **QUIET)


def _lock_of(pid: int, started) -> str:
    return json.dumps({"pid": pid, "host": socket.gethostname(), "started": started})


def test_a_live_process_keeps_its_run_directory(tiny_model, tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        lock = tmp_path / "run" / rundir.LOCK
        lock.write_text(_lock_of(other.pid, rundir._start_time(other.pid)))
        with pytest.raises(ValueError, match=f"in use by process {other.pid}"):
            Trainer(sft_run(tiny_model, tmp_path), **QUIET)
        assert lock.is_file()
    finally:
        other.kill()
        other.wait()


def test_a_dead_process_lock_is_taken_over(tiny_model, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / rundir.LOCK).write_text(_lock_of(gone.pid, "1"))
    lines = []
    summary = train(sft_run(tiny_model, tmp_path, train={"max_steps": 1}), echo=lines.append)
    assert summary.steps == 1
    assert any(f"lock of process {gone.pid}, which no longer runs" in line for line in lines)
    assert not (tmp_path / "run" / rundir.LOCK).exists()  # released at the end


def test_a_lock_of_another_host_is_not_guessed_stale(tmp_path):
    (tmp_path / rundir.LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(ValueError, match="process 1 on elsewhere"):
        rundir.RunLock(tmp_path).acquire()


def test_two_processes_cannot_both_hold_the_lock(tmp_path):
    # rundir.py needs only the standard library: load it alone, without torch
    script = (
        "import importlib.util, sys, time; from pathlib import Path\n"
        "spec = importlib.util.spec_from_file_location('rundir', sys.argv[2])\n"
        "rundir = importlib.util.module_from_spec(spec); spec.loader.exec_module(rundir)\n"
        "try:\n"
        "    rundir.RunLock(Path(sys.argv[1])).acquire(); print('got', flush=True)\n"
        "    time.sleep(2)\n"
        "except ValueError:\n"
        "    print('refused', flush=True)\n"
    )
    argv = [sys.executable, "-c", script, str(tmp_path), rundir.__file__]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE) for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=60)[0].decode().strip() for p in procs)
    assert outcomes == ["got", "refused", "refused", "refused"]


def test_cli_refuses_a_used_directory_in_one_line(tiny_model, tmp_path, capsys):
    run = sft_run(tiny_model, tmp_path, train={"max_steps": 1})
    train(run, **QUIET)
    toml = tmp_path / "r.toml"
    toml.write_text(
        f'[model]\nname = "{tiny_model}"\n[data]\npath = "{tmp_path / "sft.jsonl"}"\n'
        "max_length = 64\nmax_prompt_length = 32\n[objective]\nname = 'ce'\n"
        "[train]\nmax_steps = 1\nbatch_size = 2\n[output]\nprogress = false\nplot = false\n"
        "save_model = false\ntensorboard = false\n"
    )
    argv = ["train", str(toml), "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lmloss: error: output.dir")
    assert main([*argv, "--overwrite"]) == 0


# ---- 3. non-finite values


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "lr", float("inf"), "train.lr must be a finite number"),
        ("train", "max_grad_norm", float("nan"), "train.max_grad_norm must be a finite"),
        ("train", "betas", [float("nan"), 0.9], r"train.betas\[0\] must be a finite"),
        ("train", "weight_decay", float("-inf"), "train.weight_decay must be a finite"),
        ("lora", "alpha", -1.0, "lora.alpha must be > 0"),
        ("lora", "dropout", 1.0, r"lora.dropout must be in \[0, 1\)"),
        ("train", "adam_eps", 0.0, "train.adam_eps must be > 0"),
        ("train", "dist_timeout", 0, "train.dist_timeout must be > 0"),
        ("policy", "reward_weights", [float("inf")], r"policy.reward_weights\[0\] must be"),
        ("distill", "temperature", float("nan"), "distill.temperature must be a finite"),
        ("objective", "beta", float("nan"), "objective.beta must be a finite number"),
        ("train", "seed", 2**62, r"train.seed must be in \[0, 2\*\*32\)"),
        ("train", "seed", -1, r"train.seed must be in \[0, 2\*\*32\)"),
        ("eval", "seed", 2**40, r"eval.seed must be in"),
    ],
)
def test_non_finite_or_out_of_range_recipe_values_are_named(section, key, value, message):
    data = {
        "model": {"name": "smollm2"},
        "data": {"task": "arithmetic"},
        "objective": {"name": "grpo"},
    }
    data.setdefault(section, {})[key] = value
    with pytest.raises(ValueError, match=message):
        parse(data)


def _poison(trainer, at_step, what):
    """Make step ``at_step`` (1-based) produce a NaN loss or NaN gradients."""
    real = trainer.mode.loss

    def loss(batch, count):
        out = real(batch, count)
        if trainer.step + 1 == at_step:
            if what == "loss":
                out.loss = out.loss * float("nan")
            else:
                out.loss.register_hook(lambda g: g * float("nan"))
        return out

    trainer.mode.loss = loss


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_non_finite_step_stops_by_name_without_a_final_model(tiny_model, tmp_path, what):
    run = sft_run(tiny_model, tmp_path, output={"save_model": True, "save_every": 1})
    trainer = Trainer(run, **QUIET)
    _poison(trainer, 2, what)
    expected = "the loss is nan" if what == "loss" else "the gradient norm is nan"
    with pytest.raises(NonFiniteError, match=f"step 2: {expected}.*no final model"):
        trainer.run()
    trainer.close()
    assert not (tmp_path / "run" / "model").exists()
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").step == 1


def test_non_finite_parameters_after_the_update_stop(tiny_model, tmp_path):
    trainer = Trainer(sft_run(tiny_model, tmp_path), **QUIET)

    def blow_up(*_):
        next(iter(trainer.trainable.values())).data[0] = float("inf")

    trainer.optimizer.register_step_post_hook(blow_up)
    with pytest.raises(NonFiniteError, match="step 1: the parameters are not finite"):
        trainer.train_step()
    trainer.close()


def test_cli_reports_a_non_finite_stop_in_one_line(tiny_model, tmp_path, capsys, monkeypatch):
    from lmloss.train import loop

    def poisoned(self):
        raise NonFiniteError("step 1: the loss is nan; training stopped")

    monkeypatch.setattr(loop.Trainer, "train_step", poisoned)
    write_jsonl(tmp_path / "sft.jsonl", SAY_ROWS)
    argv = [
        "train",
        "--set",
        f"model.name={json.dumps(str(tiny_model))}",
        "--set",
        f"data.path={json.dumps(str(tmp_path / 'sft.jsonl'))}",
        "--set",
        "objective.name='ce'",
        "--set",
        "output.progress=false",
        "--output",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "lmloss: error: step 1: the loss is nan; training stopped"
    )


def test_skip_mode_drops_the_bad_update_and_goes_on(tiny_model, tmp_path):
    run = sft_run(tiny_model, tmp_path, train={"on_nonfinite": "skip"})
    said = []
    trainer = Trainer(run, echo=said.append)
    _poison(trainer, 2, "loss")
    trainer.train_step()
    before, lr_before = _weights(trainer), trainer.scheduler.get_last_lr()
    row = trainer.train_step()
    assert row["skipped"] == 1 and trainer.step == 2
    for name, value in before.items():
        assert torch.equal(trainer.trainable[name].detach(), value)
    assert trainer.scheduler.get_last_lr() == lr_before
    assert "skipped" not in trainer.train_step()
    assert trainer.guard.skipped == 1
    assert "step 2: the loss is nan; update skipped (1 so far)" in said
    trainer.close()


def test_skip_mode_stops_after_max_skips_in_a_row(tiny_model, tmp_path):
    run = sft_run(tiny_model, tmp_path, train={"on_nonfinite": "skip", "max_skips": 2})
    trainer = Trainer(run, **QUIET)
    for step in (1, 2, 3):
        _poison(trainer, step, "grad")
    with pytest.raises(NonFiniteError, match=r"step 3: .*3 steps in a row"):
        trainer.run()
    trainer.close()


# ---- 4. train.dist_timeout


def test_dist_timeout_reaches_init_process_group(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: bool(seen))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    world = distributed.World.join(42.5)
    assert (world.rank, world.size) == (1, 2)
    assert seen == {"backend": "gloo", "timeout": timedelta(seconds=42.5)}


def test_trainer_joins_with_the_recipe_timeout(tiny_model, tmp_path, monkeypatch):
    asked = []

    def join(cls, timeout):
        asked.append(timeout)
        return cls()

    monkeypatch.setattr(distributed.World, "join", classmethod(join))
    Trainer(sft_run(tiny_model, tmp_path, train={"dist_timeout": 7}), **QUIET).close()
    assert asked == [7.0]


# ---- 5. a torn metrics line


def test_torn_last_metrics_line_does_not_block_resume(saved_run):
    run, _ = saved_run
    metrics = Path(run.output.dir) / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 4, "lo')  # killed mid-write
    longer = dataclasses.replace(run, train=dataclasses.replace(run.train, max_steps=4))
    train(longer, resume=True, **QUIET)
    assert [r["step"] for r in read_jsonl(metrics)] == [1, 2, 3, 4]


def test_bad_middle_metrics_line_names_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_jsonl(path)


# ---- 6. what a recipe can run


def test_help_and_readme_say_what_a_recipe_can_run(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "What a recipe can run" in text
    assert "module:function" in text and "trust_remote_code" in text
    readme = Path(__file__).parents[2] / "README.md"
    assert "What a recipe can run" in readme.read_text()
