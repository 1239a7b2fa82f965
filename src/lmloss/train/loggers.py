"""Metric loggers besides ``metrics.jsonl``: ``output.report_to`` names them.

``"tensorboard"`` writes ``run_dir/tensorboard`` (needs the ``tensorboard`` package),
``"wandb"`` logs to Weights & Biases (needs ``wandb``; its own login and ``WANDB_*``
settings apply). Neither is installed with lmloss: a named backend that is missing stops
the run before the model loads, with one line saying what to install. ``metrics.jsonl``
and ``curves.png`` are always written.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def backends(output) -> tuple[str, ...]:
    """The loggers ``[output]`` asks for (the deprecated ``tensorboard = true`` included)."""
    names = [n for n in output.report_to if n != "none"]
    if output.tensorboard:
        warnings.warn(
            "output.tensorboard is deprecated: use output.report_to = ['tensorboard']",
            DeprecationWarning,
            stacklevel=2,
        )
        names.append("tensorboard")
    return tuple(dict.fromkeys(names))


def check_installed(names: tuple[str, ...]) -> None:
    for name in names:
        if name not in BACKENDS:
            raise ValueError(
                f"output.report_to: unknown logger {name!r} (known: none, {', '.join(BACKENDS)})"
            )
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise ValueError(
                f"output.report_to names {name!r} but the {BACKENDS[name]!r} package is not "
                f"installed (pip install {BACKENDS[name]}, or set output.report_to = 'none')"
            )


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict, prefix: str) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(prefix + key, value, row["step"])

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, run_dir: Path, config: dict) -> None:
        import wandb

        self.run = wandb.init(name=run_dir.name, dir=str(run_dir), config=config)

    def log(self, row: dict, prefix: str) -> None:
        values = {prefix + k: v for k, v in row.items() if k != "step"}
        self.run.log(values, step=row["step"])

    def close(self) -> None:
        self.run.finish()


LOGGERS = {"tensorboard": TensorBoard, "wandb": Wandb}


def open_loggers(names: tuple[str, ...], run_dir: Path, config: dict) -> list:
    check_installed(names)
    return [LOGGERS[name](run_dir, config) for name in names]
