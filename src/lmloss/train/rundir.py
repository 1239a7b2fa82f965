"""One run per run directory: a used directory is refused, and a lock keeps out a second
process.

A directory is *used* when it holds any output of a training run (``OUTPUTS``). A new run
refuses it unless it resumes (``--resume``) or is told to start over (``--overwrite``),
which deletes those outputs — and only those: a precomputed reference or generated data
next to them stays, and nothing else in the folder is touched. A folder whose outputs were
not made by a run (no ``recipe.json``, ``metrics.jsonl`` or ``checkpoints/``, say a
``model/`` of the user's own) is never cleared.

While a run writes, ``run_dir/.lock`` holds its process id, host and process start time.
The file is created atomically (a hard link of a complete temporary file, which fails if
the lock exists), so two processes can never both hold it. A lock left by a process that
no longer runs on this host (killed, crashed) is reported and taken over; one held by a
live process, or by another host, is refused with the holder named.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

LOCK = ".lock"
OUTPUTS = (
    "recipe.json",
    "metrics.jsonl",
    "eval.jsonl",
    "checkpoints",
    "model",
    "curves.png",
    "tensorboard",
)
MARKERS = ("recipe.json", "metrics.jsonl", "checkpoints")  # written by every run, first


def used_outputs(run_dir: Path) -> list[str]:
    """The training outputs already in ``run_dir``."""
    return [name for name in OUTPUTS if (run_dir / name).exists()]


def claim(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that this run may write ``run_dir`` (and clear it for ``overwrite``)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"output.dir {run_dir} is a file, not a directory")
    found = used_outputs(run_dir)
    if overwrite and found and not any(name in found for name in MARKERS):
        raise ValueError(
            f"--overwrite: {run_dir} holds {', '.join(found)} but no lmloss run "
            f"({', '.join(MARKERS)}); not deleting them: choose another --output"
        )
    if overwrite:
        for name in found:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    elif found and not resume:
        raise ValueError(
            f"output.dir {run_dir} already holds a run ({', '.join(found)}): "
            "continue it with --resume, start over with --overwrite, or choose another --output"
        )


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}


class RunLock:
    """``run_dir/.lock`` held by this process (see the module's docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.held = False

    def acquire(self, echo: Callable[[str], None] = print) -> RunLock:
        me = _me()
        tmp = self.path.with_name(f"{LOCK}.{me['pid']}.tmp")
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    holder = self._holder()
                    if not self._stale(holder, me):
                        raise ValueError(
                            f"{self.path.parent} is in use by process {holder.get('pid')} on "
                            f"{holder.get('host')} (lock file {self.path}); wait for it, or "
                            "delete the lock file if that process is gone"
                        ) from None
                    if holder.get("pid") != me["pid"]:
                        echo(
                            f"run directory: taking over the lock of process "
                            f"{holder.get('pid')}, which no longer runs"
                        )
                    self.path.unlink(missing_ok=True)
                    continue
                self.held = True
                return self
        finally:
            tmp.unlink(missing_ok=True)
        raise ValueError(f"could not take the lock {self.path}: another process keeps taking it")

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def _stale(holder: dict, me: dict) -> bool:
        if holder.get("host") != me["host"] or not isinstance(holder.get("pid"), int):
            return False  # another machine's process: this one cannot tell
        pid = holder["pid"]
        if pid == me["pid"]:
            return True  # an earlier run of this same process (a Python session)
        if not _alive(pid):
            return True
        started = _start_time(pid)
        return started is not None and holder.get("started") not in (None, started)

    def release(self) -> None:
        if self.held:
            if self._holder().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
