"""The one-pass schedule for a loss whose token gradients need every row of an example.

An example is a preference pair (its loss is a function of the sequence log-probs of both
its completions) or a policy sequence (GSPO's ratio is a mean over its tokens), so the
upstream gradient of a token is known only once every row of its example has crossed the
vocabulary. The recompute schedule (:func:`lmloss.stats.schedule.recompute`) waits for
the backward and recomputes each tile: 4 matmuls of N·H·V (logits twice, dH, dW). The
one-pass schedule (:func:`lmloss.stats.schedule.one_pass`) is exact for such a loss when
every block holds whole examples, and needs 3: each block's tiles give its values, the
autograd of its examples' loss gives the upstream gradient, and dH, dW follow from the
same tiles.

Here the trained rows are gathered example-major once (example 0's rows of every group,
then example 1's, ...: a copy of N·H, small next to N·V) and cut into blocks of whole
examples (:class:`ExampleRows`).

A block is filled with whole examples up to the default one-pass tile's rows (so that its
weight-gradient update stays compute-bound). A block longer than its tiles is multiplied
once and kept by the head in the inputs' dtype (:meth:`lmloss.stats.tiles.HeadSource.keep_rows`),
then walked in small float32 tiles: in bf16 the kept product is half the bytes of a
float32 tile of the same rows, which is what keeps this schedule within Liger's memory.

Measured side by side (``docs/benchmarks.md``, B=4 pairs × 512 tokens, V=32000) it is
faster than the recompute schedule and than Liger's chunked DPO. ``LMLOSS_PAIR_ONE_PASS=0``
makes both callers (preference pairs, policy sequences) take the recompute schedule (the
least memory; also for comparisons); ``1`` (default) takes this one where it is exact and
fits.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from lmloss.stats.api import check_head, check_targets
from lmloss.stats.chunking import (
    BUDGET_VARIABLE,
    LIVE_TILES,
    ChunkPlan,
    default_budget,
    plan_chunks,
)
from lmloss.stats.single_model import eager_token_loss
from lmloss.stats.tiles import compute_dtype
from lmloss.stats.transform import LogitTransform

Tensor = torch.Tensor
# (values of every flat row, zero outside the block's examples; first example; end) -> loss
ExampleLoss = Callable[[dict[str, Tensor], int, int], Tensor]

SWITCH_VARIABLE = "LMLOSS_PAIR_ONE_PASS"
# A block holds whole examples and is filled up to the default one-pass tile's rows, so that
# its weight-gradient update stays compute-bound; a block longer than its tiles is kept by
# the head (one product in the inputs' dtype: bf16 holds half a float32 tile) and walked
# in tiles of at most this many bytes each, so its float32 temporaries stay small. Without
# an explicit memory budget an example may be as long as its kept product fits in
# MAX_DEFAULT_BYTES (Liger's chunked DPO holds a pair's logits the same way); a longer one
# takes the recompute schedule.
KEPT_TILE_BYTES = 8 * 2**20
MAX_DEFAULT_BYTES = 2 * 2**30


def enabled() -> bool:
    """``LMLOSS_PAIR_ONE_PASS``: ``1`` (default) or ``0``; it switches the one pass of
    preference pairs and of policy sequences alike."""
    mode = os.environ.get(SWITCH_VARIABLE, "1").strip()
    if mode not in ("1", "0"):
        raise ValueError(f"{SWITCH_VARIABLE} must be 1 or 0, got {mode!r}")
    return mode == "1"


def wanted(trained: Iterable[Tensor | None]) -> bool:
    """Whether a caller should try the one pass: switched on (:func:`enabled`), and
    gradients to compute (grad mode on, one of the ``trained`` tensors requiring one)."""
    return (
        enabled()
        and torch.is_grad_enabled()
        and any(isinstance(t, Tensor) and t.requires_grad for t in trained)
    )


@dataclass(frozen=True)
class ExampleRows:
    """The trained rows of every example, example-major.

    Attributes:
        order: indices into the flat rows (the groups' rows concatenated, each group
            row-major), the rows of example 0 first (group by group), then example 1's, ...
        ends: the number of rows in ``order`` up to the end of each example.
    """

    order: Tensor
    ends: tuple[int, ...]

    @classmethod
    def of(cls, trained: Sequence[Tensor]) -> ExampleRows:
        """From each group's mask of trained rows, ``[E, ...]`` with the examples first."""
        examples = trained[0].shape[0]
        flat, owner, offset = [], [], 0
        for i, mask in enumerate(trained):
            if mask.dim() < 1 or mask.shape[0] != examples:
                raise ValueError(
                    f"group {i} has shape {tuple(mask.shape)}; every group must lead with the "
                    f"{examples} examples"
                )
            per_example = mask.reshape(examples, -1)
            example, position = per_example.nonzero(as_tuple=True)
            flat.append(offset + example * per_example.shape[1] + position)
            owner.append(example)
            offset += per_example.numel()
        owners = torch.cat(owner)
        example_major = torch.sort(owners, stable=True).indices
        counts = torch.bincount(owners, minlength=examples)
        return cls(torch.cat(flat)[example_major], tuple(counts.cumsum(0).tolist()))

    @property
    def largest(self) -> int:
        """Rows of the largest example."""
        return max(end - start for start, end in zip((0, *self.ends), self.ends))

    def blocks(self, max_rows: int) -> list[tuple[int, int]]:
        """``[t0, t1)`` row ranges of whole examples, each filled up to ``max_rows`` rows
        (an example larger than ``max_rows`` is a block of its own)."""
        blocks, start, last = [], 0, 0
        for end in self.ends:
            if end - start > max_rows and last > start:
                blocks.append((start, last))
                start = last
            last = end
        if last > start:
            blocks.append((start, last))
        return blocks

    def examples_in(self, rows: slice) -> tuple[int, int]:
        """The examples ``[e0, e1)`` of a block: those whose last row lies in it (an example
        without rows goes with the block before it, or the first)."""
        e0 = bisect_right(self.ends, rows.start) if rows.start > 0 else 0
        return e0, bisect_right(self.ends, rows.stop)


