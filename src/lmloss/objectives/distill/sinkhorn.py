"""Sinkhorn KD: entropic optimal transport between a batch of student and teacher predictions."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lmloss import _checks
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput
from lmloss.stats.divergence_terms import DIVERGENCES

Tensor = torch.Tensor


def sinkhorn_plan(cost: Tensor, weights: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Entropic OT plan between two copies of the marginal ``weights`` (sums to 1).

    Log-domain Sinkhorn: with potentials ``f, g`` and ``K = exp(-C/ε)``, alternately
    ``f = ε(log a - LSE_j((g_j - C_ij)/ε))`` and ``g = ε(log b - LSE_i((f_i - C_ij)/ε))``;
    the plan is ``P = exp((f_i + g_j - C_ij)/ε)``. Entries with zero weight get zero rows
    and columns. Differentiable through the unrolled iterations.
    """
    log_w = torch.where(weights > 0, weights.log(), cost.new_full((), -math.inf))
    f = torch.zeros_like(weights)
    g = torch.zeros_like(weights)
    for _ in range(iterations):
        f = epsilon * (log_w - torch.logsumexp((g[None, :] - cost) / epsilon, dim=1))
        f = torch.where(weights > 0, f, cost.new_full((), -math.inf))
        g = epsilon * (log_w - torch.logsumexp((f[:, None] - cost) / epsilon, dim=0))
        g = torch.where(weights > 0, g, cost.new_full((), -math.inf))
    return ((f[:, None] + g[None, :] - cost) / epsilon).exp()


@objective(
    "sinkhorn_kd",
    family="distill",
    paper="Cui et al. 2024, Sinkhorn Distance Minimization for Knowledge Distillation, "
    "arXiv:2402.17110",
    stats=("batch_cost",),
    aliases=("sinkd",),
)
def sinkhorn_kd(
    terms: Mapping[str, Tensor],
    mask: Tensor | None = None,
    *,
    epsilon: float = 0.1,
    iterations: int = 20,
    cost: str = "tvd",
) -> LossOutput:
    """Batch-wise Sinkhorn distance between the student's and the teacher's predictions.

    The ``n`` predictions of a batch (rows: examples, or tokens) form two empirical
    measures with uniform weights over the unmasked rows; the ``n × n`` ground cost
    ``C_ij = D(p_s^{(i)}, p_t^{(j)})`` compares student row ``i`` with teacher row ``j``
    (``D`` the divergence named by ``cost``, default the total variation ½‖·‖₁). The
    loss is the entropic OT cost

        L = Σ_ij P_ij C_ij,   P = argmin_{P ∈ U(a, a)} ⟨P, C⟩ - ε H(P),

    with ``P`` from ``iterations`` log-domain Sinkhorn steps (SinKD's batch-wise
    reformulation; ~20 iterations as in the catalog), differentiated through the steps.

    Args:
        terms: ``batch_cost``, the ``[n, n]`` cost matrix.
        mask: ``[n]`` (or any shape with ``n`` elements) 1 for the rows that take part.
        epsilon: ε > 0, entropic regularization (in units of the cost).
        iterations: Sinkhorn iterations ≥ 1.
        cost: the divergence used as ground cost (any token-level divergence name).

    Returns:
        :class:`~lmloss.output.LossOutput`; ``per_example`` is ``n Σ_j P_ij C_ij`` per row
        (its mean over unmasked rows is the loss); metric ``mean_cost``.

    References:
        arXiv:2402.17110 (abstract in ``seeds/``); the batch-wise B×B cost and entropic OT
        follow the catalog (marked "(check)"); the ground cost here is our choice.
    """
    _checks.require_positive("epsilon", epsilon)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer ≥ 1, got {iterations!r}")
    _checks.require_choice("cost", cost, DIVERGENCES)
    matrix = terms["batch_cost"]
    n = matrix.shape[0]
    _checks.require_shape("batch_cost", matrix, (n, n), "a square [n, n] matrix")
    keep = matrix.new_ones(n) if mask is None else mask.reshape(-1).to(matrix.dtype)
    _checks.require_shape("mask", keep, (n,), "the rows of batch_cost")
    count = keep.sum()
    if count == 0:
        zero = matrix.sum() * 0
        return LossOutput(loss=zero, per_example=matrix.sum(1) * 0, metrics={})
    # Masked rows and columns get zero weight; their costs are replaced so no NaN can leak.
    pair_keep = keep[:, None] * keep[None, :]
    safe = torch.where(pair_keep > 0, matrix, matrix.new_zeros(()))
    plan = sinkhorn_plan(safe, keep / count, epsilon, iterations)
    per_row = (plan * safe).sum(1)
    mean_cost = (safe * pair_keep).sum().detach() / count**2
    return LossOutput(
        loss=per_row.sum(), per_example=per_row * count, metrics={"mean_cost": mean_cost}
    )
