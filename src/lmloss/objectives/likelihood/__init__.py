"""Likelihood (SFT) objectives: per-token losses written on the engine's statistics.

Every objective here is a function of per-token tensors (``logp``, ``lse``, ...) returning
a per-token loss of the same shape. Because each loss is a sum of per-token terms, the
fused front door (:func:`lmloss.fused_likelihood_loss`) computes its gradient during the
forward pass. Reductions (token mean, sequence mean, a global ``num_items``) and the
batch reweighters live in :mod:`.reduction` and :mod:`.reweight`, shared by all of them.
"""

from __future__ import annotations

from collections.abc import Callable

from lmloss.objectives.signatures import FRONT_DOOR_NAMES, positional
from lmloss.objectives.spec import Family, ObjectiveSpec


def _read_signature(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    """Positional parameters: the per-token statistics (``logp`` given as ``logps``)."""
    inputs = tuple(FRONT_DOOR_NAMES.get(n, n) for n in positional(fn, with_default=False))
    return {
        "kind": "tokens",
        "inputs": (*inputs, *extra),
        "optional_inputs": ("mask", "weights"),
        "normalizer": "token",
    }


FAMILY = Family(
    name="likelihood",
    read_signature=_read_signature,
    plain="lmloss.likelihood:likelihood_loss",
    fused="lmloss.likelihood:fused_likelihood_loss",
    trl_trainer="SFTTrainer",
)
