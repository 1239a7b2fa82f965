"""SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) end a run at a step boundary.

While the training loop runs, :class:`StopRequest` turns either signal into a request:
the current optimizer step finishes, a checkpoint of it is written (when the run keeps
checkpoints, ``output.save_every > 0``), and the run ends with :class:`Interrupted`, whose
one-line message says where it stopped and the command that continues it; the command
line exits with ``128 + signal`` (130, 143), as a shell reports a signalled process. A
second Ctrl-C does not wait for the step: it raises :class:`KeyboardInterrupt` at once
(the last complete checkpoint stays the newest). Before the loop (while loading) either
signal interrupts at once; nothing has trained yet, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

STOPPING = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal at a step boundary; ``exit_code`` is ``128 + signal``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """The first SIGINT/SIGTERM received since :meth:`install` (``signal``: its number)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @classmethod
    def install(cls) -> StopRequest:
        """Catch the signals (only the main thread may; elsewhere nothing is caught)."""
        stop = cls()
        if threading.current_thread() is threading.main_thread():
            for signum in STOPPING:
                stop._previous[signum] = signal.signal(signum, stop._received)
        return stop

    def _received(self, signum: int, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: do not wait for the step
        self.signal = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _interrupt_now(_signum: int, _frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside: SIGTERM stops as Ctrl-C does (one line, no traceback) where the training
    loop does not catch it itself (the set-up); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(
    signum: int | None, step: int, saved: Path | None, source: str, run_dir: Path
) -> Interrupted:
    """The :class:`Interrupted` of a run stopped by ``signum`` after ``step`` (``None``: a
    data-parallel rank stopping because another one was signalled, as by SIGTERM)."""
    signum = signal.SIGTERM if signum is None else signum
    name = signal.Signals(signum).name
    if saved is None:
        return Interrupted(
            f"stopped by {name} after step {step}; output.save_every = 0 keeps no "
            "checkpoint, so the run cannot be continued: rerun it with --overwrite",
            signum,
        )
    recipe = source.removeprefix("bundled:") if not source.startswith("<") else "RECIPE"
    return Interrupted(
        f"stopped by {name} after step {step}; saved {saved}; continue with the same "
        "command and --resume: "
        f"lmloss train {recipe} --output {run_dir} --resume",
        signum,
    )
