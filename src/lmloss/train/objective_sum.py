"""Weighted sums of objectives: ``[[objective.add]]`` terms beside the recipe's objective.

A recipe may add terms to its objective, each a registered objective with a weight and
its own hyper-parameters::

    [objective]
    name = "dpo"
    beta = 0.1
    [[objective.add]]
    name = "ce"        # SFT on the chosen answers (RPO-style)
    weight = 0.2

The loss is ``L = L_objective + Σ_k w_k · L_k``; each term's unweighted loss is logged as
``loss/<name>``. A term must be fed by the batch the objective's mode builds: terms of the
same family and input kind run on the same rows; a likelihood term runs on the answers the
data marks as good (the chosen answers of pairs, the completions labelled true of unpaired
rows, the ``completion`` column of a policy objective's prompt rows: a demonstration). The
mode runs the backbone once and the engine once for the union of the statistics the terms
declare, then each term's objective on those statistics (the front doors' plain paths),
never one pass per term.

A token-mean term under an objective that averages over examples is the mean over the
micro-batch's tokens, weighted like the objective (TRL's ``rpo_alpha`` does the same).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lmloss import registry
from lmloss.output import LossOutput
from lmloss.stats import STATISTICS


@dataclass(frozen=True)
class Term:
    """One added term: a registered objective, its weight and hyper-parameters."""

    name: str
    weight: float
    hyper: dict[str, Any] = field(default_factory=dict)

    @property
    def entry(self) -> registry.Entry:
        return registry.get(self.name)


# preference kinds whose rows mark the good answers a likelihood term trains on
GOOD_ANSWERS = ("Pairs", "Unpaired")
SUMMED_FAMILIES = ("likelihood", "preference", "policy")


def feeds(main: registry.Entry, term: registry.Entry) -> bool:
    """Whether the mode of ``main`` builds rows ``term`` can be computed on."""
    if main.family in ("likelihood", "policy"):  # policy: on the demonstration column
        return term.family == "likelihood"
    if main.family != "preference" or main.spec.kind not in GOOD_ANSWERS:
        return False
    return term.family == "likelihood" or term.spec.kind == main.spec.kind


def _require_engine_only(entry: registry.Entry, where: str) -> None:
    missing = [s for s in entry.spec.stats if s not in STATISTICS]
    if missing:
        raise ValueError(
            f"{where}: {entry.name!r} needs statistics a weighted sum does not compute in its "
            f"one engine pass ({', '.join(missing)})"
        )


def _fed_by(main: registry.Entry) -> str:
    if main.family == "likelihood":
        return "likelihood objectives"
    if main.family == "policy":
        return "likelihood objectives (on the rows' completion column, a demonstration)"
    if main.spec.kind in GOOD_ANSWERS:
        return f"{main.spec.kind} preference objectives and likelihood objectives (good answers)"
    return "no term (weighted sums are built for pairwise and unpaired preference objectives)"


def parse(main: registry.Entry, tables: Any, check_hyper) -> tuple[Term, ...]:
    """``[[objective.add]]`` tables as :class:`Term` s; ``check_hyper(entry, key, where)``
    refuses a key that is not a hyper-parameter of the term's objective."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise TypeError(
            "objective.add must be a list of tables ([[objective.add]] with name and weight)"
        )
    terms, names = [], {main.name}
    if tables and main.family not in SUMMED_FAMILIES:
        raise ValueError(
            f"objective.add: weighted sums are built for {', '.join(SUMMED_FAMILIES)} "
            f"objectives; {main.name!r} is a {main.family} objective"
        )
    if tables:
        _require_engine_only(main, "objective.add")
    for i, table in enumerate(tables):
        where = f"objective.add[{i}]"
        values = dict(table)
        name, weight = values.pop("name", None), values.pop("weight", None)
        if not isinstance(name, str):
            raise ValueError(f"{where} needs name = '<objective>' (see `lmloss list`)")
        entry = registry.get(name)
        if (
            not isinstance(weight, (int, float))
            or isinstance(weight, bool)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(f"{where}.weight must be a finite number >= 0, got {weight!r}")
        if entry.name in names:
            raise ValueError(
                f"{where}: {entry.name!r} is already a term of the objective (each term once: "
                "its loss is logged under its name)"
            )
        _require_engine_only(entry, where)
        if not feeds(main, entry):
            raise ValueError(
                f"{where}: the batches of {main.name!r} ({main.family}, "
                f"{main.spec.kind} inputs) cannot feed {entry.name!r} ({entry.family}, "
                f"{entry.spec.kind} inputs); they feed {_fed_by(main)}"
            )
        for key in values:
            check_hyper(entry, key, f"{where}.{key}")
        names.add(entry.name)
        terms.append(Term(entry.name, float(weight), values))
    return tuple(terms)


def engine_statistics(entries: Iterable[registry.Entry], extra: Iterable[str] = ()) -> list[str]:
    """The one-model engine statistics the objectives declare (their union), with ``logp``."""
    wanted = {"logp", *extra}
    for entry in entries:
        wanted.update(s for s in entry.spec.stats if s in STATISTICS)
    return sorted(wanted)


def total(parts: list[tuple[str, float, LossOutput]]) -> LossOutput:
    """``Σ weight · loss`` of ``(name, weight, output)`` parts, the first being the objective:
    its per-example losses and metrics are kept, every part's loss is logged by name."""
    first = parts[0][2]
    loss = sum(weight * out.loss for _, weight, out in parts)
    metrics = dict(first.metrics)
    for name, _, out in parts:
        metrics[f"loss/{name}"] = out.loss.detach()
    for name, _, out in parts[1:]:
        metrics |= {f"{name}/{key}": value for key, value in out.metrics.items()}
    return LossOutput(loss=loss, per_example=first.per_example, metrics=metrics)
