"""The scheduler: the vocabulary slices every walk in lmloss takes, and the two schedules.

Logits exist one ``tokens × vocab-slice`` tile at a time (:mod:`lmloss.stats.tiles` makes
them from a head or slices them from logits; sizes from :mod:`lmloss.stats.chunking`).
What is computed on a tile is a *kernel*: the single-model statistics
(:class:`lmloss.stats.single_model.StatsKernel`) or the two-model pair terms
(:class:`lmloss.stats.divergence.PairKernel`). A kernel does two things:

* ``forward_block(sources, t0, t1, vocab_tile, need)`` — the per-token values of rows
  ``t0:t1`` and what their backward needs (a "final"), walking the vocabulary with
  :func:`vocab_slices` / :func:`online_moments`; when one tile spans the vocabulary it also
  hands that tile back;
* ``tile_grads(tiles, final, upstream, box, need, memo)`` — the gradient w.r.t. each model's
  transformed logits on one tile, given the upstream gradient of each output.

The scheduler runs a kernel on one of two schedules:

* :func:`recompute` — a custom autograd Function: the forward keeps only per-token
  vectors; the backward, where the upstream gradient becomes known, recomputes every tile
  (vocabulary tiles outer, so each slice of the weight gradient is finished before the
  next begins);
* :func:`one_pass` — for a loss that is a sum over blocks of tokens of a function of their
  values: tiles span the vocabulary, so a block's values, its upstream gradient (autograd
  of the block's loss) and the head gradients all come from the same tiles; the
  gradients are finished during the forward and handed out by :class:`WithPrecomputedGrads`.
  Its blocks are equal row ranges (:func:`token_blocks`, for sums of per-token terms) or
  ranges the caller aligns to whole examples (:mod:`lmloss.stats.example_blocks`, for a
  loss whose token gradients need a whole preference pair).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lmloss.stats.chunking import ChunkPlan
from lmloss.stats.statistics import MOMENTS
from lmloss.stats.tiles import Source, Spec, build_sources, split_inputs
from lmloss.stats.workspace import Workspace

Tensor = torch.Tensor
Box = tuple[int, int, int, int]  # t0, t1, v0, v1
BlockLoss = Callable[[dict[str, Tensor], slice], Tensor]


@dataclass
class Block:
    """What a kernel's forward gives for one block of rows."""

    values: dict[str, Tensor]
    final: Any  # the kernel's per-row state for its backward
    tiles: tuple[Tensor, ...] | None = None  # the whole-vocabulary tiles, when one spans it
    memo: Any = None  # what the kernel derived from those tiles and may reuse for gradients


class TileKernel(Protocol):
    names: tuple[str, ...]

    def differentiable(self, name: str) -> bool: ...

    def forward_block(
        self, sources: Sequence[Source], t0: int, t1: int, vocab_tile: int, need: Sequence[bool]
    ) -> Block: ...

    def tile_grads(
        self,
        tiles: Sequence[Tensor],
        final: Any,
        upstream: Mapping[str, Tensor],
        box: Box,
        need: Sequence[bool],
        memo: Any = None,
    ) -> Sequence[Tensor | None]: ...


def token_blocks(n: int, plan: ChunkPlan) -> list[tuple[int, int]]:
    return [(t0, min(t0 + plan.tokens, n)) for t0 in range(0, n, plan.tokens)]


def check_blocks(blocks: Sequence[tuple[int, int]], n: int) -> None:
    """``blocks`` cover rows ``0..n`` in order, each non-empty."""
    end = 0
    for t0, t1 in blocks:
        if t0 != end or not t0 < t1:
            raise ValueError(
                f"row blocks must cover rows 0..{n} in order, each non-empty; "
                f"got [{t0}, {t1}) after row {end}"
            )
        end = t1
    if end != n:
        raise ValueError(f"row blocks must cover rows 0..{n}; they end at row {end}")


