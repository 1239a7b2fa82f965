"""``patch(model)``: a Hugging Face causal LM whose own loss never builds the logits.

After :func:`patch`, ``model(input_ids, labels=labels, ...)`` runs the backbone, and the
loss comes from the final hidden states and the LM head through the fused likelihood
front door (:func:`lmloss.fused_likelihood_loss`): ``logits`` is ``None`` in the output and
the ``[N, V]`` logits never exist. It is the model's own loss, term for term:

    loss = Σ_t ℓ(h_t, y_{t+1}) / n,   ℓ = −log softmax(transform(W h_t))_{y_{t+1}} for "ce"

with Hugging Face's label shift (position ``t`` scores label ``t + 1``, or ``shift_labels``
as given), ``ignore_index`` (−100) dropped, ``n`` the number of trained tokens or the
``num_items_in_batch`` that ``transformers.Trainer`` passes under gradient accumulation
(so that the sum over micro-batches is the mean over the whole step), and float32
accumulation whatever the model's dtype. ``transform`` is the architecture's logit soft cap
or scale (:func:`lmloss.hf.head_of`). Any likelihood objective (``label_smoothing``,
``focal``, ``z_loss``, ``dco``, ...) can replace cross-entropy.

Without ``labels`` the forward is the model's own, so ``generate`` and evaluation that
reads the logits are unchanged. ``transformers.Trainer`` and TRL's trainers call
``model(**batch)`` and read ``outputs.loss``, so they train with the patched loss as is.

``model(..., lmloss_hidden_states=True)`` returns the backbone's output (``last_hidden_state``)
and nothing else: trainers whose loss is not a likelihood (``lmloss.trl``) take the hidden
states this way, through every wrapper around the model (PEFT, DDP), and hand them to the
engine themselves.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from lmloss.hf._objective import likelihood_objective
from lmloss.hf.adapter import backbone_of, causal_lm_of, head_of

# ``config.model_type`` of the architectures whose logits are exactly
# ``transform(lm_head(backbone(...).last_hidden_state))`` with a transform ``head_of`` reads
# (no mixture-of-experts auxiliary loss, no hidden-state rescaling before the head).
PATCHABLE_MODEL_TYPES = (
    "cohere",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt2",
    "granite",
    "llama",
    "mistral",
    "olmo2",
    "phi3",
    "qwen2",
    "qwen3",
    "smollm3",
    "starcoder2",
)

# Arguments of a causal LM's forward that concern the logits or the loss, not the backbone.
_LOSS_ARGUMENTS = (
    "labels",
    "logits_to_keep",
    "num_items_in_batch",
    "shift_labels",
    "lmloss_hidden_states",
    "ignore_index",
    "return_dict",
)


@dataclass(frozen=True)
class _Patch:
    """What a patched model remembers: the objective and how to undo the patch."""

    objective: str
    hyper: dict
    original_forward: object
    instance_forward: bool  # the forward replaced was set on the instance (e.g. by a hook)


# config fields of mixture-of-experts models (Mixtral, Qwen2-MoE, OLMoE, ...)
_EXPERT_FIELDS = ("num_local_experts", "num_experts", "router_aux_loss_coef")


def _patchable(lm: torch.nn.Module) -> None:
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PATCHABLE_MODEL_TYPES:
        moe = any(getattr(config, field, None) for field in _EXPERT_FIELDS)
        why = (
            "a mixture-of-experts model's loss adds its router's auxiliary loss, which a "
            "patched loss would leave out"
            if moe
            else "its logits are not known to be the LM head of the final hidden states"
        )
        raise TypeError(
            f"lmloss.hf.patch cannot patch {type(lm).__name__} (model_type={model_type!r}): "
            f"{why}; supported model types: {', '.join(PATCHABLE_MODEL_TYPES)}"
        )


def patch(model: torch.nn.Module, objective: str = "ce", **hyper) -> torch.nn.Module:
    """Make ``model``'s forward with ``labels`` compute its loss fused, without logits.

    Args:
        model: a Hugging Face causal LM (``LlamaForCausalLM``, ...) or a PEFT model wrapping
            one; the causal LM inside is patched in place (patching again replaces the
            objective).
        objective: a likelihood objective (``lmloss.list_objectives("likelihood")``).
        **hyper: its hyper-parameters (``eps=0.1`` for ``label_smoothing``, ...), and the
            options ``reweight``, ``reweight_temperature``, ``memory_budget``,
            ``embedding_table`` of :func:`lmloss.fused_likelihood_loss`.

    Returns:
        ``model`` itself.

    Raises:
        TypeError: an architecture not in :data:`PATCHABLE_MODEL_TYPES`, or hyper-parameters
            the objective does not take.
        ValueError: an unknown objective.

    Example:
        >>> import torch, transformers, lmloss.hf
        >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16,
        ...     intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
        >>> model = lmloss.hf.patch(transformers.LlamaForCausalLM(config))
        >>> ids = torch.randint(0, 64, (2, 8))
        >>> out = model(input_ids=ids, labels=ids)
        >>> out.logits is None, out.loss.shape
        (True, torch.Size([]))
    """
    lm = causal_lm_of(model)
    _patchable(lm)
    name = likelihood_objective(objective, hyper)
    unpatch(lm)
    instance_forward = "forward" in vars(lm)
    original = lm.forward
    lm._lmloss_patch = _Patch(name, dict(hyper), original, instance_forward)
    lm.forward = functools.wraps(original)(functools.partial(_patched_forward, lm, original))
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Give ``model`` (or the causal LM inside a PEFT model) its own forward back."""
    lm = causal_lm_of(model)
    state = vars(lm).pop("_lmloss_patch", None)
    if state is not None:
        if state.instance_forward:
            lm.forward = state.original_forward
        else:
            del lm.forward
    return model


