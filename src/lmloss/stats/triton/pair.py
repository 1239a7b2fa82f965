"""Two models on the Triton kernels: per-token divergence terms between a student head
and a teacher head, same contracts as :mod:`lmloss.stats.divergence`.

* :func:`pair_terms` — differentiable per-token sums; the backward recomputes the tiles.
* :func:`eager_pair_loss` — a loss summing a function of those sums over tokens: the
  upstream gradients follow from the sums right away, so the gradient kernel runs inside
  the forward and ``backward`` only scales the stored gradients.

One sweep over both heads (:func:`pair_moments`) gives their log-sum-exps and both KLs in
closed form; JSD and TVD take one more sweep each for ``Σ f``, ``G_s``, ``G_t``
(:mod:`.pair_kernels`). The backward reuses the forward's log-sum-exps and sums; each term
with an upstream gradient costs one gradient sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lmloss.stats.schedule import WithPrecomputedGrads
from lmloss.stats.triton.config import KernelTiles, grad_filter
from lmloss.stats.triton.launch import (
    Head,
    autotuned,
    cast_grads,
    grad_buffers,
    grad_grid,
    grad_sweeps,
    on_device,
    settings,
    upcast,
    vocab_split,
)
from lmloss.stats.triton.pair_kernels import (
    FORWARD_KL,
    JSD,
    REVERSE_KL,
    TVD,
    pair_grad_kernel,
    pair_moments_kernel,
    pair_sums_kernel,
)

Tensor = torch.Tensor

KERNEL_TERMS = frozenset({"forward_kl", "reverse_kl", "jsd", "tvd"})


def _term_args(name: str, hyper: Mapping[str, float]) -> dict:
    """The kernel's ``TERM`` and its mixture constants (β = 0 and 1 are the two KLs)."""
    consts = {"log_1m_beta": 0.0, "log_beta": 0.0, "beta": 0.0}
    if name == "jsd":
        beta = float(hyper["beta"])
        if beta == 0.0:
            return {"TERM": FORWARD_KL, **consts}
        if beta == 1.0:
            return {"TERM": REVERSE_KL, **consts}
        return {
            "TERM": JSD,
            "log_1m_beta": math.log1p(-beta),
            "log_beta": math.log(beta),
            "beta": beta,
        }
    return {
        "TERM": {"forward_kl": FORWARD_KL, "reverse_kl": REVERSE_KL, "tvd": TVD}[name],
        **consts,
    }


def _head_args(student: Head, teacher: Head) -> tuple[tuple, dict, dict]:
    """Pointer arguments, transform scalars and per-head flags of a pair kernel."""
    pointers = (*student.args(), *teacher.args())
    scalars = dict(
        zip(
            ("scale_s", "softcap_s", "inv_temp_s", "scale_t", "softcap_t", "inv_temp_t"),
            (*student.transform_args(), *teacher.transform_args()),
        )
    )
    flags = {}
    for suffix, head in (("S", student), ("T", teacher)):
        flags.update({f"{k}_{suffix}": v for k, v in head.flags().items()})
        flags[f"UPCAST_{suffix}"] = upcast(head.hidden.dtype)
    return pointers, scalars, flags


def _forward_sweep(
    kernel, rows: int, student: Head, teacher: Head, tiles, lead: tuple, consts: Mapping
) -> Tensor:
    """Launch a forward pair kernel (grid: token blocks × vocabulary splits) whose
    arguments are the heads, ``lead``, its ``[rows, splits, N]`` float32 output, the sizes
    and ``consts``; returns that output."""
    dtypes = (student.hidden.dtype, teacher.hidden.dtype)
    cfg, tiles, common = settings("forward", *dtypes, tiles=tiles)
    n_blocks, splits, per_split = vocab_split(student.n, student.vocab, cfg, tiles)
    out = student.hidden.new_empty((rows, splits, student.n), dtype=torch.float32)
    pointers, scalars, flags = _head_args(student, teacher)
    sizes = (student.n, student.vocab, student.hidden.shape[1], teacher.hidden.shape[1])
    with on_device(student.hidden):
        kernel[(n_blocks, splits)](
            *pointers, *lead, out, *sizes, per_split, **scalars, **consts, **flags, **common
        )
    return out


