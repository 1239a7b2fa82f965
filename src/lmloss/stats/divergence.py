"""Two-model pair terms on the tile engine: the kernel and its two entry points.

For every token :class:`PairKernel` computes sums over the vocabulary ``D = Σ_v f(a_v, b_v)``
of the pair terms of :mod:`lmloss.stats.divergence_terms`, where ``a = log softmax(z_s)`` and
``b = log softmax(z_t)`` are both models' log-probabilities after each model's logit
transform (scale, soft cap, temperature). The two ``[N, V]`` tensors of the naive path
never exist; :mod:`lmloss.stats.schedule` walks the tiles.

Forward, per block of tokens: an online pass over vocabulary tiles takes both models'
log-sum-exps; a second pass forms ``a``, ``b`` and accumulates ``Σ f`` and, when a
gradient will be needed, ``G_s = Σ ∂f/∂a`` and ``G_t = Σ ∂f/∂b``. When a tile spans the whole
vocabulary (the default whenever the memory budget fits at least
:data:`~lmloss.stats.chunking.MIN_TOKEN_TILE` rows), the two passes share one tile and each
model's head is multiplied once. A tile's logit gradient is
``∂D/∂z_u = ∂f/∂a_u - p_u G_s`` (teacher: ``b``, ``q``, ``G_t``).

* :func:`pair_terms_autograd` — recompute schedule, per-token outputs with any downstream
  use: 6 matmuls of N·H·V with a frozen teacher (naive: 4).
* :func:`eager_pair_loss` — one-pass schedule, for a loss that is a sum over tokens of a
  function of their term sums: 4 matmuls, as the naive path and Liger's fused linear JSD.

Teacher gradients are only formed when the caller asks for them (online distillation).
Each entry point is where a backend other than PyTorch would take over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lmloss.stats import chunking
from lmloss.stats.chunking import LIVE_TILES, ChunkPlan, default_budget, plan_chunks
from lmloss.stats.divergence_terms import PAIR_TERMS, Hyper, Pair, term_partials
from lmloss.stats.schedule import (
    Block,
    BlockLoss,
    Box,
    one_pass,
    online_moments,
    recompute,
    vocab_slices,
)
from lmloss.stats.tiles import HeadSpec, LogitsSpec, Source, Spec
from lmloss.stats.transform import LogitTransform
from lmloss.stats.workspace import Workspace

Tensor = torch.Tensor

__all__ = [
    "BlockLoss",
    "PairKernel",
    "PairSpec",
    "eager_pair_loss",
    "pair_plan",
    "pair_terms_autograd",
]

# Tiles alive at once per row: both models' logits, log-probs and probabilities, a few
# term temporaries and both logit gradients.
PAIR_LIVE_TILES = 12


def pair_plan(
    n_tokens: int, vocab: int, itemsize: int, budget_bytes: int | None = None
) -> ChunkPlan:
    """Tiles for the two-model engine: whole vocabulary rows when the budget allows it."""
    budget = default_budget() if budget_bytes is None else int(budget_bytes)
    if budget <= 0:
        raise ValueError(f"memory_budget must be > 0 bytes, got {budget_bytes}")
    scaled = max(1, budget * LIVE_TILES // PAIR_LIVE_TILES)
    whole = scaled // (vocab * itemsize * LIVE_TILES) >= chunking.MIN_TOKEN_TILE
    return plan_chunks(n_tokens, vocab, itemsize, scaled, whole_vocab=whole)


@dataclass(frozen=True)
class PairSpec:
    """What to compute: term names, their resolved hyper-parameters, transforms and tiles."""

    names: tuple[str, ...]
    hyper: Mapping[str, Hyper]
    student_transform: LogitTransform
    teacher_transform: LogitTransform
    plan: ChunkPlan
    dtype: torch.dtype


@dataclass
class PairFinal:
    """Per-token quantities of one block saved for the backward."""

    lse_s: Tensor
    lse_t: Tensor
    grad_sums_s: dict[str, Tensor]  # Σ_v ∂f/∂a per term (only when the student needs gradients)
    grad_sums_t: dict[str, Tensor]


class PairKernel:
    """The term sums ``spec.names`` between a student (source 0) and a teacher (source 1)."""

    def __init__(self, spec: PairSpec, device: torch.device):
        self.spec, self.names = spec, spec.names
        self.ws = Workspace(device)

    def differentiable(self, name: str) -> bool:
        return True

    def forward_block(
        self, sources: Sequence[Source], t0: int, t1: int, vocab_tile: int, need: Sequence[bool]
    ) -> Block:
        student, teacher = sources
        need_s, need_t = need
        online = [online_moments(src, t0, t1, vocab_tile, ("s",), self.ws) for src in sources]
        lse_s, lse_t = (o.lse for o in online)
        whole = vocab_tile >= student.vocab
        if whole:  # both heads were multiplied once, their tiles are still at hand
            tiles = [(0, student.vocab, online[0].last_tile, online[1].last_tile)]
        else:
            tiles = (
                (v0, v1, student.tile(t0, t1, v0, v1), teacher.tile(t0, t1, v0, v1))
                for v0, v1 in vocab_slices(student.vocab, vocab_tile)
            )
        zeros = lambda: lse_s.new_zeros(t1 - t0)  # noqa: E731
        values = {name: zeros() for name in self.names}
        sums_s = {name: zeros() for name in self.names} if need_s else {}
        sums_t = {name: zeros() for name in self.names} if need_t else {}
        for _, _, z_s, z_t in tiles:
            pair = Pair(z_s - lse_s[:, None], z_t - lse_t[:, None])
            for name in self.names:
                term, hyper = PAIR_TERMS[name], self.spec.hyper[name]
                values[name] += term.value(pair, hyper).sum(1)
                if need_s or need_t:
                    d_s, d_t = term_partials(pair, name, hyper)
                    if need_s and d_s is not None:
                        sums_s[name] += d_s.sum(1)
                    if need_t and d_t is not None:
                        sums_t[name] += d_t.sum(1)
        final = PairFinal(lse_s, lse_t, sums_s, sums_t)
        if whole:  # the one-pass schedule reuses the pair and its memoized partials
            return Block(values, final, (online[0].last_tile, online[1].last_tile), memo=pair)
        return Block(values, final)

    def tile_grads(
        self,
        tiles: Sequence[Tensor],
        final: PairFinal,
        upstream: Mapping[str, Tensor],
        box: Box,
        need: Sequence[bool],
        memo: Pair | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """``Σ_terms g · ∂D/∂z`` for both models on one tile."""
        z_s, z_t = tiles
        pair = memo
        if pair is None:
            pair = Pair(z_s - final.lse_s[:, None], z_t - final.lse_t[:, None])
        need_s, need_t = need
        dz_s = torch.zeros_like(pair.a) if need_s else None
        dz_t = torch.zeros_like(pair.b) if need_t else None
        for name, g in upstream.items():
            d_s, d_t = term_partials(pair, name, self.spec.hyper[name])
            g = g.to(pair.a.dtype)[:, None]
            if dz_s is not None and d_s is not None:
                dz_s += g * (d_s - pair.p * final.grad_sums_s[name][:, None])
            if dz_t is not None and d_t is not None:
                dz_t += g * (d_t - pair.q * final.grad_sums_t[name][:, None])
        return dz_s, dz_t


def _specs(inputs: tuple[Tensor | None, ...], spec: PairSpec) -> tuple[tuple[Spec, ...], tuple]:
    """The two models' specs and their tensors, from the 8 documented inputs."""
    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits, t_rows = inputs
    student = HeadSpec(spec.student_transform)
    if t_logits is not None:
        teacher = LogitsSpec(spec.teacher_transform, t_rows)
        return (student, teacher), (s_hidden, s_weight, s_bias, t_logits)
    return (student, HeadSpec(spec.teacher_transform)), (
        s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias,
    )  # fmt: skip


