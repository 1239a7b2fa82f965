"""A language model's output head as one value: the parameter object of the fused doors.

``Head(weight, bias, softcap, logit_scale)`` holds what turns final hidden states into logits,
``(hidden @ weight.T + bias) * logit_scale`` then soft-capped
(:class:`lmloss.stats.transform.LogitTransform`; the temperature is the loss's, not the
head's). :func:`lmloss.fused_loss` takes the policy's (or student's) as ``head=`` and the
reference's or teacher's as ``ref_head=`` / ``teacher_head=`` instead of four keywords each;
:func:`lmloss.hf.head_of` reads one from a Hugging Face model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmloss.stats.transform import LogitTransform


@dataclass(frozen=True)
class Head:
    """The LM head's parameters (``weight [V, H]``, optional ``bias [V]``) and logit transform
    (Gemma's ``softcap``, Cohere's or Granite's ``logit_scale``)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None
    logit_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.weight, torch.Tensor):
            raise TypeError(
                f"Head.weight must be a [V, H] tensor, got {type(self.weight).__name__}"
            )
        LogitTransform(logit_scale=self.logit_scale, softcap=self.softcap)  # checks the values

    def transform_kwargs(self) -> dict[str, Any]:
        """``softcap`` and ``logit_scale`` as keywords."""
        return {"softcap": self.softcap, "logit_scale": self.logit_scale}

    def transform(self, temperature: float = 1.0) -> LogitTransform:
        """The head's logit transform at ``temperature``."""
        return LogitTransform(
            logit_scale=self.logit_scale, softcap=self.softcap, temperature=temperature
        )
