"""What a run reports while it trains: a progress bar, metrics files, loggers (TensorBoard...).

``metrics.jsonl`` gets one JSON object per logged step (``step`` is the number of
optimizer steps done; a value that is not finite, as the loss of a skipped step, is
``null``: strict JSON has no NaN); ``eval.jsonl`` one per evaluation. On resume, lines past the
checkpoint's step are dropped so the files read as one uninterrupted run: the kept lines
are written to a new file, synced, and renamed over the old one, so a kill or a full disk
while cutting leaves the old file whole.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

METRICS, EVALS = "metrics.jsonl", "eval.jsonl"
SHOWN = ("loss", "reward", "rewards/accuracies", "rewards/margins", "kl", "entropy", "lr")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of ``path``; a torn last line (a kill or a full disk mid-write) is dropped,
    a bad line before it is an error naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as error:
            if number == len(lines):
                break  # torn last line
            raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
    return rows


def strict_json(row: dict) -> dict:
    """``row`` with NaN and infinities as ``null`` (JSON has no such numbers; a skipped
    step's loss is one)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def truncate_after(path: Path, step: int) -> None:
    """Drop the rows of ``path`` past ``step`` (atomically: see the module's docstring)."""
    rows = read_jsonl(path)
    kept = [r for r in rows if r.get("step", 0) <= step]
    if len(kept) == len(rows) and (not path.is_file() or path.read_bytes().endswith(b"\n")):
        return  # nothing to cut (a torn last line is cut too)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # of a killed cut (we hold the lock)
        stale.unlink(missing_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with aside.open("w") as handle:
            for row in kept:
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)


class Reporter:
    def __init__(
        self,
        run_dir: Path,
        total: int,
        start: int,
        *,
        bar: bool,
        enabled: bool = True,
        loggers: list | None = None,
    ):
        """``enabled = False`` (data-parallel ranks other than 0) writes and shows nothing;
        ``loggers``: :mod:`lmloss.train.loggers` objects that get every row too."""
        self.run_dir = run_dir
        self.enabled = enabled
        self.bar = None
        self.loggers = list(loggers or []) if enabled else []
        if not enabled:
            bar = False
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=start,
                desc="train",
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def _append(self, name: str, row: dict) -> None:
        with (self.run_dir / name).open("a") as f:
            f.write(json.dumps(strict_json(row), allow_nan=False) + "\n")
        for logger in self.loggers:
            logger.log(row, "eval/" if name == EVALS else "")

    def step(self, row: dict, write: bool) -> None:
        if write and self.enabled:
            self._append(METRICS, row)
        if self.bar is not None:
            self.bar.update(1)
            shown = {k: f"{row[k]:.4g}" for k in SHOWN if k in row}
            self.bar.set_postfix(shown, refresh=False)

    def evaluation(self, row: dict) -> None:
        if self.enabled:
            self._append(EVALS, row)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for logger in self.loggers:
            logger.close()
