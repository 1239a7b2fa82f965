"""Classification and ranking objectives on generic logits or scores ``[N, C]``.

Each function validates its own inputs and returns per-example losses (``[N]``), per-row
losses for grouped inputs (``[B]``), or a 0-d tensor for losses defined on the whole batch
(AnyLoss, a 1-D Mann–Whitney ranking). :func:`lmloss.classification_loss` reduces them.
"""

from __future__ import annotations

from collections.abc import Callable

from lmloss.objectives.signatures import positional
from lmloss.objectives.spec import Family, ObjectiveSpec


def _read_signature(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    """``(logits, labels, [optional tensors with defaults])``."""
    optional = positional(fn, with_default=True)
    return {
        "kind": "logits",
        "inputs": ("logits", "labels", *extra),
        "optional_inputs": optional,
        "normalizer": "batch" if spec.batch_coupled else "example",
    }


FAMILY = Family(
    name="classify",
    read_signature=_read_signature,
    plain="lmloss.classify:classification_loss",
)
