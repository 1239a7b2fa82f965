"""HL-Gauss: regression as classification over a histogram of bins."""

from __future__ import annotations

import math

import torch

from lmloss import _checks
from lmloss.objectives.classify._inputs import class_logits
from lmloss.objectives.spec import objective

Tensor = torch.Tensor

# The paper's recommended σ, in bin widths.
SIGMA_PER_BIN = 0.75


def _bin_edges(num_bins: int, v_min: float, v_max: float, dtype: torch.dtype) -> Tensor:
    return torch.linspace(v_min, v_max, num_bins + 1, dtype=dtype)


def _check_layout(v_min: float, v_max: float, sigma: float | None) -> None:
    _checks.require_in_range("v_min", v_min, float("-inf"), float("inf"))
    _checks.require_in_range("v_max", v_max, float("-inf"), float("inf"))
    if not v_min < v_max:
        raise ValueError(f"v_min must be < v_max, got v_min={v_min}, v_max={v_max}")
    if sigma is not None:
        _checks.require_positive("sigma", sigma)


def hl_gauss_target(
    targets: Tensor, num_bins: int, v_min: float, v_max: float, sigma: float | None = None
) -> Tensor:
    """``[N, num_bins]`` bin probabilities of N(y, σ²) truncated to ``[v_min, v_max]``.

    ``p_i = (Φ(b_{i+1}) − Φ(b_i)) / (Φ(v_max) − Φ(v_min))`` with ``Φ`` the normal CDF at
    ``(·−y)/σ``, computed with ``erf``. Targets are clamped into the support first, so the
    normalizer never vanishes. ``sigma=None`` is 0.75 bin widths.
    """
    _check_layout(v_min, v_max, sigma)
    sigma = SIGMA_PER_BIN * (v_max - v_min) / num_bins if sigma is None else sigma
    y = targets.clamp(v_min, v_max)
    edges = _bin_edges(num_bins, v_min, v_max, targets.dtype)
    cdf = torch.erf((edges - y[:, None]) / (math.sqrt(2.0) * sigma))
    return (cdf[:, 1:] - cdf[:, :-1]) / (cdf[:, -1:] - cdf[:, :1])


def hl_gauss_value(logits: Tensor, v_min: float, v_max: float) -> Tensor:
    """The regression prediction ``Σ_i softmax(z)_i · centre_i`` of ``[N, bins]`` logits."""
    _check_layout(v_min, v_max, None)
    edges = _bin_edges(logits.shape[-1], v_min, v_max, logits.dtype)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return torch.softmax(logits, dim=-1) @ centres


@objective(
    "hl_gauss",
    family="classify",
    stats=(),
    paper="Farebrother et al. 2024, Stop Regressing, arXiv:2403.03950 (Imani & White 2018)",
)
def hl_gauss(
    logits: Tensor,
    labels: Tensor,
    *,
    v_min: float = 0.0,
    v_max: float = 1.0,
    sigma: float | None = None,
) -> Tensor:
    """Cross-entropy between ``softmax(logits)`` and the HL-Gauss histogram of the target.

    ``ℓ = −Σ_i p_i(y)·log softmax(z)_i`` with ``p(y)`` from :func:`hl_gauss_target`
    (bins: C equal-width bins on ``[v_min, v_max]``, C = ``logits.shape[1]``). Read the
    prediction back with :func:`hl_gauss_value`.

    Args:
        logits: ``[N, C]`` bin logits.
        labels: ``[N]`` real-valued regression targets.
        v_min, v_max: the support (v_min < v_max).
        sigma: σ > 0 of the Gaussian smoothing; default 0.75 bin widths.

    Returns:
        ``[N]`` per-example losses.

    References:
        arXiv:2403.03950, Appendix A (the erf-based transform), as reproduced in several
        public ports (e.g. mtweiden/parrl ``hlgaussloss.py``); σ = 0.75 bin widths is the
        paper's recommendation (recalled).
    """
    logits = class_logits(logits)
    targets = _checks.require_floating("labels", labels)
    _checks.require_shape("labels", targets, logits.shape[:1], "logits.shape[0]")
    if not bool(torch.isfinite(targets).all()):
        raise ValueError("labels (regression targets) must be finite")
    probs = hl_gauss_target(targets.to(logits.dtype), logits.shape[1], v_min, v_max, sigma)
    return -(probs * torch.log_softmax(logits, dim=-1)).sum(-1)
