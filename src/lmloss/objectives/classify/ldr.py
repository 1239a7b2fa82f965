"""Label-distributionally robust losses: LDR-KL and its instance-adaptive version ALDR-KL."""

from __future__ import annotations

import math

import torch

from lmloss import _checks
from lmloss.objectives.classify._inputs import class_labels, class_logits
from lmloss.objectives.spec import objective

Tensor = torch.Tensor

PAPER = "Zhu, Ying, Yang 2023, Label Distributionally Robust Losses, arXiv:2112.14869"


def margin_differences(logits: Tensor, labels: Tensor, margin: float) -> Tensor:
    """``d_k = c·1[k ≠ y] + z_k − z_y``: what the adversarial label distribution can gain."""
    target = logits.gather(1, labels[:, None])
    off_target = torch.ones_like(logits).scatter_(1, labels[:, None], 0.0)
    return margin * off_target + logits - target


def kl_robust_value(d: Tensor, lam: Tensor | float) -> Tensor:
    """``max_{p∈Δ} Σ p_k d_k − λ·KL(p ‖ 1/C) = λ·log((1/C) Σ_k exp(d_k/λ))``."""
    lam = torch.as_tensor(lam, dtype=d.dtype, device=d.device)
    if lam.dim() == 1:
        lam = lam[:, None]
    return lam.squeeze(-1) * (torch.logsumexp(d / lam, dim=-1) - math.log(d.shape[-1]))


@objective("ldr_kl", family="classify", stats=(), paper=PAPER)
def ldr_kl(logits: Tensor, labels: Tensor, *, margin: float = 1.0, lam: float = 1.0) -> Tensor:
    """``ℓ = λ·log((1/C) Σ_k exp((c·1[k≠y] + z_k − z_y)/λ))``.

    The worst case, over label distributions p KL-close to uniform, of the expected margin
    violation. With ``margin=0`` it is ``λ·CE(z/λ, y) − λ·log C``: temperature-scaled
    cross-entropy; λ → 0 gives the Crammer–Singer hinge.

    Args:
        logits: ``[N, C]`` scores.
        labels: ``[N]`` class indices.
        margin: c ≥ 0.
        lam: λ > 0, the strength of the KL regularization (the temperature).

    Returns:
        ``[N]`` per-example losses.

    References:
        arXiv:2112.14869; the form (mean over classes inside the log, additive margin on the
        non-target classes) is read from the authors' ``LDRLoss_V1`` code. That code also
        rescales the logits (softplus, then division by their mean) before the loss; this
        function leaves the logits as given.
    """
    logits = class_logits(logits)
    labels = class_labels(labels, logits)
    _checks.require_in_range("margin", margin, 0.0, float("inf"))
    _checks.require_positive("lam", lam)
    return kl_robust_value(margin_differences(logits, labels, margin), lam)


@objective("aldr_kl", family="classify", stats=(), paper=PAPER, aliases=("adaptive_ldr",))
def aldr_kl(
    logits: Tensor,
    labels: Tensor,
    *,
    margin: float = 1.0,
    lam: float = 1.0,
    alpha: float = 2.0,
    iterations: int = 5,
) -> Tensor:
    """LDR-KL with a per-example temperature λ_i adapted to how uncertain the example is.

    ``ℓ_i = max_λ [λ·log((1/C) Σ_k e^{d_k/λ}) − (α log C/(2λ₀))·(λ − λ₀)²]``. Its
    stationarity condition is ``λ = λ₀·(1 − KL(p*_λ ‖ 1/C)/(α log C))`` with
    ``p*_λ = softmax(d/λ)``, solved by ``iterations`` fixed-point steps from λ₀ (without
    gradient; a few steps converge). At the fixed point, the gradient with λ held constant
    is the exact gradient of the max (envelope theorem). Confident examples (p* far from
    uniform) get a smaller λ.

    Args:
        logits: ``[N, C]`` scores.
        labels: ``[N]`` class indices.
        margin: c ≥ 0.
        lam: λ₀ > 0, the reference temperature.
        alpha: α > 1 (keeps λ ≥ λ₀(1 − 1/α) > 0).
        iterations: fixed-point steps ≥ 0; 0 is ``ldr_kl``, 1 is one step of the
            authors' update.

    Returns:
        ``[N]`` per-example losses.

    References:
        arXiv:2112.14869; the λ update and the penalty are read from the authors'
        ``ALDRLoss_V1`` code, which keeps one λ per training example across epochs and takes
        one step per visit — a stateless loss starts from λ₀ every call and iterates. The
        code computes p from the logits without the margin; here p is the exact inner
        maximizer ``softmax(d/λ)``, margin included.
    """
    logits = class_logits(logits)
    labels = class_labels(labels, logits)
    _checks.require_in_range("margin", margin, 0.0, float("inf"))
    _checks.require_positive("lam", lam)
    _checks.require_in_range("alpha", alpha, 1.0, float("inf"), low_open=True)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be an integer ≥ 0, got {iterations!r}")
    d = margin_differences(logits, labels, margin)
    log_classes = math.log(d.shape[-1])
    lam_i = d.new_full(d.shape[:1], float(lam))
    with torch.no_grad():
        for _ in range(iterations):
            log_p = torch.log_softmax(d / lam_i[:, None], dim=-1)
            kl_to_uniform = (log_p.exp() * log_p).sum(-1) + log_classes
            lam_i = lam * (1.0 - kl_to_uniform / (alpha * log_classes))
    penalty = alpha * log_classes / (2.0 * lam) * (lam_i - lam).square()
    return kl_robust_value(d, lam_i) - penalty
