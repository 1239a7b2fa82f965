"""Bradley–Terry pairwise loss: the objective of reward models trained on preference pairs."""

from __future__ import annotations

import torch

from lmloss import _checks
from lmloss.objectives.classify._inputs import class_labels, scores
from lmloss.objectives.spec import objective

Tensor = torch.Tensor


@objective(
    "bradley_terry",
    family="classify",
    stats=(),
    paper="Bradley & Terry 1952, Biometrika 39(3/4); reward models: Ouyang et al. 2022, "
    "arXiv:2203.02155; margin: Touvron et al. 2023 (Llama 2), arXiv:2307.09288; centering: "
    "Eisenstein et al. 2023, arXiv:2312.09244",
    aliases=("bt",),
    trl="RewardTrainer (its loss, with center_rewards_coefficient and the margin column)",
)
def bradley_terry(
    logits: Tensor,
    labels: Tensor,
    margin: Tensor | None = None,
    *,
    center_rewards_coefficient: float = 0.0,
) -> Tensor:
    """``ℓ = −log σ(r_w − r_l − m) + c · (r_w + r_l)²`` per pair.

    ``r_w`` and ``r_l`` are the scalar scores of the preferred and the other completion,
    ``m`` an optional per-pair margin (Llama 2's graded preferences: a larger required gap
    for a clearer preference) and ``c`` the centering coefficient, which pulls the sum of a
    pair's scores towards 0 so that rewards stay zero-centred (Eisenstein et al. 2023; the
    mean over the batch of these terms is TRL's ``center_rewards_coefficient`` penalty).

    Args:
        logits: ``[N, 2]`` scores of the two completions of each pair.
        labels: ``[N]`` the preferred column of each row (0 or 1); a trainer that stacks
            the chosen completion first passes zeros.
        margin: optional ``[N]`` required score gap.
        center_rewards_coefficient: ``c ≥ 0``.

    Returns:
        ``[N]`` per-pair losses.

    Example:
        >>> import lmloss
        >>> out = lmloss.classification_loss(
        ...     "bradley_terry", logits=torch.tensor([[1.0, 0.0]]), labels=torch.tensor([0]))
        >>> round(float(out.loss), 4)  # -log sigmoid(1)
        0.3133
    """
    values = scores(logits, ndims=(2,))
    if values.shape[1] != 2:
        raise ValueError(
            f"logits of bradley_terry must be [N, 2] (the scores of a pair), got "
            f"{tuple(values.shape)}"
        )
    preferred = class_labels(labels, values)
    coefficient = _checks.require_finite("center_rewards_coefficient", center_rewards_coefficient)
    if coefficient < 0:
        raise ValueError(f"center_rewards_coefficient must be >= 0, got {coefficient}")
    winner = values.gather(1, preferred[:, None])[:, 0]
    loser = values.gather(1, (1 - preferred)[:, None])[:, 0]
    gap = winner - loser
    if margin is not None:
        margin = _checks.require_floating("margin", margin)
        _checks.require_shape("margin", margin, gap.shape, "logits.shape[0]")
        gap = gap - margin
    return torch.nn.functional.softplus(-gap) + coefficient * (winner + loser) ** 2
