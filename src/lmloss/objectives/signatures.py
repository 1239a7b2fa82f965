"""How each family's objective signature states its inputs and hyper-parameters.

Read once per registry entry, by :func:`complete`; afterwards only the
:class:`~lmloss.objectives.spec.ObjectiveSpec` is consulted. Each family's convention is
its declaration's ``read_signature`` (in ``lmloss.objectives.<family>/__init__.py``),
built on the helpers here:

=========== ============================================== ===================================
family      inputs                                         hyper-parameters
=========== ============================================== ===================================
likelihood  positional parameters: per-token statistics     keyword-only, with defaults
            (``logp`` is given as ``logps``)
preference  first parameter annotated with an input kind    keyword-only with defaults;
            (``Pairs`` ...); keyword-only parameters        a keyword-only parameter typed
            without a default are per-example data          by an options dataclass is
            (``strength``, ``desirable``)                   flattened into its fields
policy      first parameter ``Rollouts``; keyword-only      as preference (the shared
            without a default as preference                 :class:`PolicyOptions`)
distill     ``(terms, mask)``: the declared ``stats``       keyword-only, with defaults
classify    ``(logits, labels, [optional tensors])``        keyword-only, with defaults
=========== ============================================== ===================================
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import replace

from lmloss.objectives.spec import Family, ObjectiveSpec

_EMPTY = inspect.Parameter.empty
_KW = inspect.Parameter.KEYWORD_ONLY
_POS = inspect.Parameter.POSITIONAL_OR_KEYWORD

# the keyword a front door uses for a parameter named otherwise in the objective
FRONT_DOOR_NAMES = {"logp": "logps"}


def keyword_parts(fn: Callable) -> tuple[tuple[str, ...], dict, dict]:
    """Keyword-only parameters: (required data inputs, hyper defaults, option groups)."""
    hints = typing.get_type_hints(fn)
    required, hyper, groups = [], {}, {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not _KW:
            continue
        if p.default is _EMPTY:
            required.append(p.name)
        elif dataclasses.is_dataclass(hints.get(p.name)):
            cls = hints[p.name]
            groups[p.name] = cls
            hyper.update({f.name: getattr(p.default, f.name) for f in dataclasses.fields(cls)})
        else:
            hyper[p.name] = p.default
    return tuple(required), hyper, groups


def positional(fn: Callable, *, with_default: bool) -> tuple[str, ...]:
    return tuple(
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is _POS and (p.default is not _EMPTY) == with_default
    )


def first_annotation(fn: Callable) -> type | None:
    """The type annotation of ``fn``'s first parameter (an input kind, by convention)."""
    first = next(iter(inspect.signature(fn).parameters))
    return typing.get_type_hints(fn).get(first)


def complete(spec: ObjectiveSpec, fn: Callable, family: Family) -> ObjectiveSpec:
    """``spec`` as declared, completed with what ``fn``'s signature says under the
    conventions of its ``family``."""
    spec = replace(spec, reference=spec.reference or family.reference)
    extra, hyper, groups = keyword_parts(fn)
    overrides = dict(spec.defaults)
    unknown = sorted(set(overrides) - set(hyper))
    if unknown:
        raise TypeError(f"objective {spec.name!r} sets defaults of unknown {unknown}")
    facts = family.read_signature(spec, fn, extra)
    facts["optional_inputs"] = (*facts["optional_inputs"], *spec.optional_inputs)
    full = replace(
        spec,
        extra_inputs=extra,
        hyper=tuple({**hyper, **overrides}.items()),
        groups=tuple(groups.items()),
        **facts,
    )
    return replace(full, normalizer=full.normalizer_for({}))
