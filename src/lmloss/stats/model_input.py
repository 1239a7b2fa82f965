"""A model as the engine takes it: one value per model, one for the loss-side settings.

* :class:`Head` — what turns final hidden states into logits: ``weight [V, H]``, optional
  ``bias [V]``, and the head's logit transform, ``(hidden @ weight.T + bias) * logit_scale``
  then soft-capped (Gemma's ``softcap``, Cohere's or Granite's ``logit_scale``); see
  :class:`~lmloss.stats.transform.LogitTransform`. It is ``lmloss.Head``.
* :class:`ModelInput` — a model's hidden states and its head;
* :class:`ModelLogits` — a model known only by its raw logits (a teacher served elsewhere)
  and the transform of the head that made them;
* :class:`PairSettings` — what the two-model engine applies to both models alike.

The temperature is the loss's, not a head's: it divides both models' logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmloss.stats.transform import LogitTransform

Tensor = torch.Tensor


@dataclass(frozen=True)
class Head:
    """The LM head's parameters (``weight [V, H]``, optional ``bias [V]``) and logit transform
    (Gemma's ``softcap``, Cohere's or Granite's ``logit_scale``)."""

    weight: Tensor
    bias: Tensor | None = None
    softcap: float | None = None
    logit_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.weight, Tensor):
            raise TypeError(
                f"Head.weight must be a [V, H] tensor, got {type(self.weight).__name__}"
            )
        if self.bias is not None and not isinstance(self.bias, Tensor):
            raise TypeError(
                f"Head.bias must be a [V] tensor or None, got {type(self.bias).__name__}"
            )
        LogitTransform(logit_scale=self.logit_scale, softcap=self.softcap)  # checks the values

    def transform_kwargs(self) -> dict[str, float | None]:
        """``softcap`` and ``logit_scale`` as keywords (of :func:`lmloss.token_stats`)."""
        return {"softcap": self.softcap, "logit_scale": self.logit_scale}

    def transform(self, temperature: float = 1.0) -> LogitTransform:
        """The head's logit transform at ``temperature``."""
        return LogitTransform(
            logit_scale=self.logit_scale, softcap=self.softcap, temperature=temperature
        )

    def detached(self) -> Head:
        """The same head cut from the graph (a frozen reference or teacher)."""
        bias = None if self.bias is None else self.bias.detach()
        return Head(self.weight.detach(), bias, self.softcap, self.logit_scale)


@dataclass(frozen=True)
class ModelInput:
    """A model's final hidden states ``[..., H]`` and the :class:`Head` that reads them."""

    hidden: Tensor
    head: Head

    def __post_init__(self) -> None:
        if not isinstance(self.head, Head):
            raise TypeError(
                f"ModelInput.head must be an lmloss.Head, got {type(self.head).__name__}"
            )

    def transform(self, temperature: float = 1.0) -> LogitTransform:
        """The head's logit transform at ``temperature``."""
        return self.head.transform(temperature)


@dataclass(frozen=True)
class ModelLogits:
    """A model's raw logits ``[..., V]`` (before its head's transform) and that transform."""

    logits: Tensor
    softcap: float | None = None
    logit_scale: float = 1.0

    def transform(self, temperature: float = 1.0) -> LogitTransform:
        """The transform of the head that made the logits, at ``temperature``."""
        return LogitTransform(
            logit_scale=self.logit_scale, softcap=self.softcap, temperature=temperature
        )


@dataclass(frozen=True)
class PairSettings:
    """The two-model engine's settings, shared by both models.

    Attributes:
        temperature: divides both models' logits.
        memory_budget: bytes for the logit tiles (None: the engine's default).
        teacher_requires_grad: gradients also reach the teacher's inputs (online
            distillation); the student always gets its own.
    """

    temperature: float = 1.0
    memory_budget: int | None = None
    teacher_requires_grad: bool = False