def vocab_slices(vocab: int, vocab_tile: int) -> Iterator[tuple[int, int]]:
    """The ``[v0, v1)`` vocabulary slices, in order."""
    for v0 in range(0, vocab, vocab_tile):
        yield v0, min(v0 + vocab_tile, vocab)


@dataclass
class Online:
    """Per-row running maximum ``m`` of the logits and the moments taken relative to it."""

    m: Tensor
    moments: dict[str, Tensor]
    last_tile: Tensor  # the last tile seen (the whole vocabulary when one tile spans it)

    @property
    def lse(self) -> Tensor:
        return self.m + self.moments["s"].log()


def online_moments(
    source: Source,
    t0: int,
    t1: int,
    vocab_tile: int,
    moment_names: Sequence[str],
    ws: Workspace,
    table: Tensor | None = None,
    on_tile: Callable[[Tensor, int, int], None] | None = None,
) -> Online:
    """The online log-sum-exp pass over one block's vocabulary tiles.

    Keeps the moments ``moment_names`` of :mod:`lmloss.stats.statistics` (``s`` gives the
    lse), rescaled as the running maximum grows; ``on_tile(z, v0, v1)`` sees each tile.
    """
    m = torch.full((t1 - t0,), float("-inf"), dtype=source.dtype, device=source.device)
    acc = {name: m.new_zeros(t1 - t0) for name in moment_names}
    z = m  # replaced by the first tile: the vocabulary is never empty
    for v0, v1 in vocab_slices(source.vocab, vocab_tile):
        z = source.tile(t0, t1, v0, v1)
        m_new = torch.maximum(m, z.amax(1))
        rescale = (m - m_new).exp_()
        e = torch.sub(z, m_new[:, None], out=ws.get("e", *z.shape, z.dtype)).exp_()
        rows_of_table = None if table is None else table[v0:v1]
        for name in moment_names:
            acc[name] = MOMENTS[name].step(acc[name], z, e, rescale, rows_of_table)
        m = m_new
        if on_tile is not None:
            on_tile(z, v0, v1)
    return Online(m=m, moments=acc, last_tile=z)


def _needs_per_source(specs: Sequence[Spec], needs: Sequence[bool]) -> list[bool]:
    return [any(share) for share in split_inputs(specs, needs)]


def _start_grads(sources: Sequence[Source], specs: Sequence[Spec], needs: Sequence[bool]) -> None:
    for source, share in zip(sources, split_inputs(specs, needs)):
        source.start_grads(share)


def _add_tile_grads(sources, kernel, tiles, final, upstream, box, need, memo=None) -> None:
    t0, t1, v0, v1 = box
    dzs = kernel.tile_grads(tiles, final, upstream, box, need, memo)
    for source, dz, z in zip(sources, dzs, tiles):
        if dz is not None:
            source.add_grad(dz, z, t0, t1, v0, v1)


def _forward(kernel, sources, n, plan, need) -> tuple[dict[str, Tensor], list]:
    blocks = [
        kernel.forward_block(sources, t0, t1, plan.vocab, need) for t0, t1 in token_blocks(n, plan)
    ]
    values = {name: torch.cat([b.values[name] for b in blocks]) for name in kernel.names}
    return values, [b.final for b in blocks]


