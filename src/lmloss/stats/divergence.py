"""The two-model engine: per-token divergences between a student and a teacher head.

For every token it computes sums over the vocabulary ``D = Σ_v f(a_v, b_v)`` of the pair
terms of :mod:`lmloss.stats.divergence_terms`, where ``a = log softmax(z_s)`` and
``b = log softmax(z_t)`` are both models' log-probabilities after the logit transform
(temperature applied to both). Logits exist one ``tokens × vocab`` tile at a time in the
compute dtype (float32, float64 for float64 students); the two ``[N, V]`` tensors of the
naive path never exist.

Forward, per block of tokens: a first pass over vocabulary tiles takes both models'
log-sum-exps online; a second pass forms ``a``, ``b`` and accumulates ``Σ f`` and, when a
gradient will be needed, ``G_s = Σ ∂f/∂a`` and ``G_t = Σ ∂f/∂b``. When a tile spans the whole
vocabulary (the default whenever the memory budget fits at least
:data:`~lmloss.stats.chunking.MIN_TOKEN_TILE` rows), the two passes share one tile and each
model's head is multiplied once.

Two ways to get gradients, sharing the tile routines:

* :func:`pair_terms_autograd` — a custom autograd Function for per-token outputs with any
  downstream use. Its backward recomputes each tile and pushes
  ``∂D/∂z_u = ∂f/∂a_u - p_u G_s`` (teacher: ``b``, ``q``, ``G_t``) through the logit
  transform into the heads' gradients: 6 matmuls of N·H·V with a frozen teacher (naive: 4).
* :func:`eager_pair_loss` — for a loss that is a sum over tokens of a function of their
  term sums, the upstream gradient of a block is known once its terms are: whole-vocabulary
  tiles then give values and gradients in one pass (4 matmuls, as the naive path and
  Liger's fused linear JSD).

Teacher gradients are only formed when the caller asks for them (online distillation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from lmloss.stats import backend, chunking
from lmloss.stats.chunking import LIVE_TILES, ChunkPlan, default_budget, plan_chunks
from lmloss.stats.divergence_sources import HeadSource, LogitsSource
from lmloss.stats.divergence_terms import PAIR_TERMS, Hyper, Pair, term_partials
from lmloss.stats.transform import LogitTransform

Tensor = torch.Tensor
Source = HeadSource | LogitsSource

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
    """Per-token quantities saved for the backward."""

    lse_s: Tensor
    lse_t: Tensor
    grad_sums_s: dict[str, Tensor]  # Σ_v ∂f/∂a per term (only when the student needs gradients)
    grad_sums_t: dict[str, Tensor]

    def rows(self, t0: int, t1: int) -> PairFinal:
        return PairFinal(
            self.lse_s[t0:t1],
            self.lse_t[t0:t1],
            {k: v[t0:t1] for k, v in self.grad_sums_s.items()},
            {k: v[t0:t1] for k, v in self.grad_sums_t.items()},
        )


def _online_lse(source: Source, t0: int, t1: int, vocab_tile: int, dtype: torch.dtype) -> Tensor:
    m = torch.full((t1 - t0,), float("-inf"), dtype=dtype)
    s = torch.zeros(t1 - t0, dtype=dtype)
    for v0 in range(0, source.vocab, vocab_tile):
        z = source.tile(t0, t1, v0, min(v0 + vocab_tile, source.vocab))
        m_new = torch.maximum(m, z.amax(1))
        s = s * (m - m_new).exp() + (z - m_new[:, None]).exp().sum(1)
        m = m_new
    return m + s.log()


def _tiles(
    student: Source, teacher: Source, t0: int, t1: int, vocab_tile: int, cached: tuple | None
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    if cached is not None:
        yield 0, student.vocab, *cached[:2]
        return
    for v0 in range(0, student.vocab, vocab_tile):
        v1 = min(v0 + vocab_tile, student.vocab)
        yield v0, v1, student.tile(t0, t1, v0, v1), teacher.tile(t0, t1, v0, v1)


def _block_forward(
    student: Source, teacher: Source, t0: int, t1: int, spec: PairSpec, need_s: bool, need_t: bool
) -> tuple[dict[str, Tensor], PairFinal, tuple | None]:
    """Term sums for tokens ``t0:t1``.

    When one tile spans the vocabulary, also returns it as ``(z_s, z_t, pair)`` (the pair
    holds the memoized partials, so the one-pass path reuses them for the gradient).
    """
    vocab, vocab_tile, dtype = student.vocab, spec.plan.vocab, spec.dtype
    cached = None
    if vocab_tile >= vocab:
        cached = (student.tile(t0, t1, 0, vocab), teacher.tile(t0, t1, 0, vocab))
        lse_s, lse_t = (torch.logsumexp(z, 1) for z in cached)
    else:
        lse_s = _online_lse(student, t0, t1, vocab_tile, dtype)
        lse_t = _online_lse(teacher, t0, t1, vocab_tile, dtype)
    zeros = lambda: torch.zeros(t1 - t0, dtype=dtype)  # noqa: E731
    values = {name: zeros() for name in spec.names}
    sums_s = {name: zeros() for name in spec.names} if need_s else {}
    sums_t = {name: zeros() for name in spec.names} if need_t else {}
    for _, _, z_s, z_t in _tiles(student, teacher, t0, t1, vocab_tile, cached):
        pair = Pair(z_s - lse_s[:, None], z_t - lse_t[:, None])
        for name in spec.names:
            term, hyper = PAIR_TERMS[name], spec.hyper[name]
            values[name] += term.value(pair, hyper).sum(1)
            if need_s or need_t:
                d_s, d_t = term_partials(pair, name, hyper)
                if need_s and d_s is not None:
                    sums_s[name] += d_s.sum(1)
                if need_t and d_t is not None:
                    sums_t[name] += d_t.sum(1)
    if cached is not None:
        cached = (*cached, pair)
    return values, PairFinal(lse_s, lse_t, sums_s, sums_t), cached


def forward_pairs(
    student: Source, teacher: Source, spec: PairSpec, need_s: bool, need_t: bool
) -> tuple[dict[str, Tensor], PairFinal]:
    """Per-token term sums for every row, and what the backward needs."""
    n = student.hidden.shape[0]
    values: dict[str, list[Tensor]] = {name: [] for name in spec.names}
    finals = []
    for t0 in range(0, n, spec.plan.tokens):
        block, final, _ = _block_forward(
            student, teacher, t0, min(t0 + spec.plan.tokens, n), spec, need_s, need_t
        )
        for name in spec.names:
            values[name].append(block[name])
        finals.append(final)
    cat = lambda parts: {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
    final = PairFinal(
        torch.cat([f.lse_s for f in finals]),
        torch.cat([f.lse_t for f in finals]),
        cat([f.grad_sums_s for f in finals]),
        cat([f.grad_sums_t for f in finals]),
    )
    return {name: torch.cat(parts) for name, parts in values.items()}, final


def _tile_logit_grads(
    pair: Pair,
    final: PairFinal,
    upstream: Mapping[str, Tensor],
    spec: PairSpec,
    need_s: bool,
    need_t: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """``Σ_terms g · ∂D/∂z`` for both models on one tile."""
    dz_s = torch.zeros_like(pair.a) if need_s else None
    dz_t = torch.zeros_like(pair.b) if need_t else None
    for name, g in upstream.items():
        d_s, d_t = term_partials(pair, name, spec.hyper[name])
        g = g.to(pair.a.dtype)[:, None]
        if dz_s is not None and d_s is not None:
            dz_s += g * (d_s - pair.p * final.grad_sums_s[name][:, None])
        if dz_t is not None and d_t is not None:
            dz_t += g * (d_t - pair.q * final.grad_sums_t[name][:, None])
    return dz_s, dz_t


def backward_pairs(
    student: Source,
    teacher: Source,
    final: PairFinal,
    upstream: Mapping[str, Tensor],
    spec: PairSpec,
    need_s: bool,
    need_t: bool,
) -> None:
    """Accumulate both sources' gradients, recomputing each tile (vocabulary tiles outer)."""
    n, vocab, plan = student.hidden.shape[0], student.vocab, spec.plan
    for v0 in range(0, vocab, plan.vocab):
        v1 = min(v0 + plan.vocab, vocab)
        for t0 in range(0, n, plan.tokens):
            t1 = min(t0 + plan.tokens, n)
            rows = final.rows(t0, t1)
            z_s, z_t = student.tile(t0, t1, v0, v1), teacher.tile(t0, t1, v0, v1)
            pair = Pair(z_s - rows.lse_s[:, None], z_t - rows.lse_t[:, None])
            g = {name: u[t0:t1] for name, u in upstream.items()}
            dz_s, dz_t = _tile_logit_grads(pair, rows, g, spec, need_s, need_t)
            if dz_s is not None:
                student.add_grad(dz_s, z_s, t0, t1, v0, v1)
            if dz_t is not None:
                teacher.add_grad(dz_t, z_t, t0, t1, v0, v1)


