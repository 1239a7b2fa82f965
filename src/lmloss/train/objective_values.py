"""The recipe's objective hyper-parameters checked before anything loads: each value has
the type of the objective's default, and a named option is one the objective knows.

Without this, ``beta = "0.1"``, ``beta = [0.1]``, ``sft_mean = 1`` or an unknown
``divergence`` passed ``lmloss validate`` and stopped ``lmloss train`` only at the first
step, after the model had loaded. (Ranges, such as ``beta > 0``, depend on the objective
and are still checked by the objective itself, at the first step.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lmloss._checks import require_choice


def _options() -> dict[str, Iterable[str]]:
    """Each string hyper-parameter that names an option, and its options."""
    from lmloss.objectives.classify.anyloss import METRICS
    from lmloss.objectives.policy.aggregate import AGGREGATIONS
    from lmloss.objectives.policy.kl import KL_ESTIMATORS
    from lmloss.objectives.policy.rollouts import RATIO_LEVELS
    from lmloss.objectives.preference.margin import MARGIN_DIVERGENCES
    from lmloss.stats.divergence_terms import DIVERGENCES

    return {
        "metric": METRICS,
        "aggregation": AGGREGATIONS,
        "ratio_level": RATIO_LEVELS,
        "kl_estimator": KL_ESTIMATORS,
        "reg_estimator": KL_ESTIMATORS,
        "divergence": MARGIN_DIVERGENCES,
        "cost": DIVERGENCES,
    }


def _fits(value: Any, default: Any) -> bool:
    """Whether ``value`` has the type of ``default`` (an int counts as a float)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
    return True  # a default of None: any type the objective accepts


def _type_name(default: Any) -> str:
    if isinstance(default, tuple):
        return "a list of numbers"
    return {bool: "true or false", float: "a number", int: "a whole number", str: "text"}[
        type(default)
    ]


def check_objective_values(name: str, defaults: Mapping[str, Any], hyper: Mapping) -> None:
    """``objective.<key>`` values of objective ``name`` against its ``defaults``."""
    options = _options()
    for key, value in hyper.items():
        default = defaults.get(key)
        if default is not None and not _fits(value, default):
            raise TypeError(
                f"objective.{key} must be {_type_name(default)} (as {name}'s default "
                f"{default!r}), got {value!r}"
            )
        if key in options and isinstance(value, str):
            require_choice(f"objective.{key}", value, options[key])
