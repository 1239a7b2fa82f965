"""Run a Hugging Face causal LM's backbone and hand its hidden states and head to the engine.

``model(...)`` would compute ``[B, T, V]`` logits; instead we call the backbone (the
model's ``base_model_prefix`` attribute, e.g. ``model.model`` or ``model.transformer``)
and read the head's parameters and logit transform from the model and its config:

* tied embeddings: ``get_output_embeddings().weight`` *is* the input embedding
  parameter, so gradients reach the shared tensor without special handling;
* ``final_logit_softcapping`` (Gemma 2/3) → ``softcap``;
* ``logit_scale`` (Cohere) → ``logit_scale``; ``logits_scaling`` (Granite divides) →
  ``logit_scale = 1 / logits_scaling``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from lmloss.stats import TokenStats, token_stats

Tensor = torch.Tensor


@dataclass(frozen=True)
class Head:
    """The LM head's parameters and logit transform."""

    weight: Tensor
    bias: Tensor | None
    softcap: float | None
    logit_scale: float

    def transform_kwargs(self) -> dict:
        return {"softcap": self.softcap, "logit_scale": self.logit_scale}


def head_of(model: torch.nn.Module) -> Head:
    """The head of a Hugging Face causal LM (weight, bias, soft cap, logit scale)."""
    out = model.get_output_embeddings()
    if out is None or not hasattr(out, "weight"):
        raise TypeError(f"{type(model).__name__} has no output embedding (LM head) to read")
    config = model.config
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    granite_divisor = getattr(config, "logits_scaling", None)
    if granite_divisor:
        scale /= float(granite_divisor)
    softcap = getattr(config, "final_logit_softcapping", None)
    return Head(
        weight=out.weight,
        bias=getattr(out, "bias", None),
        softcap=float(softcap) if softcap else None,
        logit_scale=scale,
    )


def hidden_states(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs
) -> Tensor:
    """Final hidden states ``[B, T, H]`` of the backbone (after its final norm)."""
    backbone = getattr(model, model.base_model_prefix, None)
    if backbone is None or backbone is model:
        raise TypeError(f"cannot find the backbone of {type(model).__name__}")
    output = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return output.last_hidden_state


def causal_lm_forward(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    want: str | Iterable[str] = ("logp",),
    temperature: float = 1.0,
    ignore_index: int = -100,
    **engine_kwargs,
) -> TokenStats:
    """Per-token statistics of next-token prediction, ``[B, T-1]``.

    Position ``t`` scores token ``t + 1`` of ``labels`` (``input_ids`` when not given),
    the usual causal shift. Positions whose label is ``ignore_index`` — and padding where
    ``attention_mask`` is 0 — give zeros.
    """
    labels = input_ids if labels is None else labels
    hidden = hidden_states(model, input_ids, attention_mask)
    targets = labels[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, ignore_index)
    head = head_of(model)
    return token_stats(
        hidden[:, :-1],
        head.weight,
        targets,
        head.bias,
        ignore_index=ignore_index,
        temperature=temperature,
        want=want,
        **head.transform_kwargs(),
        **engine_kwargs,
    )