def pair_terms_autograd(inputs: tuple[Tensor | None, ...], spec: PairSpec) -> dict[str, Tensor]:
    """Differentiable term sums of 2-D student rows (all valid), recompute schedule.

    ``inputs`` is ``(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits,
    t_rows)``: the student head's rows, the teacher either as a head (rows, weight, bias) or
    as full logits ``[N_all, V]`` with the row index of each student row (the unused form is
    None). Inputs that do not require grad get none.
    """
    specs, tensors = _specs(inputs, spec)
    return recompute(PairKernel(spec, inputs[0].device), specs, tensors, spec.plan)


def eager_pair_loss(
    inputs: tuple[Tensor | None, ...],
    spec: PairSpec,
    block_loss: BlockLoss,
    extra: Mapping[str, Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ_blocks block_loss(inputs of the block, rows)`` with gradients in the same pass.

    ``inputs`` as for :func:`pair_terms_autograd`. ``block_loss`` receives, as leaf tensors,
    the block's term sums and its rows of each ``extra`` per-row input (e.g. a label
    log-likelihood computed elsewhere), and must not mix rows of different blocks (a batch
    normalizer is a constant it closes over). ``spec.plan`` must span the vocabulary: each
    block's tiles are then computed once and give the values, the upstream gradients
    (autograd of ``block_loss``) and the head gradients — 4 matmuls of N·H·V in all with a
    frozen teacher, against 6 for the recomputing schedule.

    Returns:
        The total (differentiable w.r.t. the heads and ``extra`` through gradients computed
        here) and the detached term sums of every row.
    """
    specs, tensors = _specs(inputs, spec)
    kernel = PairKernel(spec, inputs[0].device)
    return one_pass(kernel, specs, tensors, spec.plan, block_loss, extra)
