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

from lmloss.stats import backend, chunking
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
from lmloss.stats.torch_compile import Fusable, compile_wanted
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


def _terms_on_pair(pair: Pair, names, hyper, need_s: bool, need_t: bool):
    """Per-row sums over one tile of each term and, where a gradient is needed, of its
    partials ``∂f/∂a`` (student) and ``∂f/∂b`` (teacher)."""
    values, sums_s, sums_t = {}, {}, {}
    for name in names:
        values[name] = PAIR_TERMS[name].value(pair, hyper[name]).sum(1)
        if need_s or need_t:
            d_s, d_t = term_partials(pair, name, hyper[name])
            if need_s and d_s is not None:
                sums_s[name] = d_s.sum(1)
            if need_t and d_t is not None:
                sums_t[name] = d_t.sum(1)
    return values, sums_s, sums_t


def _grads_on_pair(pair: Pair, sums_s, sums_t, upstream, hyper, need_s: bool, need_t: bool):
    """``Σ_terms g · ∂D/∂z`` for both models on one tile: ``g (∂f/∂a − p Σ ∂f/∂a)``."""
    dz_s = dz_t = None
    for name, g in upstream.items():
        d_s, d_t = term_partials(pair, name, hyper[name])
        g = g[:, None]
        if need_s and d_s is not None:
            part = g * (d_s - pair.p * sums_s[name][:, None])
            dz_s = part if dz_s is None else dz_s + part
        if need_t and d_t is not None:
            part = g * (d_t - pair.q * sums_t[name][:, None])
            dz_t = part if dz_t is None else dz_t + part
    if need_s and dz_s is None:
        dz_s = torch.zeros_like(pair.a)
    if need_t and dz_t is None:
        dz_t = torch.zeros_like(pair.b)
    return dz_s, dz_t


def _terms_on_tile(z_s, z_t, lse_s, lse_t, names, hyper, need_s: bool, need_t: bool):
    pair = Pair(z_s - lse_s[:, None], z_t - lse_t[:, None])
    return _terms_on_pair(pair, names, hyper, need_s, need_t)


def _whole_tile_terms(z_s, z_t, names, hyper, need_s: bool, need_t: bool):
    """Both log-sum-exps of whole-vocabulary tiles, then :func:`_terms_on_tile`."""
    lse_s, lse_t = torch.logsumexp(z_s, 1), torch.logsumexp(z_t, 1)
    return lse_s, lse_t, *_terms_on_tile(z_s, z_t, lse_s, lse_t, names, hyper, need_s, need_t)


def _grads_on_tile(z_s, z_t, lse_s, lse_t, sums_s, sums_t, upstream, hyper, need_s, need_t):
    pair = Pair(z_s - lse_s[:, None], z_t - lse_t[:, None])
    return _grads_on_pair(pair, sums_s, sums_t, upstream, hyper, need_s, need_t)


# Compiled, each is one loop over the tile (:mod:`lmloss.stats.torch_compile`).
TERMS_ON_TILE = Fusable(_terms_on_tile)
WHOLE_TILE_TERMS = Fusable(_whole_tile_terms)
GRADS_ON_TILE = Fusable(_grads_on_tile)


class PairKernel:
    """The term sums ``spec.names`` between a student (source 0) and a teacher (source 1).

    ``compiled``: run the per-tile formulas through ``torch.compile`` (large calls; see
    :mod:`lmloss.stats.torch_compile`). Eagerly, a whole-vocabulary tile's log-probabilities and
    partials are kept from the forward for the one-pass gradient; compiled, recomputing
    them inside the fused loop is cheaper than writing and reading them back.
    """

    def __init__(self, spec: PairSpec, device: torch.device, compiled: bool = False):
        self.spec, self.names, self.compiled = spec, spec.names, compiled
        self.ws = Workspace(device)

    def differentiable(self, name: str) -> bool:
        return True

    def forward_block(
        self, sources: Sequence[Source], t0: int, t1: int, vocab_tile: int, need: Sequence[bool]
    ) -> Block:
        student, teacher = sources
        need_s, need_t = need
        names, hyper = self.names, self.spec.hyper
        if vocab_tile >= student.vocab:  # one tile per model: each head is multiplied once
            z_s, z_t = (src.tile(t0, t1, 0, src.vocab) for src in sources)
            pair = None
            if self.compiled:
                lse_s, lse_t, *parts = WHOLE_TILE_TERMS(
                    True, z_s, z_t, names, hyper, need_s, need_t
                )
            else:  # the pair and its memoized partials serve the one-pass gradient too
                lse_s, lse_t = torch.logsumexp(z_s, 1), torch.logsumexp(z_t, 1)
                pair = Pair(z_s - lse_s[:, None], z_t - lse_t[:, None])
                parts = _terms_on_pair(pair, names, hyper, need_s, need_t)
            final = PairFinal(lse_s, lse_t, *parts[1:])
            return Block(parts[0], final, (z_s, z_t), memo=pair)
        lse_s, lse_t = (
            online_moments(src, t0, t1, vocab_tile, ("s",), self.ws).lse for src in sources
        )
        values, sums_s, sums_t = {}, {}, {}
        for v0, v1 in vocab_slices(student.vocab, vocab_tile):
            z_s, z_t = student.tile(t0, t1, v0, v1), teacher.tile(t0, t1, v0, v1)
            args = (z_s, z_t, lse_s, lse_t, names, hyper, need_s, need_t)
            for acc, part in zip((values, sums_s, sums_t), TERMS_ON_TILE(self.compiled, *args)):
                for name, x in part.items():
                    acc[name] = x if name not in acc else acc[name] + x
        return Block(values, PairFinal(lse_s, lse_t, sums_s, sums_t))

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
        need_s, need_t = need
        upstream = {name: g.to(z_s.dtype) for name, g in upstream.items()}
        sums = (final.grad_sums_s, final.grad_sums_t)
        hyper = self.spec.hyper
        if memo is not None:
            return _grads_on_pair(memo, *sums, upstream, hyper, need_s, need_t)
        args = (z_s, z_t, final.lse_s, final.lse_t, *sums, upstream, hyper, need_s, need_t)
        return GRADS_ON_TILE(self.compiled, *args)


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


def _kernel(inputs: tuple[Tensor | None, ...], spec: PairSpec) -> PairKernel:
    student_hidden, student_weight = inputs[0], inputs[1]
    compiled = compile_wanted(student_hidden.shape[0], student_weight.shape[0])
    return PairKernel(spec, student_hidden.device, compiled)


def pair_terms_autograd(inputs: tuple[Tensor | None, ...], spec: PairSpec) -> dict[str, Tensor]:
    """Differentiable term sums of 2-D student rows (all valid), recompute schedule.

    ``inputs`` is ``(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits,
    t_rows)``: the student head's rows, the teacher either as a head (rows, weight, bias) or
    as full logits ``[N_all, V]`` with the row index of each student row (the unused form is
    None). Inputs that do not require grad get none.
    """
    routed = backend.route_pair_terms(inputs, spec)
    if routed is not None:
        return routed
    specs, tensors = _specs(inputs, spec)
    return recompute(_kernel(inputs, spec), specs, tensors, spec.plan)


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
    routed = backend.route_pair_loss(inputs, spec, block_loss, extra)
    if routed is not None:
        return routed
    specs, tensors = _specs(inputs, spec)
    return one_pass(_kernel(inputs, spec), specs, tensors, spec.plan, block_loss, extra)
