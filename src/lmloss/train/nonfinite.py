"""Stop (or skip a step) when training produces a non-finite value.

After every optimizer step's backward pass the trainer checks the loss of each
micro-batch and the global gradient norm; after the update it checks the trained
parameters. All data-parallel ranks agree on the verdict (one summed flag), so they stop
or skip together.

* ``train.on_nonfinite = "stop"`` (default): a bad loss or gradient norm stops the run with
  :class:`NonFiniteError` naming the step and the value; no update is applied, no final
  model is written, the last checkpoint stays the newest one.
* ``"skip"``: the step's update is dropped (no optimizer or scheduler step; its data is
  consumed), the row is logged with ``skipped = 1``, and the run stops after
  ``train.max_skips`` consecutive skipped steps — the recovery large-scale trainers use
  for rare overflow spikes (e.g. Megatron-LM's skipped iterations).

Non-finite *parameters* after an update always stop the run: that update cannot be undone.
"""

from __future__ import annotations

import math

import torch


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or an infinity; the message names the step and the value."""


def first_problem(losses: list[float], grad_norm: float) -> str | None:
    """What is not finite about a step (``None``: nothing)."""
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            where = f" (micro-batch {i + 1})" if len(losses) > 1 else ""
            return f"the loss is {loss}{where}"
    if not math.isfinite(grad_norm):
        return f"the gradient norm is {grad_norm}"
    return None


def finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of ``tensors`` (this rank's shards) is finite."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    checks = [torch.isfinite(t.detach()).all() for t in local if t.numel()]
    return bool(torch.stack(checks).all()) if checks else True


class Guard:
    """Counts bad steps and decides, per ``train.on_nonfinite``, whether to skip or stop."""

    def __init__(self, policy: str, max_skips: int) -> None:
        self.policy, self.max_skips = policy, max_skips
        self.consecutive = 0
        self.skipped = 0

    def good_step(self) -> None:
        self.consecutive = 0

    def bad_step(self, step: int, problem: str) -> None:
        """Record a bad step; raises :class:`NonFiniteError` unless it is to be skipped."""
        if self.policy != "skip":
            raise NonFiniteError(
                f"step {step}: {problem}; training stopped (no final model written). "
                "Lower train.lr, check the data, or set train.on_nonfinite = 'skip'"
            )
        self.consecutive += 1
        self.skipped += 1
        if self.consecutive > self.max_skips:
            raise NonFiniteError(
                f"step {step}: {problem}, {self.consecutive} steps in a row "
                f"(train.max_skips = {self.max_skips}); training stopped "
                "(no final model written)"
            )

    @staticmethod
    def bad_parameters(step: int) -> NonFiniteError:
        return NonFiniteError(
            f"step {step}: the parameters are not finite after the update; training "
            "stopped (no final model written). Lower train.lr or train.max_grad_norm"
        )
