"""Token-level objectives: DPO with per-token rewards and a per-token KL(π_ref ‖ π_θ) term.

Both need, for every completion token, the KL divergence between the reference and the
policy next-token distributions, ``{chosen,rejected}_kl`` = Σ_v π_ref(v|·) log(π_ref(v|·)/π_θ(v|·))
— a statistic over the vocabulary of two models. The fused path computes it with
``lmloss.token_divergence("forward_kl", policy, teacher=reference)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmloss import _checks
from lmloss.objectives.preference.inputs import Completions, Pairs
from lmloss.objectives.preference.margin import check_beta
from lmloss.objectives.preference.metrics import mean_loss, reward_metrics
from lmloss.objectives.reduce import masked_sum
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor
PREF = "preference"
TDPO_PAPER = "Zeng et al. 2024 (TDPO), arXiv:2404.11999"


def _token_level_loss(
    pairs: Pairs,
    rewards: tuple[Tensor, Tensor],
    kls: tuple[Tensor, Tensor],
    beta: float,
    alpha: float,
    stop_gradient: bool,
) -> LossOutput:
    """``−log σ(β[(R_w − R_l) − α(KL_l − sg?(KL_w))])`` from per-sequence sums R and KL."""
    beta = check_beta(beta)
    _checks.require_in_range("alpha", alpha, 0.0, float("inf"))
    (chosen_reward, rejected_reward), (chosen_kl, rejected_kl) = rewards, kls
    anchor = chosen_kl.detach() if stop_gradient else chosen_kl
    logits = beta * ((chosen_reward - rejected_reward) - alpha * (rejected_kl - anchor))
    # the authors' reward for logging: β (log-ratio + sequential KL)
    metrics = reward_metrics(
        beta * (chosen_reward + chosen_kl),
        beta * (rejected_reward + rejected_kl),
        pairs.chosen.sequence_logp(),
        pairs.rejected.sequence_logp(),
    )
    return mean_loss(-F.logsigmoid(logits), metrics)


def _sequence_kl(completions: Completions, weights: Tensor | None = None) -> Tensor:
    kl = completions.stat("kl")
    return masked_sum(kl, completions.mask if weights is None else weights * completions.mask)


# "forward_kl": KL(teacher ‖ student) per token with teacher = reference, student = policy
TOKEN_KL = ("logp", "forward_kl")


@objective(
    "tdpo1",
    family=PREF,
    paper=TDPO_PAPER,
    stats=TOKEN_KL,
    defaults={"alpha": 1.0, "stop_gradient": False},
)
@objective(
    "tdpo2",
    family=PREF,
    paper=TDPO_PAPER,
    stats=TOKEN_KL,
    defaults={"alpha": 0.5, "stop_gradient": True},
)
def tdpo(
    pairs: Pairs, *, beta: float = 0.1, alpha: float = 0.5, stop_gradient: bool = True
) -> LossOutput:
    """Token-level DPO: ``−log σ(β[(Δ_w − Δ_l) − α(SeqKL(y_l) − sg(SeqKL(y_w)))])``.

    Δ = Σ_t log π_θ(y_t|·)/π_ref(y_t|·) (the sequence log-ratio) and
    SeqKL(y) = Σ_t KL(π_ref(·|x, y_<t) ‖ π_θ(·|x, y_<t)). TDPO1: α = 1, no stop-gradient;
    TDPO2 (the authors' default): α = 0.5 with the stop-gradient on the chosen KL. α = 0 is DPO.

    Args:
        pairs: needs ``chosen_kl`` / ``rejected_kl`` per token.
        alpha: weight α ≥ 0 of the sequential-KL difference.
        stop_gradient: detach SeqKL(y_w) (TDPO2).

    References:
        Zeng et al., "Token-level Direct Preference Optimization", arXiv:2404.11999 (TDPO1 and
        TDPO2 objectives); the authors' ``tdpo_loss`` (github.com/Vance0124/
        Token-level-Direct-Preference-Optimization).
    """
    rewards = (pairs.chosen.logratio(), pairs.rejected.logratio())
    kls = (_sequence_kl(pairs.chosen), _sequence_kl(pairs.rejected))
    return _token_level_loss(pairs, rewards, kls, beta, alpha, stop_gradient)


@objective(
    "sparsepo",
    family=PREF,
    paper="Christopoulou et al. 2024 (SparsePO), arXiv:2410.05102",
    stats=TOKEN_KL,
    optional_inputs=tuple(
        f"{side}_{mask}"
        for mask in ("reward_weights", "kl_weights")
        for side in ("chosen", "rejected")
    ),
)
def sparsepo(
    pairs: Pairs, *, beta: float = 0.1, alpha: float = 1.0, stop_gradient: bool = False
) -> LossOutput:
    """SparsePO: TDPO with token masks on the rewards (m_u) and on the KL terms (m_d).

    ``−log σ(β[Σ_t m_u r_{w,t} − Σ_t m_u r_{l,t} − α(Σ_t m_d KL_{l,t} − sg?(Σ_t m_d KL_{w,t}))])``
    with r_t = log π_θ(y_t|·)/π_ref(y_t|·) per token. The masks are inputs,
    ``{chosen,rejected}_reward_weights`` (m_u) and ``{chosen,rejected}_kl_weights`` (m_d),
    each ``[B, T]`` and non-negative, default all ones (then SparsePO is TDPO1). Pass the
    same tensor twice for the paper's common-mask variant. Masks derived from the reference
    model's activations, or learned by a small head on the policy's hidden states (the
    paper's two variants), are computed by the caller; learned masks receive gradients.

    lmloss's own reading (no authors' code to check against): the placement of the masks
    inside TDPO's sequence rewards and KL sums as written above, the ``stop_gradient`` on
    the chosen KL sum taken from TDPO2, and the default all-ones masks.

    References:
        Christopoulou et al., "SparsePO: Controlling Preference Alignment of LLMs via Sparse
        Token Masks", arXiv:2410.05102 (the SparsePO objective built on TDPO's).
    """
    rewards, kls = [], []
    for side in (pairs.chosen, pairs.rejected):
        ones = torch.ones_like(side.mask)
        reward_weights = side.stat_or("reward_weights", ones)
        kl_weights = side.stat_or("kl_weights", ones)
        for name, weights in (("reward_weights", reward_weights), ("kl_weights", kl_weights)):
            if bool((weights < 0).any()):
                raise ValueError(f"{side.prefix}{name} must be non-negative")
        rewards.append(masked_sum(side.token_logratios(), reward_weights * side.weights))
        kls.append(_sequence_kl(side, kl_weights))
    return _token_level_loss(pairs, tuple(rewards), tuple(kls), beta, alpha, stop_gradient)
