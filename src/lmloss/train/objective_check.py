"""Objective hyper-parameter ranges checked before any model loads, by the objective itself.

An objective checks its own ranges when it runs (``beta > 0`` for DPO, a clip width
``eps_low`` in [0, 1], cDPO's label noise ``eps`` in [0, 0.5), ...). So that ``lmloss validate``
(and ``lmloss train``, before it loads the model) finds an out-of-range value without a
second copy of those ranges, :func:`check_ranges` calls the objective once through the
front door the trainer calls, on CPU, on a tiny synthetic batch shaped from its spec
(:attr:`~lmloss.objectives.spec.ObjectiveSpec.kind` and ``inputs``), with the recipe's
hyper-parameters. A ``ValueError`` or ``TypeError`` the objective raises becomes one line
naming the recipe key (``objective.beta``, ``objective.add[0].beta``) and the objective's
own words, which state the allowed range.

The synthetic batch is valid for the objective's defaults by construction, and the
defaults are tried first: an objective whose inputs this module cannot shape is skipped
(and said so), never refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

import lmloss
from lmloss import registry

ROWS, T, K, V, D = 4, 3, 2, 16, 2  # rows, tokens, list items, vocabulary, embedding size


class RangeError(ValueError):
    """A recipe hyper-parameter the objective refuses."""


def _log_probs(*shape: int) -> torch.Tensor:
    return -0.5 - torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) / 10


def _values(*shape: int) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, torch.Size(shape).numel()).reshape(shape)


def _mask(*shape: int) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.bool)


def _completions(prefixes: tuple[str, ...], *shape: int) -> dict[str, torch.Tensor]:
    out = {}
    for prefix in prefixes:
        out |= {
            f"{prefix}logps": _log_probs(*shape),
            f"{prefix}mask": _mask(*shape),
            f"ref_{prefix}logps": _log_probs(*shape) - 0.25,
        }
    return out


def _preference(spec, B: int) -> dict[str, torch.Tensor]:
    if spec.kind == "Pairs":
        batch = _completions(("chosen_", "rejected_"), B, T)
    elif spec.kind == "Lists":
        batch = _completions(("",), B, K, T) | {"scores": _values(B, K)}
    else:
        batch = _completions(("",), B, T)
    if spec.samples:
        batch |= _completions(("sample_",), B, K, T)
    if "kl_logps" in spec.takes:  # KTO's reference-point samples
        batch |= _completions(("kl_",), B, T)
    for prefix in ("chosen_", "rejected_"):  # per-token KL and SparsePO's token weights
        for stat in ("kl", "reward_weights", "kl_weights"):
            if f"{prefix}{stat}" in spec.takes:
                batch[f"{prefix}{stat}"] = torch.full((B, T), 0.5)
    per_example = {
        "desirable": torch.arange(B) % 2 == 0,
        "strength": torch.linspace(0.2, 0.8, B),
    }
    return batch | {k: v for k, v in per_example.items() if k in spec.inputs}


def _policy(spec, B: int) -> dict[str, torch.Tensor]:
    batch = {
        "logps": _log_probs(B, T),
        "old_logps": _log_probs(B, T) - 0.1,
        "ref_logps": _log_probs(B, T) - 0.2,
        "mask": _mask(B, T),
        "advantages": _values(B),
        "entropy": _values(B, T).abs() + 0.5,
        "token_ids": torch.arange(B * T).reshape(B, T) % V,
        "proxy_logps": _log_probs(B, T) - 0.3,
    }
    return {k: v for k, v in batch.items() if k in spec.takes}


def _likelihood(spec, B: int) -> dict[str, torch.Tensor]:
    batch = {
        "logps": _log_probs(B, T),
        "lse": _values(B, T) + 2.0,
        "mean_logit": _values(B, T),
        "expectation": _values(B, T, D),
        "target_embedding": _values(B, T, D).flip(-1),
        "mask": _mask(B, T),
    }
    return {k: v for k, v in batch.items() if k in spec.takes}


def _distill(spec, B: int) -> dict[str, torch.Tensor]:
    return {
        "student_logits": _values(B, T, V),
        "teacher_logits": _values(B, T, V).flip(-1),
        "mask": _mask(B, T),
        "labels": torch.arange(B * T).reshape(B, T) % V,
    }


def _door(entry: registry.Entry, B: int) -> Callable[[dict], Any]:
    """``hyper -> loss``: the front door the trainer's mode calls for ``entry`` (reward
    models: on scores), on ``B`` synthetic rows."""
    if entry.family == "classify":
        scores = {"chosen": _values(B), "rejected": _values(B).flip(0)}
        return lambda hyper: lmloss.reward_model_loss(entry.name, **scores, **hyper)
    batch = {
        "preference": _preference,
        "policy": _policy,
        "likelihood": _likelihood,
        "distill": _distill,
    }[entry.family](entry.spec, B)
    return lambda hyper: lmloss.loss(entry.name, **batch, **hyper)


def _refusal(call: Callable[[dict], Any], hyper: Mapping[str, Any]) -> Exception | None:
    """What the objective raises on ``hyper`` (None when it runs)."""
    try:
        with torch.no_grad():
            call(dict(hyper))
    except (ValueError, TypeError) as error:
        return error
    return None


def check_ranges(
    name: str,
    hyper: Mapping[str, Any],
    where: str = "objective",
    *,
    fixed: Mapping[str, Any] | None = None,
) -> bool:
    """Run objective ``name`` once with ``hyper`` (the recipe's keys, named ``where.KEY``)
    and ``fixed`` (values the trainer sets, e.g. ``max_tokens``).

    Returns:
        True when the objective ran, False when it was skipped (the synthetic batch does
        not fit its defaults; then its ranges are checked at the first step).

    Raises:
        RangeError: naming the first key whose value the objective refuses (each key is
            tried alone over the defaults; keys refused only together are named together).
    """
    entry, fixed = registry.get(name), dict(fixed or {})
    if entry.family == "classify" and entry.name not in _pairwise_scores():
        return False  # not trainable: formats.check_objective refuses it by name

    def call(values: dict) -> Any:
        group = values.get("group_size")  # GTPO's groups of consecutive rows
        whole = isinstance(group, int) and not isinstance(group, bool) and 0 < group <= 64
        return _door(entry, 2 * group if whole else ROWS)(values)

    if _refusal(call, fixed) is not None:
        return False
    error = _refusal(call, {**fixed, **hyper})
    if error is None:
        return True
    alone = [key for key in hyper if _refusal(call, {**fixed, key: hyper[key]}) is not None]
    keys = alone[:1] or list(hyper)
    named = " and ".join(f"{where}.{key} = {hyper[key]!r}" for key in keys)
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise RangeError(f"{named} is refused by {entry.name!r}: {reason}")


def _pairwise_scores() -> tuple[str, ...]:
    from lmloss.classify import PAIRWISE_SCORE_OBJECTIVES

    return tuple(PAIRWISE_SCORE_OBJECTIVES)


def check_recipe_ranges(recipe) -> str:
    """The recipe's objective and each ``[[objective.add]]`` term, run once on CPU with their
    hyper-parameters; returns the report line."""
    checked, skipped = [], []
    parts = [(recipe.objective, recipe.hyper, "objective", recipe.filled_hyper())]
    parts += [(t.name, t.hyper, f"objective.add[{i}]", {}) for i, t in enumerate(recipe.terms)]
    for name, hyper, where, fixed in parts:
        ran = check_ranges(name, hyper, where, fixed=fixed)
        (checked if ran else skipped).append(name)
    line = f"objective ranges: {', '.join(checked) or 'none'} ran on a synthetic batch"
    if skipped:
        line += f"; not checked before the first step: {', '.join(skipped)}"
    return line
