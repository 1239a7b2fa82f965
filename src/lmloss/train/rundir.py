"""One run per run directory: a used directory is refused, and a lock keeps out a second
process.

A directory is *used* when it holds any output of a training run (``OUTPUTS``). A new run
refuses it unless it resumes (``--resume``) or is told to start over (``--overwrite``),
which deletes those outputs — and only those: a precomputed reference or generated data
next to them stays, and nothing else in the folder is touched. A folder whose outputs were
not made by a run (no ``recipe.json``, ``metrics.jsonl`` or ``checkpoints/``, say a
``model/`` of the user's own) is never cleared. :func:`take` locks the directory *before*
it looks at or deletes anything, so a second process (an ``--overwrite`` included) is
refused before it can touch a live run's files.

While a run writes, ``run_dir/.lock`` holds its process id, host and process start time,
and the process holds an exclusive ``flock`` on it. The kernel grants that to one open file
at a time and drops it when the process dies, so taking over the lock of a killed process
is atomic: of several processes racing for a stale lock exactly one wins (the old
read-unlink-link takeover let two win). A lock file whose ``flock`` is free but which names
a live process on this host (one that does not use ``flock``), or a process on another
host, is still refused with the holder named: this host cannot tell whether it is stale.
"""

from __future__ import annotations

import contextlib
import fcntl
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


def check_target(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is created, a run directory that cannot be one."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"output.dir {run_dir} is a file, not a directory")
    existing = next(p for p in [run_dir, *run_dir.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise ValueError(f"output.dir {run_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output.dir {run_dir}: {existing} is not writable by this user")


def claim(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that this run may write ``run_dir`` (and clear it for ``overwrite``); call it
    holding the directory's lock (:func:`take`)."""
    check_target(run_dir, resume=resume, overwrite=overwrite)
    found = used_outputs(run_dir)
    if overwrite and found and not any(name in found for name in MARKERS):
        raise ValueError(
            f"--overwrite: {run_dir} holds {', '.join(found)} but no lmloss run "
            f"({', '.join(MARKERS)}); not deleting them: choose another --output"
        )
    if overwrite:
        for name in found:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    elif found and not resume:
        raise ValueError(
            f"output.dir {run_dir} already holds a run ({', '.join(found)}): "
            "continue it with --resume, start over with --overwrite, or choose another --output"
        )


class Claim:
    """A run directory this process locked and checked, and what was in it then, so that a
    run refused before its first step can leave the directory as it found it."""

    def __init__(self, run_dir: Path, lock: RunLock, created: bool) -> None:
        self.run_dir, self.lock, self.created = run_dir, lock, created
        self.found = set(os.listdir(run_dir))

    def release(self) -> None:
        self.lock.release()

    def undo(self) -> None:
        """Delete the run outputs made since the claim, release the lock, and remove the
        directory if this claim made it and it is empty again."""
        for name in set(os.listdir(self.run_dir)) - self.found:
            path = self.run_dir / name
            if name not in (*OUTPUTS, "data"):
                continue  # not ours to judge
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self.release()
        if self.created:
            with contextlib.suppress(OSError):  # something else is in it now: leave it
                self.run_dir.rmdir()


def take(
    run_dir: Path, *, resume: bool, overwrite: bool, echo: Callable[[str], None] = print
) -> Claim:
    """Lock ``run_dir`` first, then check it (and clear it for ``overwrite``)."""
    check_target(run_dir, resume=resume, overwrite=overwrite)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    claimed = Claim(run_dir, RunLock(run_dir), created)
    try:
        claimed.lock.acquire(echo)
        claim(run_dir, resume=resume, overwrite=overwrite)
    except BaseException:
        claimed.undo()
        raise
    claimed.found = set(os.listdir(run_dir))  # after an --overwrite cleared it
    return claimed


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


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a releasing holder unlinks it)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class RunLock:
    """``run_dir/.lock`` held by this process (see the module's docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.held = False
        self._fd: int | None = None

    def acquire(self, echo: Callable[[str], None] = print) -> RunLock:
        me = _me()
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._holder()
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    # left locked by an earlier run of this same process (a Python session)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._in_use(holder) from None
            if not _same_file(fd, self.path):  # its holder released (unlinked) it meanwhile
                os.close(fd)
                continue
            holder = self._holder()
            if holder and holder.get("pid") != me["pid"]:
                if not self._stale(holder, me):
                    os.close(fd)
                    raise self._in_use(holder)
                echo(
                    f"run directory: taking over the lock of process {holder.get('pid')}, "
                    "which no longer runs"
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
            self._fd, self.held = fd, True
            return self
        raise ValueError(f"could not take the lock {self.path}: another process keeps taking it")

    def _in_use(self, holder: dict) -> ValueError:
        who = (
            f"process {holder['pid']} on {holder.get('host')}"
            if "pid" in holder
            else "another process"
        )
        return ValueError(
            f"{self.path.parent} is in use by {who} (lock file {self.path}); wait for it, or "
            "delete the lock file if that process is gone"
        )

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def _stale(holder: dict, me: dict) -> bool:
        """Whether a lock file whose ``flock`` is free names a process that is gone."""
        if holder.get("host") != me["host"] or not isinstance(holder.get("pid"), int):
            return False  # another machine's process: this one cannot tell
        pid = holder["pid"]
        if not _alive(pid):
            return True
        started = _start_time(pid)
        return started is not None and holder.get("started") not in (None, started)

    def release(self) -> None:
        if self._fd is not None:
            if _same_file(self._fd, self.path):
                self.path.unlink(missing_ok=True)  # while still locked: no one holds it yet
            os.close(self._fd)  # drops the flock
            self._fd = None
        self.held = False
