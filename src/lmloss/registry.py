"""Names → objectives. The trainer, the CLI and the front-door functions find objectives here.

Objective modules tag their functions with :func:`lmloss.objectives.spec.objective`; this
module imports the objective packages, completes each declared spec from its function's
signature once (:func:`lmloss.objectives.signatures.complete`) and indexes the entries by
name and alias. :func:`spec` is the public view of what an objective needs.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lmloss._checks import require_choice
from lmloss.objectives import signatures
from lmloss.objectives import spec as _spec


@dataclass(frozen=True)
class Entry:
    """A registered objective: its function and metadata."""

    spec: _spec.ObjectiveSpec
    fn: Callable

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def hyper(self) -> dict[str, Any]:
        """Hyper-parameters with this entry's defaults applied (``spec.hyper``)."""
        return self.spec.hyper_defaults

    @property
    def formula(self) -> str:
        """The docstring: formula, paper, arguments."""
        return inspect.cleandoc(self.fn.__doc__ or "")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The function with this entry's hyper-parameters (defaults, then ``kwargs``), option
        groups packed into their dataclasses."""
        return self.fn(*args, **self.spec.group({**self.spec.hyper_defaults, **kwargs}))


def _objective_modules() -> list[Any]:
    import lmloss.objectives as package

    prefix = package.__name__ + "."
    return [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(package.__path__, prefix=prefix)
    ]


@lru_cache(maxsize=1)
def _families() -> dict[str, _spec.Family]:
    """Every family declared as ``FAMILY`` by a package under :mod:`lmloss.objectives`."""
    declared = (getattr(module, "FAMILY", None) for module in _objective_modules())
    return {f.name: f for f in declared if isinstance(f, _spec.Family)}


def get_family(name: str) -> _spec.Family:
    """The declaration of the family ``name`` (its signature convention, front doors, ...)."""
    families = _families()
    require_choice("family", name, families)
    return families[name]


def families() -> tuple[str, ...]:
    """The declared family names."""
    return tuple(_families())


@lru_cache(maxsize=1)
def _table() -> dict[str, Entry]:
    table: dict[str, Entry] = {}
    for module in _objective_modules():
        for value in vars(module).values():
            for declared in getattr(value, "__objective_specs__", ()):
                spec = signatures.complete(declared, value, get_family(declared.family))
                entry = Entry(spec=spec, fn=value)
                for key in (spec.name, *spec.aliases):
                    known = table.get(key)
                    if known is not None and known.fn is not value:
                        raise RuntimeError(f"objective name {key!r} registered twice")
                    table[key] = entry
    return table


def get(name: str, family: str | None = None) -> Entry:
    """The objective called ``name`` (or an alias); with ``family``, it must belong to it.

    Raises:
        ValueError: unknown name (the message suggests the closest names) or wrong family.
    """
    table = _table()
    if family is not None:
        names = {k for k, e in table.items() if e.family == family}
        if name in table and name not in names:
            raise ValueError(wrong_family(table[name].spec, family))
        require_choice(f"{family} objective", name, names)
    else:
        require_choice("objective", name, table)
    return table[name]


def wrong_family(spec: _spec.ObjectiveSpec, wanted: str) -> str:
    """The message for an objective asked of a family it does not belong to: where it goes."""
    doors = get_family(spec.family)
    where = f"lmloss.loss({spec.name!r}, ...)"
    if doors.trl_trainer:
        where += f" or lmloss.trl.{doors.trl_trainer}"
    return (
        f"{spec.name!r} is a {spec.family} objective, not a {wanted} objective: use {where} "
        f"(lmloss describe {spec.name})"
    )


def list_objectives(family: str | None = None) -> list[str]:
    """Registered names (aliases excluded), sorted, optionally of one family."""
    if family is not None:
        require_choice("family", family, _families())
    return sorted({e.name for e in _table().values() if family is None or e.family == family})


def spec(name: str) -> _spec.ObjectiveSpec:
    """The :class:`~lmloss.objectives.spec.ObjectiveSpec` of ``name`` (or an alias): its
    inputs, statistics, hyper-parameters with defaults, reference model, normalizer.

    Example:
        >>> import lmloss
        >>> lmloss.spec("simpo").reference, lmloss.spec("dpo").reference
        ('none', 'required')
    """
    return get(name).spec


def describe(name: str) -> dict[str, Any]:
    """Name, family, paper, required statistics, hyper-parameters and formula of ``name``."""
    entry = get(name)
    return {
        "name": entry.name,
        "family": entry.family,
        "paper": entry.spec.paper,
        "aliases": list(entry.spec.aliases),
        "stats": list(entry.spec.stats),
        "hyper": entry.hyper,
        "kind": entry.spec.kind,
        "inputs": list(entry.spec.inputs),
        "optional_inputs": list(entry.spec.optional_inputs),
        "reference": entry.spec.reference,
        "normalizer": entry.spec.normalizer,
        "formula": entry.formula,
    }
