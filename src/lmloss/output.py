"""The value every objective returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """A scalar loss, its per-example terms and detached metrics.

    Attributes:
        loss: the scalar to call ``backward`` on.
        per_example: the loss of each example (pair, sequence, list or token) before the
            batch reduction, differentiable.
        metrics: detached scalar tensors for logging (rewards, margins, accuracies, ...).
    """

    loss: torch.Tensor
    per_example: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def with_gradients_of(self, total: torch.Tensor) -> LossOutput:
        """This output's values, its loss carrying the gradients of ``total`` instead.

        The one-pass schedule computes each block's gradients into ``total`` (the sum of
        the blocks' weighted losses) and the reported values from one no-grad run on the
        whole batch, so that they never depend on the blocks; ``total − total`` is 0 in
        value and ``total``'s gradient."""
        carried = (total - total.detach()).to(self.loss.dtype)
        return LossOutput(self.loss + carried, self.per_example, self.metrics)
