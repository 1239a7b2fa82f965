"""Learning-rate schedules: linear warm-up, then constant, cosine or warmup-stable-decay.

Each is a multiplier of the peak learning rate as a function of the optimizer step
(``torch.optim.lr_scheduler.LambdaLR`` applies it; its state is checkpointed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmloss.train.config import TrainConfig


def multiplier(config: TrainConfig) -> Callable[[int], float]:
    total, warmup, floor = config.max_steps, config.warmup_steps, config.min_lr_ratio

    def constant(step: int) -> float:
        return 1.0

    def cosine(step: int) -> float:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def warmup_stable_decay(step: int) -> float:
        # stable at the peak, then a linear decay over the last decay_fraction of the run
        decay_steps = max(1, round(config.decay_fraction * total))
        decay_start = total - decay_steps
        if step < decay_start:
            return 1.0
        return floor + (1 - floor) * max(0.0, (total - step) / decay_steps)

    after_warmup = {"constant": constant, "cosine": cosine, "wsd": warmup_stable_decay}
    shape = after_warmup[config.schedule]

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return shape(step)

    return lr_lambda


def build(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier(config))
