"""What a run reports while it trains: a progress bar, metrics files, loggers (TensorBoard...).

``metrics.jsonl`` gets one JSON object per logged step (``step`` is the number of
optimizer steps done); ``eval.jsonl`` one per evaluation. On resume, lines past the
checkpoint's step are dropped so the files read as one uninterrupted run.
"""

from __future__ import annotations

import json
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


def truncate_after(path: Path, step: int) -> None:
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


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
            f.write(json.dumps(row) + "\n")
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
