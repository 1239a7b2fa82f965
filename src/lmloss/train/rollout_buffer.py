"""The rollout buffer: one generation's micro-batches, replayed over several optimizer steps.

A generation samples ``micro_batches`` micro-batches (TRL ``steps_per_generation``); they
are trained ``passes`` times (TRL ``num_iterations``, PPO's epochs), ``grad_accum`` of them
per optimizer step, in order: pass 1 over every micro-batch, then pass 2, ... Only the
first optimizer step of a generation is on-policy; every later one trains on samples of
an older policy, so the buffer has the old log-probs log π_old(y_t) recorded right after
sampling, before any update (``record_old``): the importance ratio π_θ/π_old then leaves 1
and clipping, dual clip and sequence-level ratios act (Schulman et al. 2017, PPO).

Offline modes and plain on-policy runs (one step per generation, one pass) refill every
step and record nothing: no extra forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the modes build their buffer: no import cycle
    from lmloss.train.modes.base import Batch


class RolloutBuffer:
    def __init__(
        self,
        micro_batches: int,
        grad_accum: int,
        passes: int = 1,
        record_old: Callable[[Batch], None] | None = None,
    ) -> None:
        if micro_batches % grad_accum:
            raise ValueError(
                f"policy.steps_per_generation ({micro_batches}) must be a multiple of "
                f"train.grad_accum ({grad_accum}): each optimizer step takes grad_accum of them"
            )
        self.micro_batches, self.grad_accum, self.passes = micro_batches, grad_accum, passes
        self.record_old = record_old
        self.queue: list[list[Batch]] = []

    @property
    def reuses(self) -> bool:
        """Whether any step trains on samples of an older policy."""
        return self.passes > 1 or self.micro_batches > self.grad_accum

    def next_step(self, sample: Callable[[int], list[Batch]]) -> list[Batch]:
        """The micro-batches of the next optimizer step; ``sample(n)`` generates ``n`` more
        when the buffer is spent."""
        if not self.queue:
            batches = sample(self.micro_batches)
            if self.record_old is not None:
                for batch in batches:
                    self.record_old(batch)
            steps = [
                batches[i : i + self.grad_accum]
                for i in range(0, self.micro_batches, self.grad_accum)
            ]
            self.queue = steps * self.passes
        return self.queue.pop(0)
