"""Two models on the Triton kernels: per-token divergence terms between a student head
and a teacher head, same contracts as :mod:`lmloss.stats.divergence`.

* :func:`pair_terms` — differentiable per-token sums; the backward recomputes the tiles.
* :func:`eager_pair_loss` — a loss summing a function of those sums over tokens: the
  upstream gradients follow from the sums right away, so the gradient kernel runs inside
  the forward and ``backward`` only scales the stored gradients.

Each model's log-sum-exp comes from :func:`.single.head_moments`; then one sweep per term
gives ``Σ f``, ``G_s``, ``G_t`` (:mod:`.pair_kernels`). Several terms at once cost one sweep
(and one gradient sweep) each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import triton

from lmloss.stats.schedule import WithPrecomputedGrads
from lmloss.stats.triton.config import grad_filter
from lmloss.stats.triton.launch import (
    Head,
    cast_grads,
    grad_buffers,
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
    pair_sums_kernel,
)
from lmloss.stats.triton.single import head_moments

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


def _no_targets(head: Head) -> Tensor:
    return torch.full((head.n,), -1, dtype=torch.long, device=head.hidden.device)


class _PairState:
    """Both heads and their log-sum-exps: what the sums and gradient sweeps share."""

    def __init__(self, student: Head, teacher: Head, spec):
        self.student, self.teacher, self.spec = student, teacher, spec
        self.lse_s = head_moments(student, _no_targets(student)).lse
        self.lse_t = head_moments(teacher, _no_targets(teacher)).lse

    def sums(self, name: str) -> Tensor:
        """``[3, N]``: ``Σ f``, ``G_s``, ``G_t`` of term ``name`` per token."""
        cfg, common = settings(self.student.hidden.dtype, self.teacher.hidden.dtype)
        s, t = self.student, self.teacher
        n_blocks, splits, per_split = vocab_split(s.n, s.vocab, cfg)
        out = s.hidden.new_empty((3, splits, s.n), dtype=torch.float32)
        pointers, scalars, flags = _head_args(s, t)
        pair_sums_kernel[(n_blocks, splits)](
            *pointers,
            self.lse_s,
            self.lse_t,
            out,
            s.n,
            s.vocab,
            s.hidden.shape[1],
            t.hidden.shape[1],
            per_split,
            **scalars,
            **_term_args(name, self.spec.hyper[name]),
            **flags,
            **common,
        )
        return out.sum(1)

    def add_grads(self, name: str, rows: Tensor, grads_s: tuple, grads_t: tuple) -> None:
        """Accumulate the gradients for ``rows = [g, G_s, G_t]`` (``[3, N]``) into the
        float32 buffers ``grads_s``/``grads_t`` (hidden, weight, bias; None where unneeded)."""
        cfg, common = settings(self.student.hidden.dtype, self.teacher.hidden.dtype)
        s, t = self.student, self.teacher
        pointers, scalars, flags = _head_args(s, t)
        skip_below = grad_filter()
        dummy = self.lse_s
        need = {}
        for suffix, grads in (("S", grads_s), ("T", grads_t)):
            for key, g in zip(("DH", "DW", "DB"), grads):
                need[f"NEED_{key}_{suffix}"] = g is not None
        grid = (triton.cdiv(s.n, cfg.block_n) * triton.cdiv(s.vocab, cfg.block_v),)
        pair_grad_kernel[grid](
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
) -> tuple[Tensor | None, ...]:
    """Gradients of the 6 head inputs (student then teacher), in their dtypes."""
    grads_s = grad_buffers(state.student, need[0:3])
    grads_t = grad_buffers(state.teacher, need[3:6])
    for name, g in upstream.items():
        rows = torch.stack((g.to(torch.float32), sums[name][1], sums[name][2]))
        state.add_grads(name, rows, grads_s, grads_t)
    return (*cast_grads(grads_s, state.student), *cast_grads(grads_t, state.teacher))


class _PairTerms(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits, t_rows, spec
    ):
        inputs = (s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias)
        state = _PairState(*_heads(inputs, spec), spec)
        sums = {name: state.sums(name) for name in spec.names}
        ctx.save_for_backward(*inputs)
        ctx.sums, ctx.spec = sums, spec
        ctx.set_materialize_grads(False)
        return tuple(sums[name][0] for name in spec.names)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        spec, need = ctx.spec, tuple(ctx.needs_input_grad[:6])
        upstream = {n: g for n, g in zip(spec.names, grad_outputs) if g is not None}
        if not upstream or not any(need):
            return (None,) * 9
        state = _PairState(*_heads(ctx.saved_tensors, spec), spec)
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
        grads = _backward(state, sums, upstream, need)
        present = [t for t in heads if t is not None]
        present_grads = [g for t, g in zip(heads, grads) if t is not None]
    tracked = (*present, *tracked_extra)
    return WithPrecomputedGrads.apply(total, (*present_grads, *extra_grads), *tracked), values