@dataclass(frozen=True)
class _Plan:
    tiles: ChunkPlan  # the rows of a tile (spanning the vocabulary)
    fill: int  # the rows a block of several examples fills up to


def _plan(
    examples: ExampleRows, vocab: int, itemsize: int, kept_itemsize: int, budget: int | None
) -> _Plan | None:
    """Tiles and blocks within ``budget`` (bytes of live tiles; an example longer than a
    tile must have its kept product fit in it too), or by default as
    :data:`KEPT_TILE_BYTES` says; None when the largest example does not fit."""
    n = examples.ends[-1]
    fill = plan_chunks(n, vocab, itemsize, budget, whole_vocab=True)
    kept = examples.largest * vocab * kept_itemsize
    if budget is not None or BUDGET_VARIABLE in os.environ:
        explicit = default_budget() if budget is None else budget
        fits = examples.largest <= fill.tokens or kept <= explicit
        return _Plan(fill, fill.tokens) if fits else None
    if kept > MAX_DEFAULT_BYTES:
        return None
    tiles = plan_chunks(n, vocab, itemsize, KEPT_TILE_BYTES * LIVE_TILES, whole_vocab=True)
    return _Plan(tiles, fill.tokens)


def example_one_pass(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None,
    examples: ExampleRows,
    example_loss: ExampleLoss,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    want: Iterable[str] = ("logp",),
    memory_budget: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]] | None:
    """``Σ_blocks example_loss(values, e0, e1)`` over blocks of whole examples, with the
    head gradients computed in the same pass; None when an example's tiles do not fit.

    ``hidden`` ``[R, H]`` and ``targets`` ``[R]`` are the flat rows of :class:`ExampleRows`
    (ignored rows included; ``examples.order`` holds the others). ``example_loss`` gets each
    statistic of ``want`` at every flat row (zero outside the block's examples, which are
    leaf tensors) and the block's examples ``[e0, e1)``; it must not look at other
    examples. Head, transform and budget as in :func:`lmloss.token_stats`.

    Returns:
        The total (differentiable w.r.t. ``hidden``, ``weight``, ``bias``) and the detached
        statistics of every flat row (zero at ignored rows).
    """
    check_head(hidden, weight, bias)
    targets = check_targets(targets, tuple(hidden.shape[:-1]), weight.shape[0], ignore_index)
    if not examples.ends or examples.ends[-1] == 0:
        return None
    itemsize = compute_dtype(hidden.dtype).itemsize
    plan = _plan(examples, weight.shape[0], itemsize, hidden.dtype.itemsize, memory_budget)
    if plan is None:
        return None
    order, n_flat = examples.order, targets.shape[0]

    # Not rows.scatter_rows: that reads "every row" as "in order", and these rows are permuted.
    def at_flat_rows(values: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
        return {
            name: v.new_zeros((n_flat, *v.shape[1:])).index_put((rows,), v)
            for name, v in values.items()
        }

    def block_loss(values: dict[str, Tensor], rows: slice) -> Tensor:
        return example_loss(at_flat_rows(values, order[rows]), *examples.examples_in(rows))

    transform = LogitTransform(logit_scale=logit_scale, softcap=softcap, temperature=temperature)
    total, values = eager_token_loss(
        hidden.index_select(0, order),
        weight,
        bias,
        targets[order],
        transform,
        tuple(want),
        block_loss,
        plan.tiles,
        blocks=examples.blocks(plan.fill),
    )
    return total, at_flat_rows(values, order)
