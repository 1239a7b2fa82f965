"""Run a Hugging Face causal LM's backbone and hand its hidden states and head to the engine.

``model(...)`` would compute ``[B, T, V]`` logits; instead we call the backbone (the
model's ``base_model_prefix`` attribute, e.g. ``model.model`` or ``model.transformer``)
and read the head's parameters and logit transform from the model and its config:

* tied embeddings: ``get_output_embeddings().weight`` *is* the input embedding
  parameter, so gradients reach the shared tensor without special handling;
* ``final_logit_softcapping`` (Gemma 2/3) → ``softcap``;
* ``logit_scale`` (Cohere) → ``logit_scale``; ``logits_scaling`` (Granite divides) →
  ``logit_scale = 1 / logits_scaling``.

A PEFT model (``PeftModel`` or a tuner such as ``LoraModel``) is unwrapped to the causal LM
it wraps (:func:`causal_lm_of`). LoRA layers are injected into that model's modules in
place, so its backbone still runs the adapters and their gradients flow as usual.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch

from lmloss.head import Head
from lmloss.stats import TokenStats, token_stats

Tensor = torch.Tensor


def _peft_wrapper_types() -> tuple[type, ...]:
    """PEFT's wrapper classes; none when peft was never imported (then nothing is wrapped)."""
    peft = sys.modules.get("peft")
    if peft is None:
        return ()
    from peft.tuners.tuners_utils import BaseTuner

    return (peft.PeftModel, BaseTuner)


def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside ``model``: itself, or what a PEFT wrapper wraps.

    ``PeftModel.get_base_model()`` is the model with the adapters injected (for LoRA and
    its relatives) or the bare model (prompt learning, whose virtual tokens PeftModel adds
    to the inputs); a tuner (``LoraModel``) holds it as ``.model``.
    """
    wrappers = _peft_wrapper_types()
    while wrappers and isinstance(model, wrappers):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model.model
        if inner is model:
            break
        model = inner
    return model


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (embeddings → layers → final norm) of a causal LM, PEFT or not."""
    lm = causal_lm_of(model)
    backbone = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    if backbone is None or backbone is lm:
        raise TypeError(f"cannot find the backbone of {type(lm).__name__}")
    return backbone


def head_of(model: torch.nn.Module) -> Head:
    """The head of a Hugging Face causal LM (weight, bias, soft cap, logit scale)."""
    model = causal_lm_of(model)
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
    output = backbone_of(model)(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs
    )
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