@dataclass(frozen=True)
class PairMoments:
    """Per-token results of :func:`pair_moments` (float32 ``[N]`` each): both
    log-sum-exps and the expectations of both heads' logits under ``p`` (student) and
    ``q`` (teacher)."""

    lse_s: Tensor
    lse_t: Tensor
    ep_zs: Tensor
    ep_zt: Tensor
    eq_zt: Tensor
    eq_zs: Tensor

    def closed_form(self, term: int) -> Tensor | None:
        """``[3, N]`` (``Σ f``, ``G_s``, ``G_t``) of a KL term, None for the others.

        ``KL(q‖p) = Σ q (b − a) = E_q[z_t] − lse_t − E_q[z_s] + lse_s``, ``G_s = −Σ q = −1``,
        ``G_t = Σ q (b − a + 1) = KL + 1``; the reverse KL mirrors it. The difference of
        expectations loses about ``1e-7·|z|`` to float32 rounding, where a sum of
        ``q (b − a)`` loses about ``1e-7·KL``."""
        if term == FORWARD_KL:
            kl = self.eq_zt - self.lse_t - self.eq_zs + self.lse_s
            return torch.stack((kl, torch.full_like(kl, -1.0), kl + 1))
        if term == REVERSE_KL:
            kl = self.ep_zs - self.lse_s - self.ep_zt + self.lse_t
            return torch.stack((kl, kl + 1, torch.full_like(kl, -1.0)))
        return None


def pair_moments(student: Head, teacher: Head, tiles: KernelTiles | None = None) -> PairMoments:
    """One sweep over both heads (:func:`.pair_kernels.pair_moments_kernel`), splits merged."""
    if tiles is None:
        run = lambda t: pair_moments(student, teacher, t)  # noqa: E731
        tiles = autotuned("pair_moments", "forward", student, run, teacher)
    out = _forward_sweep(pair_moments_kernel, 8, student, teacher, tiles, (), {})

    def merge(m_k: Tensor, s_k: Tensor, own_k: Tensor, cross_k: Tensor) -> tuple[Tensor, ...]:
        m = m_k.amax(0)
        rescale = (m_k - m).exp()
        s = (s_k * rescale).sum(0)
        return m + s.log(), (own_k * rescale).sum(0) / s, (cross_k * rescale).sum(0) / s

    lse_s, ep_zs, ep_zt = merge(*out[:4])
    lse_t, eq_zt, eq_zs = merge(*out[4:])
    return PairMoments(lse_s, lse_t, ep_zs, ep_zt, eq_zt, eq_zs)


class _PairState:
    """Both heads and their moments: what the sums and gradient sweeps share."""

    def __init__(self, student: Head, teacher: Head, spec, moments: PairMoments | None = None):
        self.student, self.teacher, self.spec = student, teacher, spec
        self.moments = pair_moments(student, teacher) if moments is None else moments
        self.lse_s, self.lse_t = self.moments.lse_s, self.moments.lse_t

    def sums(self, name: str, tiles: KernelTiles | None = None) -> Tensor:
        """``[3, N]``: ``Σ f``, ``G_s``, ``G_t`` of term ``name`` per token."""
        term = _term_args(name, self.spec.hyper[name])
        closed = self.moments.closed_form(term["TERM"])
        if closed is not None:
            return closed
        s, t = self.student, self.teacher
        if tiles is None:
            tiles = autotuned("pair_sums", "forward", s, lambda tiles: self.sums(name, tiles), t)
        lse = (self.lse_s, self.lse_t)
        return _forward_sweep(pair_sums_kernel, 3, s, t, tiles, lse, term).sum(1)

    def add_grads(
        self,
        name: str,
        rows: Tensor,
        grads_s: tuple,
        grads_t: tuple,
        tiles: KernelTiles | None = None,
    ) -> None:
        """Accumulate the gradients for ``rows = [g, G_s, G_t]`` (``[3, N]``) into the
        float32 buffers ``grads_s``/``grads_t`` (hidden, weight, bias; None where unneeded)."""
        s, t = self.student, self.teacher
        if tiles is None:

            def scratch(grads: tuple) -> tuple:  # the candidates add into buffers of their own
                return tuple(None if g is None else torch.zeros_like(g) for g in grads)

            run = lambda tiles: self.add_grads(  # noqa: E731
                name, rows, scratch(grads_s), scratch(grads_t), tiles
            )
            tiles = autotuned("pair_grad", "grad", s, run, t)
        cfg, tiles, common = settings("grad", s.hidden.dtype, t.hidden.dtype, tiles=tiles)
        pointers, scalars, flags = _head_args(s, t)
        skip_below = grad_filter()
        dummy = self.lse_s
        need_dh = grads_s[0] is not None or grads_t[0] is not None
        need_weight = any(g is not None for g in (*grads_s[1:], *grads_t[1:]))
        with on_device(s.hidden):
            for sweep, hidden, weight in grad_sweeps(need_dh, need_weight):
                need = {}
                for suffix, grads in (("S", grads_s), ("T", grads_t)):
                    for key, g, owned in zip(("DH", "DW", "DB"), grads, (hidden, weight, weight)):
                        need[f"NEED_{key}_{suffix}"] = owned and g is not None
                pair_grad_kernel[grad_grid(sweep, s.n, s.vocab, tiles)](
                    *pointers,
                    self.lse_s,
                    self.lse_t,
                    rows.contiguous(),
                    *(dummy if g is None else g for g in (*grads_s, *grads_t)),
                    s.n,
                    s.vocab,
                    s.hidden.shape[1],
                    t.hidden.shape[1],
                    **scalars,
                    **_term_args(name, self.spec.hyper[name]),
                    skip_below=skip_below,
                    FILTER=skip_below > 0,
                    SWEEP=sweep,
                    SCALE_DA_S=s.hidden.dtype == torch.float16,
                    SCALE_DA_T=t.hidden.dtype == torch.float16,
                    GROUP_N=cfg.group_n,
                    **need,
                    **flags,
                    **common,
                )


