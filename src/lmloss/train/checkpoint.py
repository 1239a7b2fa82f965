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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmloss.train.distributed import copy_into, shard_optimizer_state

LATEST = "latest"
MANIFEST = "manifest.json"
FILES = ("trainable.safetensors", "optimizer.pt", "state.pt")
NAME = re.compile(r"step-(\d{6,})")
_SHA256 = re.compile(r"[0-9a-f]{64}")
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


def _manifest_fields(path: Path) -> tuple[int, dict[str, dict]]:
    """``(step, files)`` of ``path/manifest.json``, every field checked for its type (a
    manifest of valid JSON with a wrong field is as untrustworthy as a torn one)."""
    file = path / MANIFEST
    if not file.exists() and not file.is_symlink():
        raise CheckpointError(f"{path} has no {MANIFEST} (incomplete)")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{file} is unreadable ({error})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{file} holds {type(manifest).__name__}, not an object")
    step, files = manifest.get("step"), manifest.get("files")
    if type(step) is not int:
        raise CheckpointError(f"{file}: 'step' is {step!r}, not a whole number")
    if not isinstance(files, dict):
        raise CheckpointError(f"{file}: 'files' is {files!r:.60}, not an object")
    for name in FILES:
        entry = files.get(name)
        if entry is None:
            raise CheckpointError(f"{file} does not list {name}")
        if not (
            isinstance(entry, dict)
            and type(entry.get("bytes")) is int
            and isinstance(entry.get("sha256"), str)
            and _SHA256.fullmatch(entry["sha256"])
        ):
            raise CheckpointError(
                f"{file}: the entry of {name} is {entry!r:.80}, not "
                "{'bytes': <int>, 'sha256': <64 hex digits>}"
            )
    return step, files


def _inside(path: Path, root: Path) -> None:
    """Refuse a checkpoint folder or file that is a link, or resolves outside ``root`` (a
    link to another run's checkpoint would resume and export that run's weights)."""
    if path.is_symlink():
        raise CheckpointError(f"{path} is a symbolic link (to {os.readlink(path)}), not a file")
    if not path.resolve().is_relative_to(root.resolve()):
        raise CheckpointError(f"{path} resolves to {path.resolve()}, outside {root}")


def verify(path: Path) -> Checkpoint:
    """The checkpoint at ``path`` if its manifest matches every file, else
    :class:`CheckpointError` saying what is wrong."""
    match = NAME.fullmatch(path.name)
    if match is None:
        raise CheckpointError(f"{path} is not a checkpoint folder (step-NNNNNN)")
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{path} does not exist")
    _inside(path, path.parent)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder")
    step, files = _manifest_fields(path)
    if step != int(match.group(1)):
        raise CheckpointError(f"{path / MANIFEST} is for step {step}, not {match.group(1)}")
    for name in FILES:
        file = path / name
        if not file.exists() and not file.is_symlink():
            raise CheckpointError(f"{file} is missing")
        _inside(file, path)
        if not file.is_file():
            raise CheckpointError(f"{file} is not a file")
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
    if final.exists() or final.is_symlink():
        try:  # the same step saved twice (the end of a run on a save_every boundary)
            verify(final)
        except CheckpointError:  # not loadable anyway: the pointer falls back past it
            final.unlink() if final.is_symlink() else shutil.rmtree(final)
        else:
            _point_to(root, name)
            _prune(root, keep)
            return Checkpoint(final, step)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if optimizer_state is None:
            optimizer_state = optimizer.state_dict()
        _write_files(tmp, step, trainable, optimizer_state, state)
    except (OSError, RuntimeError, SafetensorError) as error:  # a full disk, as each says it
        shutil.rmtree(tmp, ignore_errors=True)
        kept = (
            f"; {root / LATEST} still names the last complete one"
            if (root / LATEST).exists()
            else ""
        )
        raise CheckpointError(
            f"could not write checkpoint {name} in {root} ({_first_line(error)}){kept}: "
            "free disk space (or raise the file-size limit) and continue with --resume"
        ) from None
    os.rename(tmp, final)
    _pause_for_tests("renamed")
    _point_to(root, name)
    _prune(root, keep)
    return Checkpoint(final, step)


