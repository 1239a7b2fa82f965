"""Distillation objectives: divergences between a student's and a teacher's distributions.

The per-token divergences themselves are pair terms defined once in
:mod:`lmloss.stats.divergence_terms` (the engine sums them over the vocabulary); the
objectives here turn those per-token values into losses (token means, CE-to-labels mixing,
BD-KD's entropy-gap weighting) and hold the sequence/batch-level objectives (PLD, Sinkhorn
KD) and the sparse-teacher support construction.
"""

from __future__ import annotations

from collections.abc import Callable

from lmloss.objectives.signatures import keyword_parts
from lmloss.objectives.spec import Family, ObjectiveSpec


def _read_signature(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    """``(terms, mask)``: the declared ``stats`` are the inputs, built from the two models."""
    token = "num_items" in keyword_parts(fn)[1]
    return {
        "kind": "distributions",
        "inputs": ("student_logits", *extra),
        "optional_inputs": ("teacher_logits", "mask", "labels"),
        "normalizer": "token" if token else "sequence",
    }


FAMILY = Family(
    name="distill",
    read_signature=_read_signature,
    plain="lmloss.distill:divergence_loss",
    fused="lmloss.distill:fused_divergence_loss",
)
