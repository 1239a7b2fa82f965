"""Metadata an objective carries: its registry name, family, paper and the statistics it needs.

Objectives stay plain functions; ``@objective(...)`` attaches an :class:`ObjectiveSpec` to
them and adds the one check they all share: a float hyper-parameter must be finite (a NaN
or infinite ``beta`` is a ``ValueError``, never a NaN loss). :mod:`lmloss.registry` collects
the tagged functions, so this layer never imports the registry (data and imports flow one
way).
"""

from __future__ import annotations

import functools
import inspect
import math
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
        if not hasattr(fn, "__objective_specs__"):  # stacked tags share one check
            fn = _finite_hyper_parameters(fn)
        fn.__objective_specs__ = (*getattr(fn, "__objective_specs__", ()), spec)
        return fn

    return tag


def _finite_hyper_parameters(fn: Callable) -> Callable:
    """``fn`` refusing a NaN or infinite float for any of its hyper-parameters."""
    names = set(hyper_parameters(fn))

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for key, value in kwargs.items():
            if key in names and isinstance(value, float) and not math.isfinite(value):
                objective = "/".join(s.name for s in checked.__objective_specs__)
                raise ValueError(f"{objective}: {key} must be a finite number, got {value}")
        return fn(*args, **kwargs)

    return checked


def hyper_parameters(fn: Callable) -> dict[str, Any]:
    """Keyword-only parameters with defaults: the objective's hyper-parameters."""
    params = inspect.signature(fn).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
