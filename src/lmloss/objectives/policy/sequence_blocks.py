"""A policy objective on a block of its sequences: when that is exact, and the block's share.

The fused front door can finish every gradient in one pass over the vocabulary when the
batch splits into blocks of whole sequences whose losses add up to the batch loss
(:mod:`lmloss.stats.example_blocks`). Every aggregation (:mod:`.aggregate`) makes the batch
loss ``L = (1/B) Σ_i ℓ_i − c·H̄``, ``ℓ_i`` the loss of sequence ``i``, ``H̄ = Σ_it H_it / N``
the entropy bonus's token mean over the batch's ``N`` unmasked tokens. A block ``S`` of
``b`` sequences then contributes its own loss times its share ``s = b/B`` when

* the objective is not ``batch_coupled``: ``ℓ_i`` depends on sequence ``i``'s tensors only;
* every tensor keyword is per sequence (leading dimension ``B``) and is cut with the block;
  its rows keep the padded length ``T`` (Dr. GRPO's default ``max_tokens``);
* the block runs with the batch's normalizers: ``num_items = s·N'`` (``N'`` the given
  ``num_items`` or ``N``), so that ``token_mean``'s ``ℓ_i = Σ_t ℓ_it · b/num_items`` is the
  batch's ``Σ_t ℓ_it · B/N'``; and ``entropy_coef = c·N_S/(s·N)``, so that the block's
  ``s·c'·Σ_S H/N_S`` is the batch's ``c·Σ_S H/N``.

Group-normalized advantages are inputs, computed over the whole batch beforehand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lmloss.objectives.blocks import block_share, per_example_inputs
from lmloss.objectives.policy.aggregate import check_aggregation
from lmloss.objectives.spec import ObjectiveSpec

Tensor = torch.Tensor


def separable(spec: ObjectiveSpec) -> bool:
    """Whether the loss of ``spec`` is a share-weighted sum of independent sequence losses."""
    return spec.kind == "Rollouts" and not spec.batch_coupled


def per_sequence_inputs(
    spec: ObjectiveSpec, kwargs: Mapping[str, object], sequences: int
) -> dict[str, Tensor] | None:
    """The tensor keywords to cut with the sequences, or None when one is not per sequence
    (a tensor that is no input of ``spec`` or whose first dimension is not ``sequences``):
    the loss may then couple sequences. ``num_items`` is the batch's normalizer, not cut."""
    return per_example_inputs(kwargs, sequences, spec.takes, whole_batch=("num_items",))


@dataclass(frozen=True)
class SequenceShares:
    """The batch's normalizers, and how a block of its sequences ``[e0, e1)`` runs.

    Attributes:
        tokens: unmasked tokens before each sequence and after the last (``B + 1`` sums).
        num_items: the batch's ``token_mean`` normalizer ``N'``.
        entropy_coef: the entropy bonus's coefficient ``c``.
    """

    tokens: tuple[float, ...]
    num_items: float | Tensor
    entropy_coef: float

    @classmethod
    def of(cls, mask: Tensor, hyper: Mapping[str, object]) -> SequenceShares:
        """From the ``[B, T]`` mask and the objective's hyper-parameters (defaults included)."""
        check_aggregation(hyper["aggregation"], hyper["num_items"], hyper["max_tokens"])
        counts = (mask != 0).sum(-1).cumsum(0).tolist()
        tokens = (0.0, *map(float, counts))
        num_items = hyper["num_items"]
        if num_items is None:  # token_mean's default: the batch's token count
            num_items = max(tokens[-1], 1.0)
        return cls(tokens, num_items, hyper["entropy_coef"])

    def share(self, e0: int, e1: int) -> float:
        """The weight ``s = b/B`` of the block's loss in the batch loss."""
        return block_share(e0, e1, len(self.tokens) - 1)

    def block_hyper(self, e0: int, e1: int) -> dict[str, object]:
        """The normalizers the block runs with (module docstring)."""
        share = self.share(e0, e1)
        block_tokens = self.tokens[e1] - self.tokens[e0]
        batch_tokens = max(self.tokens[-1], 1.0)
        return {
            "num_items": self.num_items * share,
            "entropy_coef": self.entropy_coef * block_tokens / (share * batch_tokens),
        }
