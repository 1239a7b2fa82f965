"""How each family's objective signature states its inputs and hyper-parameters.

Read once per registry entry, by :func:`complete`; afterwards only the
:class:`~lmloss.objectives.spec.ObjectiveSpec` is consulted. The conventions:

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

from lmloss.objectives.policy.common import Rollouts
from lmloss.objectives.preference.inputs import INPUT_KINDS, TOKEN_STATISTICS
from lmloss.objectives.spec import ObjectiveSpec

_EMPTY = inspect.Parameter.empty
_KW = inspect.Parameter.KEYWORD_ONLY
_POS = inspect.Parameter.POSITIONAL_OR_KEYWORD

# the keyword a front door uses for a parameter named otherwise in the objective
FRONT_DOOR_NAMES = {"logp": "logps"}


def _keyword_parts(fn: Callable) -> tuple[tuple[str, ...], dict, dict]:
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


def _positional(fn: Callable, *, with_default: bool) -> tuple[str, ...]:
    return tuple(
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is _POS and (p.default is not _EMPTY) == with_default
    )


def _first_annotation(fn: Callable) -> type | None:
    first = next(iter(inspect.signature(fn).parameters))
    return typing.get_type_hints(fn).get(first)


def _preference(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    kind = _first_annotation(fn)
    if kind not in INPUT_KINDS:
        raise TypeError(f"{fn.__qualname__}: first parameter must be annotated with an input kind")
    inputs, optional = [], []
    for prefix in kind.PRIMARY:
        inputs += [f"{prefix}logps", f"{prefix}mask"]
        ref = f"ref_{prefix}logps"
        if spec.reference == "required":
            inputs.append(ref)
        elif spec.reference == "optional":
            optional.append(ref)
        optional += [
            f"{prefix}{suffix}" for suffix, stat in TOKEN_STATISTICS.items() if stat in spec.stats
        ]
    for prefix in kind.EXTRA:
        optional += [f"{prefix}logps", f"{prefix}mask", f"ref_{prefix}logps"]
    per_row = "pair" if len(kind.PRIMARY) == 2 else "sequence"
    return {
        "kind": kind.__name__,
        "inputs": (*inputs, *extra),
        "optional_inputs": tuple(optional),
        "normalizer": "batch" if spec.batch_coupled else per_row,
    }


def _policy(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    if _first_annotation(fn) is not Rollouts:
        raise TypeError(f"{fn.__qualname__}: first parameter must be annotated Rollouts")
    entropy = "entropy" in spec.stats
    return {
        "kind": "Rollouts",
        "inputs": ("logps", "mask", "advantages", *(("entropy",) * entropy), *extra),
        "optional_inputs": ("old_logps", "ref_logps", *(() if entropy else ("entropy",))),
        "normalizer": "sequence",
    }


def _likelihood(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    inputs = tuple(FRONT_DOOR_NAMES.get(n, n) for n in _positional(fn, with_default=False))
    return {
        "kind": "tokens",
        "inputs": (*inputs, *extra),
        "optional_inputs": ("mask", "weights"),
        "normalizer": "token",
    }


def _distill(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    token = "num_items" in _keyword_parts(fn)[1]
    return {
        "kind": "distributions",
        "inputs": ("student_logits", *extra),
        "optional_inputs": ("teacher_logits", "mask", "labels"),
        "normalizer": "token" if token else "sequence",
    }


def _classify(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    optional = _positional(fn, with_default=True)
    return {
        "kind": "logits",
        "inputs": ("logits", "labels", *extra),
        "optional_inputs": optional,
        "normalizer": "batch" if spec.batch_coupled else "example",
    }


_READERS = {
    "likelihood": _likelihood,
    "preference": _preference,
    "policy": _policy,
    "distill": _distill,
    "classify": _classify,
}


def complete(spec: ObjectiveSpec, fn: Callable) -> ObjectiveSpec:
    """``spec`` as declared, completed with what ``fn``'s signature says."""
    extra, hyper, groups = _keyword_parts(fn)
    overrides = dict(spec.defaults)
    unknown = sorted(set(overrides) - set(hyper))
    if unknown:
        raise TypeError(f"objective {spec.name!r} sets defaults of unknown {unknown}")
    facts = _READERS[spec.family](spec, fn, extra)
    facts["optional_inputs"] = (*facts["optional_inputs"], *spec.optional_inputs)
    full = replace(
        spec,
        extra_inputs=extra,
        hyper=tuple({**hyper, **overrides}.items()),
        groups=tuple(groups.items()),
        **facts,
    )
    return replace(full, normalizer=full.normalizer_for({}))
