"""EMO: Earth Mover Distance Optimization, via its upper bound on frozen embeddings."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.spec import objective

Tensor = torch.Tensor

# The reference code adds this to the distance before dividing by it.
_DIVISION_GUARD = 1e-10


def emo_cost_table(embeddings: Tensor) -> Tensor:
    """The frozen cost embeddings ``ê_v = e_v / ‖e_v‖`` from a ``[V, D]`` table.

    EMO's reference code uses a detached copy of the LM-head weight taken at the start of
    fine-tuning; pass that copy here once and keep the result.
    """
    embeddings = _checks.require_floating("embeddings", embeddings)
    _checks.require_ndim("embeddings", embeddings, (2,))
    return torch.nn.functional.normalize(embeddings.detach(), dim=-1)


@objective(
    "emo",
    family="likelihood",
    paper="Ren et al. 2023, EMO: Earth Mover Distance Optimization, arXiv:2310.04691",
    stats=("logp", "expectation"),
)
def emo(logp: Tensor, expectation: Tensor, target_embedding: Tensor) -> Tensor:
    """``ℓ = ½·(ce + sg(ce / d)·d)`` with ``d = 1 − ⟨ê_y, Σ_v p_v ê_v⟩``.

    ``d`` is the upper bound of the earth mover distance between the one-hot target and
    the model distribution when moving mass from ``v`` to ``y`` costs ``1 − cos(e_v, e_y)``.
    ``sg`` is stop-gradient: the value equals ``ce``; the gradient is ``½∇ce`` plus ``∇d``
    rescaled to the size of ``ce``.

    Args:
        logp: log-probability of the target, shape ``S``.
        expectation: ``Σ_v p_v ê_v``, shape ``S + (D,)`` — the engine statistic
            ``expectation`` of the table of L2-normalized embeddings ê (see
            :func:`emo_cost_table`).
        target_embedding: ``ê_y``, shape ``S + (D,)``.

    Returns:
        The per-token loss, shape ``S``.

    References:
        arXiv:2310.04691; the loss composition (½, stop-gradient ratio, 1e-10 guard) is read
        from the authors' code, DRSY/EMO ``emo_patch.py`` / ``language_modeling/gpt2.py``.
    """
    ce = -logp
    distance = 1.0 - (target_embedding * expectation).sum(-1)
    scale = (ce / (distance + _DIVISION_GUARD)).detach()
    return 0.5 * (ce + scale * distance)
