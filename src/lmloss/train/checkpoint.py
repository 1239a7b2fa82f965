"""Checkpoints that resume a run exactly, survive a crash while being written, and verify
themselves before they are trusted.

A checkpoint is a directory ``run_dir/checkpoints/step-NNNNNN/`` with

* ``trainable.safetensors`` — the trained parameters (the whole model, or the LoRA
  adapters; frozen weights come back from the model's source);
* ``optimizer.pt`` — AdamW's state; ``state.pt`` — scheduler, step, data position and the
  random-number generators' states;
* ``manifest.json`` — written last: the step and the size and SHA-256 of every other file.

The files are written under a temporary name (``.tmp-step-NNNNNN``), synced, and the folder
is renamed into place; then ``latest`` (one line naming the folder) is replaced atomically;
only then are older checkpoints pruned. A kill at any moment therefore leaves at least one
complete checkpoint on disk, and a checkpoint that exists under its final name is never
deleted to make room for a copy of itself.

Resuming (:func:`resumable`) trusts nothing on disk: ``latest`` must name a ``step-NNNNNN``
folder inside ``checkpoints/`` whose manifest matches every file byte for byte. Anything
else (a missing, empty or foreign pointer, a truncated or flipped file, no manifest) is
reported by name and the newest checkpoint that does verify is used instead. Loading uses
``torch.load(weights_only=True)`` and safetensors, so no pickled code ever runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmloss.train.distributed import copy_into, shard_optimizer_state

LATEST = "latest"
MANIFEST = "manifest.json"
FILES = ("trainable.safetensors", "optimizer.pt", "state.pt")
NAME = re.compile(r"step-(\d{6,})")
_CHUNK = 1 << 22


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class Checkpoint:
    path: Path
    step: int


class CheckpointError(ValueError):
    """A checkpoint that is incomplete or does not match its manifest."""


def _write_manifest(folder: Path, step: int) -> None:
    files = {
        name: {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
        for name in FILES
    }
    tmp = folder / f".{MANIFEST}.tmp"
    with tmp.open("w") as handle:
        json.dump({"format": 1, "step": step, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)


def verify(path: Path) -> Checkpoint:
    """The checkpoint at ``path`` if its manifest matches every file, else
    :class:`CheckpointError` saying what is wrong."""
    match = NAME.fullmatch(path.name)
    if match is None:
        raise CheckpointError(f"{path} is not a checkpoint folder (step-NNNNNN)")
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files, step = manifest["files"], manifest["step"]
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {MANIFEST} (incomplete)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path / MANIFEST} is unreadable ({error})") from None
    if step != int(match.group(1)):
        raise CheckpointError(f"{path / MANIFEST} is for step {step}, not {match.group(1)}")
    for name in FILES:
        if name not in files:
            raise CheckpointError(f"{path / MANIFEST} does not list {name}")
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        size = file.stat().st_size
        if size != files[name]["bytes"]:
            expected = files[name]["bytes"]
            raise CheckpointError(f"{file} has {size} bytes, the manifest says {expected}")
        if _sha256(file) != files[name]["sha256"]:
            raise CheckpointError(f"{file} does not match its checksum (corrupted)")
    return Checkpoint(path, step)


def save(
    root: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep: int = 2,
    optimizer_state: dict | None = None,
) -> Checkpoint:
    """Write checkpoint ``step`` atomically and keep the newest ``keep`` of them
    (``optimizer_state``: the optimizer's state dict when it was gathered already)."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = root / name
    if final.exists():
        try:  # the same step saved twice (the end of a run on a save_every boundary)
            verify(final)
        except CheckpointError:
            shutil.rmtree(final)  # not loadable anyway: the pointer falls back past it
        else:
            _point_to(root, name)
            _prune(root, keep)
            return Checkpoint(final, step)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(
        {k: v.detach().contiguous() for k, v in trainable.items()},
        str(tmp / "trainable.safetensors"),
    )
    if optimizer_state is None:
        optimizer_state = optimizer.state_dict()
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    _pause_for_tests("files")
    for f in tmp.iterdir():
        with f.open("rb") as handle:
            os.fsync(handle.fileno())
    _write_manifest(tmp, step)
    _fsync_dir(tmp)
    _pause_for_tests("manifest")
    os.rename(tmp, final)
    _pause_for_tests("renamed")
    _point_to(root, name)
    _prune(root, keep)
    return Checkpoint(final, step)


def _pause_for_tests(stage: str) -> None:
    """``LMLOSS_TEST_SAVE_PAUSE=seconds`` sleeps at each stage of a save, so that the crash
    soak test can kill the process inside it (see tests/train/test_soak.py)."""
    pause = os.environ.get("LMLOSS_TEST_SAVE_PAUSE")
    if pause:
        time.sleep(float(pause))


def _point_to(root: Path, name: str) -> None:
    pointer = root / f".{LATEST}.tmp"
    with pointer.open("w") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)


