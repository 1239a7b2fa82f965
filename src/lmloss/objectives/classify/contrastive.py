"""Contrastive losses on similarity logits: InfoNCE, decoupled softmax (DEXML), Multi-Similarity."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.classify._inputs import binary_labels, class_logits, positives
from lmloss.objectives.numerics import masked_log1p_sum_exp, masked_logsumexp
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


def _mean_over_positives(per_class: Tensor, positive: Tensor) -> Tensor:
    """Row means of ``per_class`` over the positive classes (0 for a row without any)."""
    total = torch.where(positive, per_class, 0.0).sum(-1)
    return total / positive.sum(-1).clamp(min=1)


@objective(
    "infonce", family="classify", stats=(), paper="van den Oord et al. 2018, CPC, arXiv:1807.03748"
)
def infonce(logits: Tensor, labels: Tensor, *, temperature: float = 1.0) -> Tensor:
    """``ℓ = −log softmax(s/τ)_y`` over a row of similarities (one positive, the rest negatives).

    With multi-hot labels, the mean over the positives ``l`` of ``−log softmax(s/τ)_l`` —
    every other positive stays in the denominator (the multi-label softmax that DEXML
    contrasts with :func:`decoupled_softmax`).

    Args:
        logits: ``[N, C]`` similarities (query × candidates).
        labels: ``[N]`` index of the positive, or ``[N, C]`` 0/1 positives.
        temperature: τ > 0.

    Returns:
        ``[N]`` per-row losses (0 for a row without positives).

    References:
        arXiv:1807.03748, eq. (4) (recalled; it is cross-entropy over similarities).
    """
    logits = class_logits(logits)
    positive = positives(labels, logits)
    _checks.require_positive("temperature", temperature)
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    return _mean_over_positives(-log_p, positive)


@objective(
    "decoupled_softmax",
    family="classify",
    stats=(),
    paper="Gupta et al. 2024, Dual-Encoders for Extreme Multi-Label Classification, "
    "arXiv:2310.10636",
    aliases=("dexml",),
)
def decoupled_softmax(logits: Tensor, labels: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Multi-positive InfoNCE with the other positives removed from each denominator.

    ``ℓ = mean_{l∈P} −log(e^{s_l/τ} / (e^{s_l/τ} + Σ_{j∉P} e^{s_j/τ}))
       = mean_{l∈P} softplus(lse_{j∉P}(s_j/τ) − s_l/τ)``.
    One positive per row: identical to :func:`infonce`.

    Args:
        logits: ``[N, C]`` similarities.
        labels: ``[N]`` index of the positive, or ``[N, C]`` 0/1 positives.
        temperature: τ > 0.

    Returns:
        ``[N]`` per-row losses (0 for a row without positives).

    References:
        arXiv:2310.10636 (abstract in ``seeds/``); the formula is recalled from the paper
        (the authors' nilesh2797/dexml code was not available to read).
    """
    logits = class_logits(logits)
    positive = positives(labels, logits)
    _checks.require_positive("temperature", temperature)
    z = logits / temperature
    negatives = masked_logsumexp(z, ~positive)
    return _mean_over_positives(torch.nn.functional.softplus(negatives[:, None] - z), positive)


@objective(
    "multi_similarity",
    family="classify",
    stats=(),
    paper="Wang et al. 2019, Multi-Similarity Loss, arXiv:1904.06627",
    aliases=("ms_loss",),
)
def multi_similarity(
    logits: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    alpha: float = 2.0,
    beta: float = 40.0,
    lam: float = 0.5,
    epsilon: float = 0.1,
) -> Tensor:
    """Multi-Similarity loss of each anchor (row) after its pair mining.

    Mining keeps negatives with ``S_ik + ε > min_{j∈P} S_ij`` and positives with
    ``S_ij − ε < max_{k∈N} S_ik``; then
    ``ℓ_i = (1/α)·log(1 + Σ_{P̃} e^{−α(S_ij − λ)}) + (1/β)·log(1 + Σ_{Ñ} e^{β(S_ik − λ)})``.
    An anchor left without a mined positive or negative contributes 0 (as in the code).

    Args:
        logits: ``[N, M]`` similarities ``S`` (e.g. cosine similarities of anchors × batch).
        labels: ``[N, M]`` 0/1, 1 where the pair is positive.
        mask: optional ``[N, M]`` 0/1 of pairs to consider (e.g. without self-pairs).
        alpha, beta: positive and negative scales (> 0).
        lam: the similarity offset λ.
        epsilon: mining margin ε ≥ 0.

    Returns:
        ``[N]`` per-anchor losses.

    References:
        arXiv:1904.06627 (abstract in ``seeds/``), eqs. for mining and the loss recalled;
        defaults (scale_pos 2, scale_neg 40, thresh 0.5, margin 0.1) recalled from the
        authors' MalongTech/research-ms-loss code.
    """
    sim = class_logits(logits)
    positive = binary_labels(labels, sim)
    valid = torch.ones_like(positive) if mask is None else binary_labels(mask, sim, "mask")
    for name, value in (("alpha", alpha), ("beta", beta)):
        _checks.require_positive(name, value)
    _checks.require_in_range("epsilon", epsilon, 0.0, float("inf"))
    pos, neg = positive & valid, ~positive & valid
    detached = sim.detach()
    hardest_pos = detached.masked_fill(~pos, float("inf")).amin(-1, keepdim=True)
    hardest_neg = detached.masked_fill(~neg, float("-inf")).amax(-1, keepdim=True)
    mined_neg = neg & (detached + epsilon > hardest_pos)
    mined_pos = pos & (detached - epsilon < hardest_neg)
    pos_term = masked_log1p_sum_exp(-alpha * (sim - lam), mined_pos) / alpha
    neg_term = masked_log1p_sum_exp(beta * (sim - lam), mined_neg) / beta
    kept = mined_pos.any(-1) & mined_neg.any(-1)
    return torch.where(kept, pos_term + neg_term, 0.0)