def _backward(kernel, sources, finals, upstream, n, plan, need) -> None:
    for v0, v1 in vocab_slices(sources[0].vocab, plan.vocab):
        for (t0, t1), final in zip(token_blocks(n, plan), finals):
            tiles = [source.tile(t0, t1, v0, v1) for source in sources]
            rows = {name: g[t0:t1] for name, g in upstream.items()}
            _add_tile_grads(sources, kernel, tiles, final, rows, (t0, t1, v0, v1), need)


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernel, specs, plan, n, *inputs):
        sources = build_sources(specs, inputs)
        need = _needs_per_source(specs, ctx.needs_input_grad[4:])
        values, finals = _forward(kernel, sources, n, plan, need)
        ctx.save_for_backward(*inputs)
        ctx.kernel, ctx.specs, ctx.plan, ctx.n, ctx.finals = kernel, specs, plan, n, finals
        ctx.set_materialize_grads(False)
        outputs = tuple(values[name] for name in kernel.names)
        ctx.mark_non_differentiable(
            *(o for name, o in zip(kernel.names, outputs) if not kernel.differentiable(name))
        )
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        kernel, specs = ctx.kernel, ctx.specs
        needs = ctx.needs_input_grad[4:]
        upstream = {
            name: g
            for name, g in zip(kernel.names, grad_outputs)
            if g is not None and kernel.differentiable(name)
        }
        if not upstream or not any(needs):
            return (None,) * (4 + len(needs))
        sources = build_sources(specs, ctx.saved_tensors)
        _start_grads(sources, specs, needs)
        need = _needs_per_source(specs, needs)
        _backward(kernel, sources, ctx.finals, upstream, ctx.n, ctx.plan, need)
        grads = [g for source in sources for g in source.grads()]
        return (None, None, None, None, *grads)


def recompute(
    kernel: TileKernel, specs: Sequence[Spec], inputs: Sequence[Tensor | None], plan: ChunkPlan
) -> dict[str, Tensor]:
    """The kernel's per-row outputs, differentiable w.r.t. ``inputs``; the backward
    recomputes every tile. ``inputs`` are the models' tensors in ``specs`` order, rows
    2-D and all trained."""
    n = inputs[0].shape[0]
    outputs = _Recompute.apply(kernel, tuple(specs), plan, n, *inputs)
    return dict(zip(kernel.names, outputs))


@dataclass
class _WalkedBlock:
    """A block's values and what its gradients need: the :class:`Block` of its one tile,
    or, for a block kept by its sources, the rows and per-row state of each of its tiles
    (not the tiles: they are cut again from the kept product)."""

    values: dict[str, Tensor]
    whole: Block | None
    tiles: list[tuple[int, int, Any]]


def _walk_block(kernel, sources, t0: int, t1: int, plan: ChunkPlan, need) -> _WalkedBlock:
    if t1 - t0 <= plan.tokens:
        block = kernel.forward_block(sources, t0, t1, plan.vocab, need)
        return _WalkedBlock(block.values, block, [])
    for source in sources:
        source.keep_rows(t0, t1)
    tiles, parts = [], []
    for s0 in range(t0, t1, plan.tokens):
        s1 = min(s0 + plan.tokens, t1)
        part = kernel.forward_block(sources, s0, s1, plan.vocab, need)
        tiles.append((s0, s1, part.final))
        parts.append(part.values)
    values = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return _WalkedBlock(values, None, tiles)


def _finish_block(kernel, sources, walked: _WalkedBlock, t0: int, t1: int, upstream, need):
    """Add the block's head gradients, given the upstream gradient of its values."""
    vocab = sources[0].vocab
    if upstream and any(need):
        if walked.whole is not None:
            b = walked.whole
            box = (t0, t1, 0, vocab)
            _add_tile_grads(sources, kernel, b.tiles, b.final, upstream, box, need, b.memo)
        for s0, s1, final in walked.tiles:
            rows = {name: g[s0 - t0 : s1 - t0] for name, g in upstream.items()}
            tiles = [source.tile(s0, s1, 0, vocab) for source in sources]
            _add_tile_grads(sources, kernel, tiles, final, rows, (s0, s1, 0, vocab), need)
    if walked.whole is None:
        for source in sources:
            source.release_rows()