def _write_files(
    tmp: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict, state: dict
) -> None:
    """Every file of checkpoint ``step`` in ``tmp``, synced, the manifest last."""
    tmp.mkdir()
    save_file(
        {k: v.detach().contiguous() for k, v in trainable.items()},
        str(tmp / "trainable.safetensors"),
    )
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    _pause_for_tests("files")
    for f in tmp.iterdir():
        with f.open("rb") as handle:
            os.fsync(handle.fileno())
    _write_manifest(tmp, step)
    _fsync_dir(tmp)
    _pause_for_tests("manifest")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


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


def _verified(root: Path, echo: Callable[[str], None], rejected: list[str]) -> Iterator[Checkpoint]:
    """The verified checkpoints of ``root`` in the order to try them: the one ``latest``
    names, then the others, newest first (each rejected one is reported through ``echo``
    and named in ``rejected``)."""
    try:
        pointed = verify(_pointed(root))
    except CheckpointError as error:
        echo(f"checkpoint: {error}; looking for the newest complete checkpoint")
        pointed = None
    else:
        yield pointed
    for path in _steps(root):
        if pointed is not None and path.name == pointed.path.name:
            continue
        try:
            found = verify(path)
        except CheckpointError as error:
            echo(f"checkpoint: skipping {path.name}: {error}")
            rejected.append(path.name)
            continue
        echo(f"checkpoint: falling back to {path}")
        yield found


def _none_left(root: Path, rejected: list[str]) -> CheckpointError:
    named = f" (rejected: {', '.join(rejected)})" if rejected else ""
    return CheckpointError(f"no complete checkpoint in {root}{named}; start over with --overwrite")


def _has_any(root: Path) -> bool:
    return root.is_dir() and (bool(_steps(root)) or (root / LATEST).exists())


def resumable(root: Path, echo: Callable[[str], None] = print) -> Checkpoint | None:
    """The checkpoint to resume from: the one ``latest`` names if it verifies, else the
    newest one that does (each rejected one is reported through ``echo``).

    ``None`` when ``root`` holds no checkpoint at all; :class:`CheckpointError` when it
    holds some but none verifies."""
    if not _has_any(root):
        return None
    rejected: list[str] = []
    found = next(_verified(root, echo, rejected), None)
    if found is None:
        raise _none_left(root, rejected)
    return found


def latest(root: Path) -> Checkpoint | None:
    """The verified checkpoint to resume from, reporting nothing (see :func:`resumable`)."""
    return resumable(root, echo=lambda _line: None)


def restore(
    root: Path,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    echo: Callable[[str], None] = print,
) -> tuple[Checkpoint, dict] | None:
    """Load the newest checkpoint of ``root`` that verifies *and* loads (see :func:`load`);
    one whose files verify but do not load (a pickle ``weights_only`` refuses, a state
    without its fields) is reported and the next older one tried. ``None`` when ``root``
    holds no checkpoint; :class:`CheckpointError` when none is usable."""
    if not _has_any(root):
        return None
    rejected: list[str] = []
    for found in _verified(root, echo, rejected):
        try:
            return found, load(found, trainable, optimizer)
        except CheckpointError as error:
            echo(f"checkpoint: skipping {found.path.name}: {error}")
            rejected.append(found.path.name)
    raise _none_left(root, rejected)


STATE_FIELDS = ("scheduler", "sampler", "rng")


def _read(checkpoint: Checkpoint) -> tuple[dict, dict, dict]:
    """The three files of ``checkpoint`` in memory; :class:`CheckpointError` if one does not
    load as data (``weights_only``: no pickled code runs) or lacks a field."""
    path = checkpoint.path
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as error:  # unpickling and safetensors raise many kinds
        raise CheckpointError(f"{path} does not load ({_first_line(error)})") from None
    for name, value, fields in [
        ("optimizer.pt", optimizer_state, ("state", "param_groups")),
        ("state.pt", state, STATE_FIELDS),
    ]:
        if not isinstance(value, dict) or any(f not in value for f in fields):
            raise CheckpointError(f"{path / name} lacks the fields {', '.join(fields)}")
    return tensors, optimizer_state, state


def load(
    checkpoint: Checkpoint,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> dict:
    """Restore parameters and optimizer in place; returns the saved state (RNG restored).
    Every file is read and checked before anything is changed."""
    tensors, optimizer_state, state = _read(checkpoint)
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
    optimizer.load_state_dict(optimizer_state)
    shard_optimizer_state(optimizer)
    set_rng_state(state["rng"])
    return state