def _sources(inputs: tuple, spec: PairSpec) -> tuple[HeadSource, Source]:
    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits, t_rows = inputs
    student = HeadSource(s_hidden, s_weight, s_bias, spec.student_transform, spec.dtype)
    if t_logits is not None:
        return student, LogitsSource(t_logits, t_rows, spec.teacher_transform, spec.dtype)
    return student, HeadSource(t_hidden, t_weight, t_bias, spec.teacher_transform, spec.dtype)


def _start_grads(student: HeadSource, teacher: Source, need: tuple[bool, ...]) -> None:
    """Gradient buffers for the 7 differentiable inputs flagged in ``need``."""
    student.start_grads(need[0:3])
    teacher.start_grads(need[3:6] if isinstance(teacher, HeadSource) else need[6:7])


def _grads(student: HeadSource, teacher: Source) -> tuple[Tensor | None, ...]:
    """Gradients of the 7 differentiable inputs, in their order."""
    if isinstance(teacher, HeadSource):
        return (*student.grads(), *teacher.grads(), None)
    return (*student.grads(), None, None, None, *teacher.grads())


class _PairTermsFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits, t_rows, spec
    ):
        need = ctx.needs_input_grad
        need_s, need_t = any(need[0:3]), any(need[3:7])
        inputs = (s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits, t_rows)
        student, teacher = _sources(inputs, spec)
        values, final = forward_pairs(student, teacher, spec, need_s, need_t)
        ctx.save_for_backward(*inputs)
        ctx.final, ctx.spec = final, spec
        ctx.set_materialize_grads(False)
        return tuple(values[name] for name in spec.names)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        spec, need = ctx.spec, ctx.needs_input_grad
        upstream = {n: g for n, g in zip(spec.names, grad_outputs) if g is not None}
        need_s, need_t = any(need[0:3]), any(need[3:7])
        if not upstream or not (need_s or need_t):
            return (None,) * 9
        student, teacher = _sources(ctx.saved_tensors, spec)
        _start_grads(student, teacher, need)
        backward_pairs(student, teacher, ctx.final, upstream, spec, need_s, need_t)
        return (*_grads(student, teacher), None, None)


