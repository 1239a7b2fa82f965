"""Matching a front door's keyword arguments to an objective's spec: one function, one error.

Every family front door hands the keywords it does not consume itself (hyper-parameters,
objective-specific inputs) to :func:`bind`, which splits them by the
:class:`~lmloss.objectives.spec.ObjectiveSpec` and fails the same way everywhere: an unknown
or missing argument raises :class:`ObjectiveArgumentError`, a ``TypeError`` (Python's
convention for a bad keyword) that names the objective and suggests the nearest valid name.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from lmloss.objectives.spec import ObjectiveSpec


class ObjectiveArgumentError(TypeError, ValueError):
    """An argument the objective does not take, or one it needs and did not get.

    A ``TypeError``; also a ``ValueError`` so that code written against the older front
    doors, which raised ``ValueError`` for some of these, keeps catching it.
    """


class LmlossDeprecationWarning(DeprecationWarning):
    """A deprecated form of an lmloss argument; the test configuration makes it an error."""


def renamed(kwargs: dict, old: str, new: str, value: Any, where: str) -> Any:
    """The argument ``new`` (given as ``value``), or the deprecated spelling ``old`` popped
    from ``kwargs`` with a DeprecationWarning. Old spellings are kept for one release."""
    if old not in kwargs:
        return value
    warnings.warn(
        f"{where}: {old}= is deprecated, use {new}= (the same word in every family)",
        LmlossDeprecationWarning,
        stacklevel=3,
    )
    if value is not None:
        raise ObjectiveArgumentError(f"{where}: give {new}= or its old spelling {old}=, not both")
    return kwargs.pop(old)


def positional_tensors(
    where: str, args: tuple, names: tuple[str, ...], given: tuple[Any, ...]
) -> tuple[Any, ...]:
    """The tensors ``names`` (``given`` by keyword), or from ``args`` when the caller used the
    deprecated positional form; every front door takes tensors by keyword."""
    if not args:
        return given
    warnings.warn(
        f"{where}: passing {', '.join(names[: len(args)])} by position is deprecated; pass "
        "tensors by keyword, as every front door takes them",
        LmlossDeprecationWarning,
        stacklevel=3,
    )
    if len(args) > len(names):
        raise TypeError(f"{where} takes at most {len(names)} positional tensors, got {len(args)}")
    for name, value in zip(names, given[: len(args)]):
        if value is not None:
            raise TypeError(f"{where} got {name} by position and by keyword")
    return (*args, *given[len(args) :])


def _suggestion(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def unknown_arguments(
    kind: str,
    name: str,
    unknown: Iterable[str],
    hyper: Iterable[str],
    others: Iterable[str] = (),
) -> ObjectiveArgumentError:
    """The one error for arguments an objective (or a per-token divergence) does not take.

    Args:
        kind: what ``name`` is, e.g. ``"preference objective"`` or ``"divergence"``.
        name: its registry name (``lmloss describe NAME`` documents it).
        unknown: the names it does not take.
        hyper: its hyper-parameters (listed in the message, offered as suggestions).
        others: the other names it takes (inputs, the door's options), also suggested.
    """
    hyper = list(hyper)
    valid = [*hyper, *others]
    named = "; ".join(f"{key!r}{_suggestion(key, valid)}" for key in sorted(unknown))
    return ObjectiveArgumentError(
        f"{kind} {name!r} got unknown argument(s): {named}. An unknown argument is neither a "
        f"hyper-parameter of {name!r} nor one of its inputs; its hyper-parameters are: "
        f"{', '.join(hyper) or 'none'} (lmloss describe {name})"
    )


def check_hyper(spec: ObjectiveSpec, hyper: Mapping[str, Any], options: Iterable[str] = ()) -> None:
    """Every key of ``hyper`` is a hyper-parameter of ``spec`` or one of the caller's
    ``options``; else :func:`unknown_arguments`. What recipes, ``lmloss.hf`` and
    ``lmloss.trl`` check before they run an objective."""
    options = set(options)
    unknown = [k for k in hyper if k not in spec.hyper_defaults and k not in options]
    if unknown:
        raise unknown_arguments(
            f"{spec.family} objective", spec.name, unknown, spec.hyper_defaults, options
        )


def bind(
    spec: ObjectiveSpec,
    arguments: Mapping[str, Any],
    *,
    suggest: Iterable[str] = (),
    family_inputs: Iterable[str] = (),
    require: Iterable[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``arguments`` into the objective's inputs and its hyper-parameters.

    Args:
        spec: the objective's spec.
        arguments: the keywords left after the front door took its own.
        suggest: the front door's own keywords (its options), offered as suggestions too.
        family_inputs: inputs other objectives of the family take: naming one that this
            objective does not take gets a "does not take" message instead of a suggestion.
        require: the inputs that must be present and not None (default: the objective's
            ``extra_inputs``, the ones its input kind does not cover).

    Returns:
        ``(inputs, hyper)``: the objective's inputs given (None values dropped) and the
        hyper-parameters given (defaults not applied).

    Raises:
        ObjectiveArgumentError: an argument it does not take, or a required one missing.
        ValueError: a float hyper-parameter that is NaN or infinite (it would make the loss
            NaN, not fail).
    """
    takes = set(spec.takes)
    hyper_names = set(spec.hyper_defaults)
    inputs, hyper, unknown = {}, {}, []
    family_inputs = set(family_inputs)
    where = f"{spec.family} objective {spec.name!r}"
    for key, value in arguments.items():
        if key in hyper_names:
            hyper[key] = value
        elif key in takes:
            if value is not None:
                inputs[key] = value
        elif key in family_inputs:
            if value is not None:
                raise ObjectiveArgumentError(
                    f"{where} does not take {key} (its inputs: {', '.join(spec.takes)})"
                )
        else:
            unknown.append(key)
    if unknown:
        raise unknown_arguments(
            f"{spec.family} objective",
            spec.name,
            unknown,
            spec.hyper_defaults,
            [*spec.takes, *suggest],
        )
    for key, value in hyper.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: {key} must be a finite number, got {value}")
    for key in spec.extra_inputs if require is None else require:
        if inputs.get(key) is None:
            raise ObjectiveArgumentError(
                f"{where} needs {key}= (see lmloss.spec({spec.name!r}).inputs)"
            )
    return inputs, hyper
