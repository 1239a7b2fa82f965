"""Metadata an objective carries: its registry name, family, paper and the statistics it needs.

Objectives stay plain functions; ``@objective(...)`` only attaches an :class:`ObjectiveSpec`
to them. :mod:`lmloss.registry` collects the tagged functions, so this layer never imports
the registry (data and imports flow one way).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FAMILIES = ("likelihood", "preference", "policy", "distill", "classify")


@dataclass(frozen=True)
class ObjectiveSpec:
    """What the registry, the CLI and the fused paths need to know about an objective.

    Attributes:
        name: registry name, lower case (``"dpo"``).
        family: one of :data:`FAMILIES`.
        paper: the reference, e.g. ``"Rafailov et al. 2023, arXiv:2305.18290"``.
        stats: per-token statistics the fused path must compute for it, by engine name
            (``"logp"``, ``"entropy"``, ``"lse"``, ``"sum_sq_probs"``, ``"mean_logit"``, ...).
        aliases: other names that resolve to it.
        defaults: hyper-parameter overrides that distinguish this entry when several
            registry names share one function (e.g. ``tdpo2`` is ``tdpo`` with ``alpha=0.5``).
    """

    name: str
    family: str
    paper: str
    stats: tuple[str, ...] = ("logp",)
    aliases: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()


def objective(
    name: str,
    *,
    family: str,
    paper: str,
    stats: tuple[str, ...] = ("logp",),
    aliases: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> Callable[[Callable], Callable]:
    """Tag a function as the objective ``name``. Can be stacked to register variants."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    spec = ObjectiveSpec(
        name=name,
        family=family,
        paper=paper,
        stats=tuple(stats),
        aliases=tuple(aliases),
        defaults=tuple(sorted((defaults or {}).items())),
    )

    def tag(fn: Callable) -> Callable:
        fn.__objective_specs__ = (*getattr(fn, "__objective_specs__", ()), spec)
        return fn

    return tag


def hyper_parameters(fn: Callable) -> dict[str, Any]:
    """Keyword-only parameters with defaults: the objective's hyper-parameters."""
    params = inspect.signature(fn).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
