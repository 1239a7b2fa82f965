"""Direct Coverage Optimization: cross-entropy limited in confidence for pass@N sampling."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.numerics import log1mexp
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective(
    "dco",
    family="likelihood",
    paper="Chen et al. 2025, Rethinking Fine-Tuning when Scaling Test-Time Compute, "
    "arXiv:2502.07154",
    aliases=("pass_at_n",),
)
def dco(logp: Tensor, *, n: float = 4.0) -> Tensor:
    """``ℓ = −log(1 − (1 − p)^N)``: the log-probability that N samples contain the target.

    Computed in log space as ``−log p − log[(1 − q^N)/(1 − q)]`` with ``q = 1 − p`` and
    ``(1 − q^N)/(1 − q) = expm1(N·log q)/expm1(log q)``. The first term is the
    cross-entropy, so ``n=1`` is ``ce`` exactly, and the second one is smooth in ``p``:
    ``log q`` is clamped to ``[−100, −tiny]``, which only changes values at ``p`` within
    ``e^−100`` of 1 or of 0, where that term's gradient vanishes anyway.

    Args:
        logp: log-probability of the target.
        n: the N of pass@N, ≥ 1 (real values allowed).

    Returns:
        The per-token loss.

    Differs from the paper: there ``p`` is the probability of the whole answer (pass@N of
    a sampled response), so the factor ``F(p)`` weighs a sequence; lmloss applies the
    formula per token with ``p`` the token's probability, which is what a per-token
    likelihood objective can express (and what the fused path computes in one pass). For
    the paper's sequence-level form, take the per-token ``logps`` summed over the answer
    and call ``dco`` on that one value per sequence (``likelihood_loss("dco",
    logps=answer_logps)`` with ``answer_logps`` shaped ``[B]``).

    References:
        arXiv:2502.07154 (abstract in ``seeds/``); the formula is the catalog's
        (``OBJECTIVES.md`` §1), recalled from the paper rather than read from its code.
    """
    _checks.require_in_range("n", n, 1.0, float("inf"))
    tiny = torch.finfo(logp.dtype).tiny
    log_q = log1mexp(logp.clamp(max=-tiny)).clamp(min=-100.0, max=-tiny)
    coverage_ratio = torch.expm1(n * log_q) / torch.expm1(log_q)
    return -logp - torch.log(coverage_ratio)
