"""What the TRL trainers share: splitting arguments, hidden states, token metrics."""

from __future__ import annotations

import dataclasses
import inspect

import torch

from lmloss.hf import Head, head_of
from lmloss.stats import token_stats


def split_hyper(trainer_init, kwargs: dict) -> tuple[dict, dict]:
    """``kwargs`` split into the TRL trainer's arguments and the objective's hyper-parameters."""
    own = set(inspect.signature(trainer_init).parameters) - {"self"}
    return (
        {k: v for k, v in kwargs.items() if k in own},
        {k: v for k, v in kwargs.items() if k not in own},
    )


def config_hyper(args, fields: dict[str, str], takes) -> dict:
    """Hyper-parameters from TRL config ``fields`` (config name → hyper name) the user set.

    Only values away from the config class's default carry over: TRL's defaults are not the
    objectives' own (``DPOConfig.beta`` is 0.1, SimPO's β is 2).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(type(args))}
    return {
        name: getattr(args, field)
        for field, name in fields.items()
        if name in takes and getattr(args, field) != defaults.get(field)
    }


def require_trl_default(args, field: str, default, why: str) -> None:
    """A TRL loss setting lmloss replaces must stay at its default, not be silently ignored."""
    value = getattr(args, field, default)
    if value != default:
        raise ValueError(f"{type(args).__name__}.{field}={value!r} is not used by lmloss: {why}")


def final_hidden(model: torch.nn.Module, **inputs) -> torch.Tensor:
    """Final hidden states ``[B, T, H]`` through every wrapper (PEFT, DDP) of a patched model."""
    return model(**inputs, use_cache=False, lmloss_hidden_states=True).last_hidden_state


def detached_head(model: torch.nn.Module) -> Head:
    return head_of(model).detached()


@torch.no_grad()
def token_metrics(
    hidden: torch.Tensor, head: Head, targets: torch.Tensor, want: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Per-token statistics for logging (no gradient): one more forward pass over the vocabulary."""
    return token_stats(
        hidden.detach(), head.weight.detach(), targets, head.bias, want=want,
        **head.transform_kwargs(),
    ).asdict()  # fmt: skip


def masked_mean(values: torch.Tensor, mask: torch.Tensor, accelerator) -> float:
    """The mean of ``values`` over ``mask``, counted over every process."""
    totals = torch.stack([(values * mask).sum(), mask.sum().to(values.dtype)])
    totals = accelerator.reduce(totals, reduction="sum")
    return (totals[0] / totals[1].clamp(min=1)).item()