def pair_terms_autograd(inputs: tuple[Tensor | None, ...], spec: PairSpec) -> dict[str, Tensor]:
    """Differentiable term sums of 2-D student rows (all valid).

    ``inputs`` is ``(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits,
    t_rows)``: the student head's rows, the teacher either as a head (rows, weight, bias) or
    as full logits ``[N_all, V]`` with the row index of each student row (the unused form is
    None). Inputs that do not require grad get none.
    """
    routed = backend.route_pair_terms(inputs, spec)
    if routed is not None:
        return routed
    return dict(zip(spec.names, _PairTermsFunction.apply(*inputs, spec)))


# ------------------------------------------------- one pass: gradients during the forward

BlockLoss = Callable[[dict[str, Tensor], slice], Tensor]


class _WithPrecomputedGrads(torch.autograd.Function):
    """Returns ``total``; its backward hands out gradients computed during the forward."""

    @staticmethod
    def forward(ctx, total, grads, *inputs):
        ctx.grads = grads
        return total.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        scaled = tuple(None if g is None else g * grad_total.to(g.dtype) for g in ctx.grads)
        return (None, None, *scaled)


def eager_pair_loss(
    inputs: tuple[Tensor | None, ...],
    spec: PairSpec,
    block_loss: BlockLoss,
    extra: Mapping[str, Tensor],
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """``Σ_blocks block_loss(inputs of the block, rows)`` with gradients in the same pass.

    ``inputs`` as for :func:`pair_terms_autograd`. ``block_loss`` receives, as leaf tensors,
    the block's term sums and its rows of each ``extra`` per-row input (e.g. a label
    log-likelihood computed elsewhere), and must not mix rows of different blocks (a batch
    normalizer is a constant it closes over). ``spec.plan`` must span the vocabulary: each
    block's tiles are then computed once and give the values, the upstream gradients
    (autograd of ``block_loss``) and the head gradients — 4 matmuls of N·H·V in all with a
    frozen teacher, against 6 for the recomputing autograd path.

    Returns:
        The total (differentiable w.r.t. the heads through gradients computed here), the
        detached term sums of every row, and ``∂ total / ∂ extra`` per row.
    """
    if spec.plan.vocab < inputs[1].shape[0]:
        raise ValueError("eager_pair_loss needs whole-vocabulary tiles (plan.vocab == V)")
    routed = backend.route_pair_loss(inputs, spec, block_loss, extra)
    if routed is not None:
        return routed
    differentiable = inputs[:7]
    need = tuple(t is not None and t.requires_grad for t in differentiable)
    need_s, need_t = any(need[0:3]), any(need[3:7])
    detached = tuple(None if t is None else t.detach() for t in differentiable) + inputs[7:]
    student, teacher = _sources(detached, spec)
    _start_grads(student, teacher, need)
    n, vocab = student.hidden.shape[0], student.vocab
    total = torch.zeros((), dtype=spec.dtype)
    parts: dict[str, list[Tensor]] = {name: [] for name in spec.names}
    extra_grads = {name: torch.zeros_like(x, dtype=spec.dtype) for name, x in extra.items()}
    with torch.no_grad():
        for t0 in range(0, n, spec.plan.tokens):
            t1 = min(t0 + spec.plan.tokens, n)
            values, final, (z_s, z_t, pair) = _block_forward(
                student, teacher, t0, t1, spec, need_s, need_t
            )
            leaves = {name: v.requires_grad_() for name, v in values.items()}
            leaves.update({name: x[t0:t1].detach().requires_grad_() for name, x in extra.items()})
            with torch.enable_grad():
                loss = block_loss(leaves, slice(t0, t1))
                leaf_grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            total += loss.detach()
            upstream = {}
            for name, g in zip(leaves, leaf_grads):
                if name in extra:
                    if g is not None:
                        extra_grads[name][t0:t1] = g
                elif g is not None:
                    upstream[name] = g
            for name in spec.names:
                parts[name].append(leaves[name].detach())
            if not upstream or not (need_s or need_t):
                continue
            dz_s, dz_t = _tile_logit_grads(pair, final, upstream, spec, need_s, need_t)
            if dz_s is not None:
                student.add_grad(dz_s, z_s, t0, t1, 0, vocab)
            if dz_t is not None:
                teacher.add_grad(dz_t, z_t, t0, t1, 0, vocab)
    values = {name: torch.cat(p) for name, p in parts.items()}
    if need_s or need_t:
        grads = _grads(student, teacher)
        present = [t for t in differentiable if t is not None]
        present_grads = tuple(g for t, g in zip(differentiable, grads) if t is not None)
        total = _WithPrecomputedGrads.apply(total, present_grads, *present)
    return total, values, extra_grads
