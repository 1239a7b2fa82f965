"""EnsLoss-style random calibrated losses: a fresh convex, calibrated loss every call."""

from __future__ import annotations

import math

import torch

from lmloss.objectives.classify._inputs import binary_labels, binary_scores
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


def _check_range(name: str, bounds: tuple[float, float], positive: bool) -> tuple[float, float]:
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise TypeError(f"{name} must be a (low, high) pair, got {bounds!r}")
    low, high = (float(b) for b in bounds)
    if not low <= high or (positive and low <= 0):
        want = "0 < low ≤ high" if positive else "low ≤ high"
        raise ValueError(f"{name} must satisfy {want}, got {bounds!r}")
    return low, high


def sample_calibrated_derivative(
    shift: tuple[float, float] = (-0.5, 0.5),
    scale: tuple[float, float] = (0.5, 2.0),
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Draw ``(μ, s)``: the loss derivative ``φ'(m) = σ((m − μ)/s) − 1``.

    μ ~ U(shift), log s ~ U(log scale). Every draw is a legitimate surrogate: ``φ'`` is
    non-decreasing (φ convex) and ``φ'(0) = σ(−μ/s) − 1 < 0`` (classification-calibrated,
    Bartlett et al. 2006).
    """
    low, high = _check_range("shift", shift, positive=False)
    s_low, s_high = _check_range("scale", scale, positive=True)
    device = "cpu" if generator is None else generator.device  # two draws read as floats
    u = torch.rand(2, generator=generator, dtype=torch.float64, device=device)
    mu = low + (high - low) * float(u[0])
    s = math.exp(math.log(s_low) + (math.log(s_high) - math.log(s_low)) * float(u[1]))
    return mu, s


@objective(
    "ensloss",
    family="classify",
    stats=(),
    paper="Dai 2025, EnsLoss: Stochastic Calibrated Loss Ensembles, arXiv:2409.00908",
)
def ensloss(
    logits: Tensor,
    labels: Tensor,
    *,
    shift: tuple[float, float] = (-0.5, 0.5),
    scale: tuple[float, float] = (0.5, 2.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """``ℓ_i = φ(m_i)`` for margins ``m = ỹ·f``, ``ỹ = 2y − 1``, with φ drawn at random per call.

    φ is the antiderivative of a random calibrated loss-derivative
    (:func:`sample_calibrated_derivative`): ``φ(m) = s·softplus((μ − m)/s)``, a shifted,
    rescaled logistic loss (μ = 0, s = 1 is the logistic loss). Calling it once per batch
    trains with doubly stochastic gradients — random samples and random convex calibrated
    losses — which is the EnsLoss idea.

    Args:
        logits: ``[N]`` or ``[N, 1]`` binary scores f.
        labels: 0/1 labels shaped like the scores.
        shift: (low, high) range of μ.
        scale: (low, high) range of s, 0 < low.
        generator: torch random generator for reproducible draws.

    Returns:
        ``[N]`` per-example losses.

    References:
        arXiv:2409.00908 (abstract in ``seeds/``; the convexity-and-calibration conditions on
        the loss-derivative are from its introduction and Bartlett et al. 2006). The paper
        generates derivatives its own way (not read: the authors' statmlben/ensLoss code was
        not available); the logistic location–scale family here is this library's choice
        that satisfies the same conditions.
    """
    f = binary_scores(logits)
    y = binary_labels(labels, f)
    mu, s = sample_calibrated_derivative(shift, scale, generator)
    margins = torch.where(y, f, -f)
    return s * torch.nn.functional.softplus((mu - margins) / s)
