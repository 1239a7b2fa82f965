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
