"""Checkpoints that resume a run exactly and survive a crash while being written.

A checkpoint is a directory ``run_dir/checkpoints/step-NNNNNN/`` with

* ``trainable.safetensors`` — the trained parameters (the whole model, or the LoRA
  adapters; frozen weights come back from the model's source);
* ``optimizer.pt`` — AdamW's state; ``state.pt`` — scheduler, step, data position and the
  random-number generators' states.

It is written under a temporary name and renamed into place, then ``latest`` (a one-line
file) is replaced atomically: a crash at any moment leaves the previous checkpoint and
``latest`` intact. Loading uses ``torch.load(weights_only=True)`` and safetensors, so no
pickled code ever runs.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmloss.train.distributed import copy_into, shard_optimizer_state

LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    for f in tmp.iterdir():
        with f.open("rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    _prune(root, keep)
    return Checkpoint(final, step)


def _prune(root: Path, keep: int) -> None:
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    latest = (root / LATEST).read_text().strip()
    for old in done[: max(0, len(done) - max(keep, 1))]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def latest(root: Path) -> Checkpoint | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise ValueError(f"{pointer} names {path.name}, which does not exist")
    return Checkpoint(path, int(path.name.split("-")[1]))


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
