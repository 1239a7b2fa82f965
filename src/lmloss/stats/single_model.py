"""Single-model statistics on the tile engine: the kernel and its two entry points.

:class:`StatsKernel` computes the per-token statistics of :mod:`lmloss.stats.statistics`
on tiles from :mod:`lmloss.stats.tiles`; :mod:`lmloss.stats.schedule` runs it:

* :func:`token_stats_autograd` — recompute schedule: the forward keeps only [N] vectors,
  the backward recomputes each tile (8·N·H·V FLOPs against the naive 6·N·H·V) because the
  upstream gradient of each statistic is only known then.
* :func:`eager_token_loss` — one-pass schedule, for a loss that is a sum of per-token
  terms: tiles span the vocabulary and the gradients are computed in the same pass
  (6·N·H·V, as Liger's fused linear cross-entropy does).

Each entry point is where a backend other than PyTorch would take over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from lmloss.stats import backend
from lmloss.stats.chunking import ChunkPlan
from lmloss.stats.schedule import Block, Box, one_pass, online_moments, recompute
from lmloss.stats.statistics import ALL_STATISTICS, MOMENTS, Final, Tile, moments_for
from lmloss.stats.tiles import HeadSource, HeadSpec, compute_dtype
from lmloss.stats.torch_compile import Fusable, compile_wanted
from lmloss.stats.transform import LogitTransform
from lmloss.stats.workspace import Workspace

Tensor = torch.Tensor
TokenLoss = Callable[[dict[str, Tensor], slice], Tensor]

__all__ = ["StatsKernel", "compute_dtype", "eager_token_loss", "token_stats_autograd"]


def _target_columns(targets: Tensor, v0: int, v1: int) -> Tensor:
    cols = targets - v0
    return torch.where((cols >= 0) & (cols < v1 - v0), cols, -1)


def _whole_tile_moments(z: Tensor, targets: Tensor, moment_names, table: Tensor | None):
    """Row maxima, moments and target logits of tiles that span the vocabulary."""
    m = z.amax(1)
    e = (z - m[:, None]).exp()
    zero = m.new_zeros(m.shape)
    moments = {name: MOMENTS[name].step(zero, z, e, zero, table) for name in moment_names}
    return m, moments, z.gather(1, targets[:, None]).squeeze(1)


def _tile_grad(z, m, lse, zy, moments, vocab, target_col, upstream, table, buffers=None):
    """``Σ_stat g_stat · d(stat)/dz`` on one tile; ``buffers`` (p, scratch, dz) are reused
    tile buffers when run eagerly, None when compiled (the fused loop needs none)."""
    final = Final(m=m, lse=lse, zy=zy, moments=moments, vocab=vocab)
    if buffers is None:
        p, scratch, dz = (z - lse[:, None]).exp(), torch.empty_like(z), torch.zeros_like(z)
    else:
        p_buffer, scratch, dz = buffers
        p = torch.sub(z, lse[:, None], out=p_buffer).exp_()
        dz.zero_()
    tile = Tile(z=z, p=p, final=final, target_col=target_col, scratch=scratch, table=table)
    for name, g in upstream.items():
        ALL_STATISTICS[name].add_grad(dz, tile, g)
    return dz


# Compiled, each is one or two loops over the tile (:mod:`lmloss.stats.torch_compile`).
WHOLE_TILE_MOMENTS = Fusable(_whole_tile_moments)
TILE_GRAD = Fusable(_tile_grad)


class StatsKernel:
    """The statistics ``names`` of one head at the rows' ``targets`` (all valid).

    ``table``: the frozen ``[V, D]`` table of the ``expectation`` statistic (no gradient).
    ``compiled``: run the per-tile formulas through ``torch.compile`` (large calls; see
    :mod:`lmloss.stats.torch_compile`).
    """

    def __init__(
        self,
        names: tuple[str, ...],
        targets: Tensor,
        table: Tensor | None = None,
        compiled: bool = False,
    ):
        self.names, self.targets, self.table, self.compiled = names, targets, table, compiled
        self.moment_names = moments_for(names)
        self.ws = Workspace(targets.device)

    def differentiable(self, name: str) -> bool:
        return ALL_STATISTICS[name].add_grad is not None

    def forward_block(
        self, sources: Sequence[HeadSource], t0: int, t1: int, vocab_tile: int, need
    ) -> Block:
        (head,) = sources
        targets = self.targets[t0:t1]
        whole = vocab_tile >= head.vocab
        if whole and self.compiled:
            z = head.tile(t0, t1, 0, head.vocab)
            args = (z, targets, self.moment_names, self.table)
            m, moments, zy = WHOLE_TILE_MOMENTS(True, *args)
        else:
            zy = targets.new_zeros(t1 - t0, dtype=head.dtype)

            def take_target_logit(z: Tensor, v0: int, v1: int) -> None:
                cols = _target_columns(targets, v0, v1)
                rows = (cols >= 0).nonzero().squeeze(1)
                zy[rows] = z[rows, cols[rows]]

            online = online_moments(
                head, t0, t1, vocab_tile, self.moment_names, self.ws, self.table, take_target_logit
            )
            z, m, moments = online.last_tile, online.m, online.moments
        lse = m + moments["s"].log()
        final = Final(m=m, lse=lse, zy=zy, moments=moments, vocab=head.vocab)
        values = {name: ALL_STATISTICS[name].value(final) for name in self.names}
        return Block(values, final, (z,) if whole else None)

    def tile_grads(
        self,
        tiles: Sequence[Tensor],
        final: Final,
        upstream: Mapping[str, Tensor],
        box: Box,
        need,
        memo=None,
    ) -> tuple[Tensor]:
        """``Σ_stat g_stat · d(stat)/dz`` on one tile."""
        (z,) = tiles
        t0, t1, v0, v1 = box
        buffers = None
        if not self.compiled:  # p shares the forward's e buffer: never alive at once
            buffers = tuple(self.ws.get(name, *z.shape, z.dtype) for name in ("e", "scratch", "dz"))
        dz = TILE_GRAD(
            self.compiled,
            z,
            *(final.m, final.lse, final.zy, final.moments, final.vocab),
            _target_columns(self.targets[t0:t1], v0, v1),
            {name: g.to(z.dtype) for name, g in upstream.items()},
            None if self.table is None else self.table[v0:v1],
            buffers,
        )
        return (dz,)


def token_stats_autograd(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    names: tuple[str, ...],
    plan: ChunkPlan,
    table: Tensor | None = None,
) -> dict[str, Tensor]:
    """Differentiable statistics of 2-D ``hidden`` rows whose targets are all valid
    (recompute schedule).

    ``table``: the frozen ``[V, D]`` table of the ``expectation`` statistic (no gradient).
    """
    routed = backend.route_token_stats(hidden, weight, bias, targets, transform, names, table)
    if routed is not None:
        return routed
    compiled = compile_wanted(hidden.shape[0], weight.shape[0])
    kernel = StatsKernel(names, targets, table, compiled)
    return recompute(kernel, (HeadSpec(transform),), (hidden, weight, bias), plan)


def eager_token_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    names: tuple[str, ...],
    token_loss: TokenLoss,
    plan: ChunkPlan,
    expect: Tensor | None = None,
    blocks: Sequence[tuple[int, int]] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ_blocks token_loss(stats of the block, rows of the block)``, gradients in one pass.

    ``token_loss`` receives the statistics of a block of rows (leaf tensors) and the slice
    of those rows, and returns the block's scalar contribution; it must not mix rows of
    different blocks (a batch-level normalizer is a constant it closes over). ``plan``
    must span the whole vocabulary. ``expect`` is the frozen ``[V, D]`` table of the
    ``expectation`` statistic, when it is among ``names``. ``blocks``: the row ranges
    (see :func:`lmloss.stats.schedule.one_pass`), e.g. aligned to whole preference pairs;
    a backend that runs all rows as one block needs none. Returns the differentiable total
    and the detached statistics of every row.
    """
    if plan.vocab != weight.shape[0]:
        raise ValueError("eager_token_loss needs a plan whose vocabulary tile spans the vocabulary")
    routed = backend.route_token_loss(
        hidden, weight, bias, targets, transform, names, token_loss, expect
    )
    if routed is not None:
        return routed
    compiled = compile_wanted(hidden.shape[0], weight.shape[0])
    table = None if expect is None else expect.detach()
    kernel = StatsKernel(names, targets, table, compiled)
    head = (hidden, weight, bias)
    return one_pass(kernel, (HeadSpec(transform),), head, plan, token_loss, blocks=blocks)
