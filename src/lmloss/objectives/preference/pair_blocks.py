"""A pairwise objective on a block of its pairs: when that is exact, and the block's share.

The fused front door can finish every gradient in one pass over the vocabulary when the
batch splits into blocks of whole pairs whose losses add up to the batch loss
(:mod:`lmloss.stats.example_blocks`). That holds when

* the objective is per-pair: pair ``i``'s loss depends on pair ``i``'s tensors only (not
  ``batch_coupled``: AOT sorts the batch);
* its normalizer is ``"pair"``: the loss is the batch mean of the per-pair losses
  (:func:`.metrics.mean_loss`, and each option of :mod:`.options` reduces the same way), so
  a block of ``b`` of the ``B`` pairs contributes ``b / B`` times its own loss
  (:func:`lmloss.objectives.blocks.block_share`);
* every tensor keyword is per pair (leading dimension ``B``) and is cut with the block.

The per-pair options (LD-DPO's shared length, WPO's pair weights, LCPO's per-pair label
posterior, HyPO's per-pair online KL) keep these properties.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lmloss.objectives.blocks import per_example_inputs
from lmloss.objectives.preference.inputs import TOKEN_STATISTICS, Pairs
from lmloss.objectives.spec import ObjectiveSpec

Tensor = torch.Tensor


def _group_keywords(prefix: str) -> tuple[str, ...]:
    return (f"ref_{prefix}logps", *(f"{prefix}{field}" for field in ("logps", "mask")),
            *(f"{prefix}{suffix}" for suffix in TOKEN_STATISTICS))  # fmt: skip


# The per-completion tensors the input kind reads (the chosen and rejected groups, and
# HyPO's on-policy samples ``online_*``), whether or not the objective uses them.
GROUP_INPUTS = tuple(k for prefix in (*Pairs.PRIMARY, "online_") for k in _group_keywords(prefix))


def separable(spec: ObjectiveSpec, hyper: Mapping[str, object]) -> bool:
    """Whether the loss of ``spec`` (with ``hyper``) is the mean of independent pair losses."""
    return (
        spec.kind == "Pairs"
        and not spec.batch_coupled
        and spec.normalizer_for(dict(hyper)) == "pair"
    )


def per_pair_inputs(
    spec: ObjectiveSpec, kwargs: Mapping[str, object], pairs: int
) -> dict[str, Tensor] | None:
    """The tensor keywords to cut with the pairs, or None when one is not per pair (a
    tensor that is no input of ``spec``, of its input kind or of an option, or whose first
    dimension is not ``pairs``): the loss may then couple pairs."""
    return per_example_inputs(kwargs, pairs, (*spec.takes, *GROUP_INPUTS))


def sub_batch(
    kwargs: Mapping[str, object], per_pair: Mapping[str, Tensor], e0: int, e1: int
) -> dict[str, object]:
    """``kwargs`` with the per-pair tensors cut to the pairs ``[e0, e1)``."""
    return {**kwargs, **{key: value[e0:e1] for key, value in per_pair.items()}}
