"""The DPO margin, shared by every objective built on it, with the f-DPO divergence plug-in.

DPO's implicit reward of a completion is β·log(π_θ(y)/π_ref(y)) and its margin is the
difference between the chosen and the rejected one. f-DPO (Wang et al. 2023, "Beyond
Reverse KL", arXiv:2309.16240) replaces the reverse-KL regularizer by an f-divergence; the
implicit reward becomes β·f′(u) with u = π_θ(y)/π_ref(y) (up to a β·log Z(x) term that
cancels in the chosen − rejected difference, which is why the plug-in applies exactly to
objectives built on that difference):

============== ============================= =============================================
divergence     f′(u)                         note
============== ============================= =============================================
reverse_kl     log u (+1)                    DPO
forward_kl     1 − 1/u                       (−1/u + const)
js             log(2u / (1 + u))             = log 2 + log σ(log u)
alpha          (1 − u^(−α)) / α, 0 < α < 1   α → 0: reverse KL; α = 1: forward KL
============== ============================= =============================================

Additive constants cancel in the difference, except for the objectives that average the
scores per token (IPO, LN-DPO): there the forms above, which are TRL 1.16's, are the spec.
TRL's ``f_alpha_divergence_coef`` is ``1 − alpha`` in our (the paper's) parameterization.
Exponents are clamped at ``MAX_EXPONENT`` so exp never overflows float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmloss import _checks
from lmloss.objectives.numerics import MAX_EXPONENT
from lmloss.objectives.preference.inputs import Completions, Pairs

Tensor = torch.Tensor


_SCORES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "reverse_kl": lambda logratio, alpha: logratio,
    "forward_kl": lambda logratio, alpha: -torch.expm1(-logratio.clamp(min=-MAX_EXPONENT)),
    "js": lambda logratio, alpha: math.log(2.0) + F.logsigmoid(logratio),
    "alpha": lambda logratio, alpha: (
        -torch.expm1((-alpha * logratio).clamp(max=MAX_EXPONENT)) / alpha
    ),
}
# the f-divergences of f-DPO (not the distillation divergences of lmloss.stats)
MARGIN_DIVERGENCES = tuple(_SCORES)


@dataclass(frozen=True)
class FDivergence:
    """The f-DPO regularizer every margin-based objective takes; the registry flattens its
    fields into the objective's hyper-parameters (``divergence=``, ``alpha=``)."""

    divergence: str = "reverse_kl"
    alpha: float = 0.5


REVERSE_KL = FDivergence()


def check_beta(beta: float) -> float:
    return _checks.require_positive("beta", beta)


def check_label_noise(eps: float, *, allow_zero: bool = True) -> float:
    """A label-noise rate ε in [0, 0.5) (or (0, 0.5) when it enters a log)."""
    return _checks.require_in_range("eps", eps, 0.0, 0.5, low_open=not allow_zero, high_open=True)


def implicit_score(logratio: Tensor, divergence: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    """f′(u) at u = π_θ(y)/π_ref(y), given ``logratio`` = log u, for the chosen f-divergence."""
    _checks.require_choice("divergence", divergence, MARGIN_DIVERGENCES)
    if divergence == "alpha":
        _checks.require_in_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    return _SCORES[divergence](logratio, alpha)


def completion_score(
    completions: Completions, divergence: str, alpha: float, *, per_token: bool = False
) -> Tensor:
    """f′(u) of each completion; divided by its length when ``per_token`` (IPO, LN-DPO)."""
    score = implicit_score(completions.logratio(), divergence, alpha)
    return score / completions.length() if per_token else score


def dpo_margin(
    pairs: Pairs, divergence: str = "reverse_kl", alpha: float = 0.5, *, per_token: bool = False
) -> Tensor:
    """h = f′(u_w) − f′(u_l) per pair (the log-ratio difference for reverse KL), ``[B]``."""
    chosen = completion_score(pairs.chosen, divergence, alpha, per_token=per_token)
    rejected = completion_score(pairs.rejected, divergence, alpha, per_token=per_token)
    return chosen - rejected


def soft_label_loss(logits: Tensor, target: Tensor | float) -> Tensor:
    """Binary cross-entropy of σ(logits) against a soft label p: −p log σ(x) − (1−p) log σ(−x)."""
    return -target * F.logsigmoid(logits) - (1 - target) * F.logsigmoid(-logits)
