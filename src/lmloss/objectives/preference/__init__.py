"""Offline preference objectives: the DPO family, each a pure function of per-token tensors.

Every objective takes one *input kind* as its first argument (see :mod:`.inputs`):

* :class:`~.inputs.Pairs` — chosen and rejected completions of the same prompts (DPO, IPO, ...).
* :class:`~.inputs.Unpaired` — completions labelled desirable or not (KTO).
* :class:`~.inputs.Negatives` — dispreferred completions only (NPO, D2O).
* :class:`~.inputs.Lists` — several scored completions per prompt (LiPO).

The front door :mod:`lmloss.preference` builds the kind from keyword tensors (or, fused,
from the engine's statistics) and calls the objective through the registry. Options that
work on any pairwise objective (WPO weighting, LD-DPO, LCPO, HyPO) live in :mod:`.options`.
"""

from __future__ import annotations

from collections.abc import Callable

from lmloss.objectives.preference.inputs import INPUT_KINDS, TOKEN_STATISTICS
from lmloss.objectives.signatures import first_annotation
from lmloss.objectives.spec import Family, ObjectiveSpec


def _read_signature(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    """First parameter: an input kind; its groups' keywords are the inputs."""
    kind = first_annotation(fn)
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


FAMILY = Family(
    name="preference",
    read_signature=_read_signature,
    plain="lmloss.preference:preference_loss",
    fused="lmloss.preference:fused_preference_loss",
    reference="required",
    trl_trainer="DPOTrainer",
)