class WithPrecomputedGrads(torch.autograd.Function):
    """Returns ``total``; its backward hands out the gradients of ``inputs`` computed
    during the forward (``grads`` aligned with ``inputs``, None where not needed)."""

    @staticmethod
    def forward(ctx, total, grads, *inputs):
        ctx.grads = grads
        return total.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        if ctx.grads is None:
            raise RuntimeError("the gradients of a one-pass loss can be taken only once")
        # Scaled in place and released: a copy would double the weight-gradient memory.
        scaled = tuple(None if g is None else g.mul_(grad_total.to(g.dtype)) for g in ctx.grads)
        ctx.grads = None
        return (None, None, *scaled)


def one_pass(
    kernel: TileKernel,
    specs: Sequence[Spec],
    inputs: Sequence[Tensor | None],
    plan: ChunkPlan,
    block_loss: BlockLoss,
    extra: Mapping[str, Tensor] | None = None,
    blocks: Sequence[tuple[int, int]] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ_blocks block_loss(values of the block and its rows of each extra, rows)``,
    with every gradient computed in the same pass.

    ``block_loss`` receives leaf tensors and must not mix rows of different blocks (a
    batch normalizer is a constant it closes over). ``extra`` holds per-row inputs computed
    elsewhere (e.g. a label log-likelihood); they get their gradient through the total.
    ``plan`` must span the vocabulary. ``blocks``: the ``[t0, t1)`` row ranges, in order and
    covering every row; default :func:`token_blocks`. A block of more than ``plan.tokens``
    rows is kept by each source (:meth:`~lmloss.stats.tiles.HeadSource.keep_rows`: one
    product in the inputs' dtype) and walked in tiles of ``plan.tokens`` rows, twice: for
    its values, then, once its loss gives the upstream gradient, for its logit gradients.
    Returns the total (differentiable w.r.t. ``inputs`` and ``extra``) and the detached
    values of every row.
    """
    extra = dict(extra or {})
    needs = tuple(t is not None and t.requires_grad for t in inputs)
    sources = build_sources(specs, [None if t is None else t.detach() for t in inputs])
    if plan.vocab < sources[0].vocab:
        raise ValueError("the one-pass schedule needs tiles that span the vocabulary")
    n = inputs[0].shape[0]
    if blocks is not None:
        check_blocks(blocks, n)
    _start_grads(sources, specs, needs)
    need = _needs_per_source(specs, needs)
    total = inputs[0].new_zeros((), dtype=sources[0].dtype)
    extra_grads = {name: x.new_zeros(x.shape, dtype=total.dtype) for name, x in extra.items()}
    parts: dict[str, list[Tensor]] = {name: [] for name in kernel.names}
    with torch.no_grad():
        for t0, t1 in token_blocks(n, plan) if blocks is None else blocks:
            walked = _walk_block(kernel, sources, t0, t1, plan, need)
            leaves = {
                name: v.detach().requires_grad_(kernel.differentiable(name))
                for name, v in walked.values.items()
            }
            leaves.update({k: x[t0:t1].detach().requires_grad_() for k, x in extra.items()})
            wrt = [k for k, leaf in leaves.items() if leaf.requires_grad]
            with torch.enable_grad():
                loss = block_loss(leaves, slice(t0, t1))
                grads = torch.autograd.grad(loss, [leaves[k] for k in wrt], allow_unused=True)
            total += loss.detach()
            for name in kernel.names:
                parts[name].append(leaves[name].detach())
            upstream = {}
            for k, g in zip(wrt, grads):
                if g is None:
                    continue
                if k in extra:
                    extra_grads[k][t0:t1] = g
                else:
                    upstream[k] = g
            _finish_block(kernel, sources, walked, t0, t1, upstream, need)
    values = {name: torch.cat(p) for name, p in parts.items()}
    tracked = [*inputs, *extra.values()]
    if any(needs) or any(x.requires_grad for x in extra.values()):
        extra_part = (
            g if x.requires_grad else None for g, x in zip(extra_grads.values(), extra.values())
        )
        grads = (*(g for s in sources for g in s.grads()), *extra_part)
        total = WithPrecomputedGrads.apply(total, grads, *tracked)
    return total, values
