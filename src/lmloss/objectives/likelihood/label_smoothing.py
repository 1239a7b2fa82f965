"""Label smoothing (uniform over the vocabulary, the target included)."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective(
    "label_smoothing",
    family="likelihood",
    paper="Szegedy et al. 2016, arXiv:1512.00567",
    stats=("logp", "lse", "mean_logit"),
)
def label_smoothing(logp: Tensor, lse: Tensor, mean_logit: Tensor, *, eps: float = 0.1) -> Tensor:
    """Cross-entropy against ``(1−ε)·onehot(y) + ε/V``.

    ``ℓ = (1−ε)·(−log p_y) + ε·(lse − mean_v z_v)``, because
    ``−(1/V) Σ_v log p_v = lse − (1/V) Σ_v z_v``. So only three per-token statistics are
    needed, never the full distribution.

    Args:
        logp: log-probability of the target.
        lse: log-sum-exp of the logits.
        mean_logit: mean of the logits over the vocabulary.
        eps: smoothing mass ε ∈ [0, 1]; ``eps=0`` is ``ce``.

    Returns:
        The per-token loss.

    References:
        Szegedy et al., "Rethinking the Inception Architecture", arXiv:1512.00567. The form
        (uniform mass over all V classes, target included) is the one of
        ``torch.nn.functional.cross_entropy(label_smoothing=ε)`` and of Hugging Face's
        ``LabelSmoother`` used by TRL; the tests check both.
    """
    _checks.require_in_range("eps", eps, 0.0, 1.0)
    return (1.0 - eps) * (-logp) + eps * (lse - mean_logit)
