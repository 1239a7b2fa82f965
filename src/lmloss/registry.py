"""Names → objectives. The trainer, the CLI and the front-door functions find objectives here.

Objective modules tag their functions with :func:`lmloss.objectives.spec.objective`; this
module imports the objective packages and indexes every tagged function by name and alias.
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
        """Hyper-parameters with this entry's defaults applied."""
        return {**_spec.hyper_parameters(self.fn), **dict(self.spec.defaults)}

    @property
    def formula(self) -> str:
        """The docstring: formula, paper, arguments."""
        return inspect.cleandoc(self.fn.__doc__ or "")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **{**dict(self.spec.defaults), **kwargs})


def _objective_modules() -> list[Any]:
    import lmloss.objectives as package

    prefix = package.__name__ + "."
    return [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(package.__path__, prefix=prefix)
    ]


@lru_cache(maxsize=1)
def _table() -> dict[str, Entry]:
    table: dict[str, Entry] = {}
    for module in _objective_modules():
        for value in vars(module).values():
            for spec in getattr(value, "__objective_specs__", ()):
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
        require_choice(f"{family} objective", name, names)
    else:
        require_choice("objective", name, table)
    return table[name]


def list_objectives(family: str | None = None) -> list[str]:
    """Registered names (aliases excluded), sorted, optionally of one family."""
    if family is not None:
        require_choice("family", family, _spec.FAMILIES)
    return sorted({e.name for e in _table().values() if family is None or e.family == family})


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
        "formula": entry.formula,
    }
