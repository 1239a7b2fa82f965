"""What a family's blocks of whole examples share: the tensors cut with them, and a block's share.

A loss that is the mean of independent example losses (preference pairs, policy sequences)
runs on blocks of its examples in the one-pass schedule (:mod:`lmloss.stats.example_blocks`).
Each family says when that is exact (:mod:`.preference.pair_blocks`,
:mod:`.policy.sequence_blocks`); both cut the same way and weigh a block the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

Tensor = torch.Tensor


def per_example_inputs(
    kwargs: Mapping[str, object],
    examples: int,
    accepted: Collection[str],
    whole_batch: Collection[str] = (),
) -> dict[str, Tensor] | None:
    """The tensor keywords to cut with the examples, or None when one is not per example (a
    keyword outside ``accepted``, or whose first dimension is not ``examples``): the loss may
    then couple examples. Scalars and the ``whole_batch`` keywords (a batch normalizer) are
    not cut."""
    cut = {}
    for key, value in kwargs.items():
        if not isinstance(value, Tensor) or value.dim() == 0 or key in whole_batch:
            continue
        if key not in accepted or value.shape[0] != examples:
            return None
        cut[key] = value
    return cut


def block_share(e0: int, e1: int, examples: int) -> float:
    """The weight ``b/B`` of the loss of the block ``[e0, e1)`` in the batch's example mean."""
    return (e1 - e0) / examples
