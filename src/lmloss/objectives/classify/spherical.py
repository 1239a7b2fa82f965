"""The spherical Z-loss: a shift- and scale-invariant loss on standardized logits."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.classify._inputs import class_labels, class_logits
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


def standardize(logits: Tensor) -> Tensor:
    """``(o − mean o)/std o`` over the classes (population std, never divided by 0)."""
    centered = logits - logits.mean(-1, keepdim=True)
    variance = centered.square().mean(-1, keepdim=True)
    # sqrt(var + ε²): finite value and gradient for a constant row, where var = 0.
    return centered / torch.sqrt(variance + torch.finfo(logits.dtype).eps ** 2)


@objective(
    "spherical_z",
    family="classify",
    stats=(),
    paper="de Brébisson & Vincent 2016, The Z-loss, arXiv:1604.08859",
)
def spherical_z(logits: Tensor, labels: Tensor, *, a: float = 1.0, b: float = 1.0) -> Tensor:
    """``ℓ = softplus(a·(b − z_y)) / a`` with ``z = (o − μ(o))/σ(o)`` the standardized logits.

    Invariant to adding a constant to, or rescaling, all logits of a row; it depends on the
    logits only through their mean, variance and the target's value — the "spherical family"
    property that allows output-size-independent training.

    Args:
        logits: ``[N, C]`` scores.
        labels: ``[N]`` class indices in ``[0, C)``.
        a: sharpness a > 0.
        b: offset b (the standardized score beyond which the loss flattens).

    Returns:
        ``[N]`` per-example losses.

    References:
        arXiv:1604.08859 (abstract in ``seeds/``). The formula is the catalog's
        (``OBJECTIVES.md`` §5), recalled rather than read from the paper; the defaults
        a = b = 1 are this library's, not the paper's tuned values.
    """
    logits = class_logits(logits)
    labels = class_labels(labels, logits)
    _checks.require_positive("a", a)
    _checks.require_in_range("b", b, float("-inf"), float("inf"))
    z_target = standardize(logits).gather(1, labels[:, None]).squeeze(1)
    return torch.nn.functional.softplus(a * (b - z_target)) / a