def _steps(root: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    found = [p for p in root.glob("step-*") if NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def _prune(root: Path, keep: int) -> None:
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    latest = (root / LATEST).read_text().strip()
    for old in _steps(root)[max(keep, 1) :]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def _pointed(root: Path) -> Path:
    """The folder ``latest`` names; :class:`CheckpointError` unless it is a plain
    ``step-NNNNNN`` name of a folder inside ``root``."""
    pointer = root / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"{pointer} is missing")
    try:
        text = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{pointer} is unreadable ({error})") from None
    if NAME.fullmatch(text) is None:
        raise CheckpointError(f"{pointer} holds {text[:80]!r}, not a step-NNNNNN name")
    return root / text


def resumable(root: Path, echo: Callable[[str], None] = print) -> Checkpoint | None:
    """The checkpoint to resume from: the one ``latest`` names if it verifies, else the
    newest one that does (each rejected one is reported through ``echo``).

    ``None`` when ``root`` holds no checkpoint at all; :class:`CheckpointError` when it
    holds some but none verifies."""
    if not root.is_dir():
        return None
    candidates = _steps(root)
    if not candidates and not (root / LATEST).exists():
        return None
    try:
        return verify(_pointed(root))
    except CheckpointError as error:
        echo(f"checkpoint: {error}; looking for the newest complete checkpoint")
    rejected = []
    for path in candidates:
        try:
            found = verify(path)
        except CheckpointError as error:
            echo(f"checkpoint: skipping {path.name}: {error}")
            rejected.append(path.name)
            continue
        echo(f"checkpoint: falling back to {path}")
        return found
    raise CheckpointError(
        f"no complete checkpoint in {root}"
        + (f" (rejected: {', '.join(rejected)})" if rejected else "")
        + "; start over with --overwrite"
    )


def latest(root: Path) -> Checkpoint | None:
    """The verified checkpoint to resume from, reporting nothing (see :func:`resumable`)."""
    return resumable(root, echo=lambda _line: None)


def load(
    checkpoint: Checkpoint,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> dict:
    """Restore parameters and optimizer in place; returns the saved state (RNG restored)."""
    tensors = load_file(str(checkpoint.path / "trainable.safetensors"))
    if set(tensors) != set(trainable):
        missing = sorted(set(trainable) - set(tensors))[:3]
        unexpected = sorted(set(tensors) - set(trainable))[:3]
        raise ValueError(
            f"{checkpoint.path} was saved from another model or set of trained parameters "
            f"(missing {missing}, unexpected {unexpected})"
        )
    with torch.no_grad():
        for name, param in trainable.items():
            copy_into(param, tensors[name])  # FSDP2: each rank keeps its shard
    optimizer.load_state_dict(torch.load(checkpoint.path / "optimizer.pt", weights_only=True))
    shard_optimizer_state(optimizer)
    state = torch.load(checkpoint.path / "state.pt", weights_only=True)
    set_rng_state(state["rng"])
    return state