def _heads(inputs: tuple, spec) -> tuple[Head, Head]:
    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias = inputs[:6]
    return (
        Head.of(s_hidden, s_weight, s_bias, spec.student_transform),
        Head.of(t_hidden, t_weight, t_bias, spec.teacher_transform),
    )


def _backward(
    state: _PairState,
    sums: Mapping[str, Tensor],
    upstream: Mapping[str, Tensor],
    need: tuple[bool, ...],
    keep_float16: bool = False,
) -> tuple[Tensor | None, ...]:
    """Gradients of the 6 head inputs (student then teacher), in their dtypes (see
    :func:`.launch.cast_grads` for ``keep_float16``)."""
    grads_s = grad_buffers(state.student, need[0:3])
    grads_t = grad_buffers(state.teacher, need[3:6])
    for name, g in upstream.items():
        rows = torch.stack((g.to(torch.float32), sums[name][1], sums[name][2]))
        state.add_grads(name, rows, grads_s, grads_t)
    return (
        *cast_grads(grads_s, state.student, keep_float16),
        *cast_grads(grads_t, state.teacher, keep_float16),
    )


class _PairTerms(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits, t_rows, spec
    ):
        inputs = (s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias)
        state = _PairState(*_heads(inputs, spec), spec)
        sums = {name: state.sums(name) for name in spec.names}
        ctx.save_for_backward(*inputs)
        ctx.sums, ctx.spec, ctx.moments = sums, spec, state.moments
        ctx.set_materialize_grads(False)
        return tuple(sums[name][0] for name in spec.names)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        spec, need = ctx.spec, tuple(ctx.needs_input_grad[:6])
        upstream = {n: g for n, g in zip(spec.names, grad_outputs) if g is not None}
        if not upstream or not any(need):
            return (None,) * 9
        state = _PairState(*_heads(ctx.saved_tensors, spec), spec, ctx.moments)
        return (*_backward(state, ctx.sums, upstream, need), None, None, None)


def pair_terms(inputs: tuple[Tensor | None, ...], spec) -> dict[str, Tensor]:
    """:func:`lmloss.stats.divergence.pair_terms_autograd` for a teacher head."""
    return dict(zip(spec.names, _PairTerms.apply(*inputs, spec)))


def eager_pair_loss(
    inputs: tuple[Tensor | None, ...], spec, block_loss, extra: Mapping[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`lmloss.stats.divergence.eager_pair_loss` for a teacher head (all rows form
    one block): the total, differentiable w.r.t. the heads and ``extra``, and the values."""
    heads = inputs[:6]
    need = tuple(t is not None and t.requires_grad for t in heads)
    detached = tuple(None if t is None else t.detach() for t in heads)
    state = _PairState(*_heads(detached, spec), spec)
    with torch.no_grad():
        sums = {name: state.sums(name) for name in spec.names}
    leaves = {name: sums[name][0].clone().requires_grad_() for name in spec.names}
    leaves.update({name: x.detach().requires_grad_() for name, x in extra.items()})
    with torch.enable_grad():
        loss = block_loss(leaves, slice(0, state.student.n))
        leaf_grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads_of = dict(zip(leaves, leaf_grads))
    tracked_extra = [x for x in extra.values() if x.requires_grad]
    extra_grads = tuple(
        torch.zeros_like(x) if grads_of[name] is None else grads_of[name].to(x.dtype)
        for name, x in extra.items()
        if x.requires_grad
    )
    values = {name: leaves[name].detach() for name in spec.names}
    total = loss.detach()
    if not any(need) and not tracked_extra:
        return total, values
    present, present_grads = [], []
    if any(need):
        upstream = {n: grads_of[n] for n in spec.names if grads_of[n] is not None}
        grads = _backward(state, sums, upstream, need, keep_float16=True)
        present = [t for t in heads if t is not None]
        present_grads = [g for t, g in zip(heads, grads) if t is not None]
    tracked = (*present, *tracked_extra)
    return WithPrecomputedGrads.apply(total, (*present_grads, *extra_grads), *tracked), values