def is_patched(model: torch.nn.Module) -> bool:
    """Whether :func:`patch` was applied to ``model`` (or the causal LM it wraps)."""
    return "_lmloss_patch" in vars(causal_lm_of(model))


def causal_lm_loss(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    objective: str = "ce",
    **hyper,
):
    """The patched loss of ``model`` from its final hidden states ``[B, T, H]``.

    ``labels`` ``[B, T]`` are shifted as Hugging Face does (position ``t`` scores label
    ``t + 1``); ``shift_labels`` are used as given. Returns the :class:`lmloss.LossOutput` of
    :func:`lmloss.fused_likelihood_loss` (its ``per_example`` holds the per-token losses).
    """
    from lmloss.likelihood import fused_likelihood_loss

    if shift_labels is None:
        if labels is None:
            raise ValueError("causal_lm_loss needs labels= or shift_labels=")
        hidden, shift_labels = hidden[:, :-1], labels[:, 1:]
    return fused_likelihood_loss(
        objective,
        hidden=hidden,
        head=head_of(model),
        targets=shift_labels.to(hidden.device),
        num_items=num_items_in_batch,
        ignore_index=ignore_index,
        **hyper,
    )


def _arguments(original, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name, the ``**kwargs`` of the signature merged in."""
    signature = inspect.signature(original)
    bound = signature.bind(*args, **kwargs).arguments
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    return dict(bound)


def _patched_forward(lm: torch.nn.Module, original, *args, **kwargs):
    arguments = _arguments(original, args, kwargs)
    labels, shift_labels = arguments.get("labels"), arguments.get("shift_labels")
    hidden_only = arguments.get("lmloss_hidden_states", False)
    if labels is None and shift_labels is None and not hidden_only:
        return original(*args, **kwargs)
    backbone_args = {k: v for k, v in arguments.items() if k not in _LOSS_ARGUMENTS}
    backbone_args["use_cache"] = bool(backbone_args.get("use_cache"))
    output = backbone_of(lm)(**backbone_args)
    if hidden_only:
        return output

    state: _Patch = lm._lmloss_patch
    loss = causal_lm_loss(
        lm,
        output.last_hidden_state,
        labels=labels,
        shift_labels=shift_labels,
        num_items_in_batch=arguments.get("num_items_in_batch"),
        ignore_index=arguments.get("ignore_index", -100),
        objective=state.objective,
        **state.hyper,
    ).loss
    result = CausalLMOutputWithPast(
        loss=loss,
        logits=None,
        past_key_values=getattr(output, "past_key_values", None),
        hidden_states=getattr(output, "hidden_states", None),
        attentions=getattr(output, "attentions", None),
    )
    return result.to_tuple() if arguments.get("return_dict") is False else result
