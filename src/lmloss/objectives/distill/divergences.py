"""Token-level divergence objectives: the mean over tokens of one divergence to the teacher.

Each objective receives ``terms``, the per-token values the engine computed (``terms[name]``
is ``Σ_v f(log p_s, log p_t)`` of the pair term of the same name in
:mod:`lmloss.stats.divergence_terms`, where the per-entry formula is defined once), plus
``terms["nll"]`` when ``hard_weight > 0``. Notation: ``p_s`` student, ``p_t`` teacher, both
``softmax(z / T)``; sums run over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lmloss.objectives.distill.finish import hard_mix, token_mean_output
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput
from lmloss.stats.divergence_terms import resolve_hyper

Tensor = torch.Tensor
Terms = Mapping[str, Tensor]


def divergence_mean(
    name: str,
    terms: Terms,
    mask: Tensor | None,
    hyper: Mapping[str, float],
    hard_weight: float,
    num_items: float | Tensor | None,
) -> LossOutput:
    """Shared body: validate the divergence's hyper-parameters, mix in CE, token mean."""
    resolve_hyper(name, hyper)
    divergence = terms[name]
    per_token = hard_mix(divergence, terms, hard_weight)
    metrics = {name: divergence, **({"nll": terms["nll"]} if hard_weight > 0 else {})}
    return token_mean_output(per_token, mask, num_items, metrics)


_ARGS = """
    Args:
        terms: per-token tensors from the engine, ``[N]`` or ``[B, T]``: ``terms["{name}"]``
            and, when ``hard_weight > 0``, ``terms["nll"]`` (``-log p_s(y)`` at T = 1).
        mask: 1 for trained tokens (shape of the terms); None trains every token.
{hyper}        hard_weight: h in ``(1 - h)·D + h·CE`` (standard KD mixing; 0: divergence only).
        num_items: divide the token sum by this count instead of the number of unmasked
            tokens (exact gradient accumulation across micro-batches and ranks).

    Returns:
        :class:`~lmloss.output.LossOutput`: the token-mean loss, per-sequence means
        (per-token values for ``[N]`` input), and the mean divergence as a metric.
"""


def _document(name: str, hyper: str = ""):
    def attach(fn):
        fn.__doc__ = fn.__doc__ + _ARGS.format(name=name, hyper=hyper)
        return fn

    return attach


@objective(
    "forward_kl",
    family="distill",
    paper="Hinton, Vinyals, Dean 2015, Distilling the Knowledge in a Neural Network, "
    "arXiv:1503.02531",
    stats=("forward_kl",),
    aliases=("kd",),
)
@_document("forward_kl")
def forward_kl(
    terms: Terms, mask: Tensor | None = None, *, hard_weight: float = 0.0, num_items=None
):
    """Forward KL, teacher first: ``D = KL(p_t ‖ p_s) = Σ p_t (log p_t - log p_s)``.

    Mass-covering. Equals TRL's ``generalized_jsd_loss`` at ``beta=0`` and Liger's JSD at
    ``beta=0``; source of the formula: the definition (``F.kl_div(log p_s, log p_t)``).
    """
    return divergence_mean("forward_kl", terms, mask, {}, hard_weight, num_items)


@objective(
    "reverse_kl",
    family="distill",
    paper="Gu et al. 2024, MiniLLM: Knowledge Distillation of Large Language Models, "
    "arXiv:2306.08543",
    stats=("reverse_kl",),
)
@_document("reverse_kl")
def reverse_kl(
    terms: Terms, mask: Tensor | None = None, *, hard_weight: float = 0.0, num_items=None
):
    """Reverse KL, student first: ``D = KL(p_s ‖ p_t) = Σ p_s (log p_s - log p_t)``.

    Mode-seeking. Equals TRL's ``generalized_jsd_loss`` at ``beta=1``.
    """
    return divergence_mean("reverse_kl", terms, mask, {}, hard_weight, num_items)


@objective(
    "jsd",
    trl="experimental GKDTrainer (generalized_jsd_loss, same beta; lmbda = 0 for offline data)",
    family="distill",
    paper="Agarwal et al. 2024, On-Policy Distillation of Language Models (GKD), arXiv:2306.13649",
    stats=("jsd",),
    aliases=("generalized_jsd", "gkd"),
)
@_document("jsd", "        beta: β ∈ [0, 1], the teacher's weight in the mixture.\n")
def jsd(
    terms: Terms,
    mask: Tensor | None = None,
    *,
    beta: float = 0.5,
    hard_weight: float = 0.0,
    num_items=None,
):
    """Generalized Jensen–Shannon divergence with mixture ``m = (1-β) p_s + β p_t``:

        JSD_β = β KL(p_t ‖ m) + (1-β) KL(p_s ‖ m),      0 < β < 1,

    and exactly ``KL(p_t ‖ p_s)`` at ``β = 0`` and ``KL(p_s ‖ p_t)`` at ``β = 1``. This is
    TRL's ``GKDTrainer.generalized_jsd_loss`` convention (Eq. 1 of the GKD paper with TRL's
    special-cased end points; the formula itself tends to 0 at both ends, so the loss is
    discontinuous at β ∈ {0, 1}). ``β = 0.5`` is the symmetric Jensen–Shannon divergence.
    """
    return divergence_mean("jsd", terms, mask, {"beta": beta}, hard_weight, num_items)


@objective(
    "tvd",
    family="distill",
    paper="Wen et al. 2023, f-Divergence Minimization for Sequence-Level KD, arXiv:2307.15190",
    stats=("tvd",),
    aliases=("total_variation",),
)
@_document("tvd")
def tvd(terms: Terms, mask: Tensor | None = None, *, hard_weight: float = 0.0, num_items=None):
    """Total variation distance ``D = ½ Σ |p_s - p_t|`` (in [0, 1], symmetric).

    Same normalization as Liger's ``LigerTVDLoss``.
    """
    return divergence_mean("tvd", terms, mask, {}, hard_weight, num_items)


@objective(
    "skew_kl",
    family="distill",
    paper="Ko et al. 2024, DistiLLM: Towards Streamlined Distillation for LLMs, arXiv:2402.03898",
    stats=("skew_kl",),
)
@_document("skew_kl", "        alpha: α ∈ [0, 1], the teacher's share of the skewed mixture.\n")
def skew_kl(
    terms: Terms,
    mask: Tensor | None = None,
    *,
    alpha: float = 0.1,
    hard_weight: float = 0.0,
    num_items=None,
):
    """α-skew KL: ``D = KL(p_t ‖ α p_t + (1-α) p_s)``.

    ``α = 0`` is the forward KL; larger α bounds the divergence (``≤ -log α``) and its
    gradient where the student assigns little mass. DistiLLM's default is α = 0.1.
    """
    return divergence_mean("skew_kl", terms, mask, {"alpha": alpha}, hard_weight, num_items)


@objective(
    "skew_reverse_kl",
    family="distill",
    paper="Ko et al. 2024, DistiLLM: Towards Streamlined Distillation for LLMs, arXiv:2402.03898",
    stats=("skew_reverse_kl",),
)
@_document(
    "skew_reverse_kl", "        alpha: α ∈ [0, 1], the student's share of the skewed mixture.\n"
)
def skew_reverse_kl(
    terms: Terms,
    mask: Tensor | None = None,
    *,
    alpha: float = 0.1,
    hard_weight: float = 0.0,
    num_items=None,
):
    """α-skew reverse KL: ``D = KL(p_s ‖ α p_s + (1-α) p_t)``; ``α = 0`` is the reverse KL."""
    return divergence_mean("skew_reverse_kl", terms, mask, {"alpha": alpha}, hard_weight, num_items)


@objective(
    "alpha_beta",
    family="distill",
    paper="Wang et al. 2025, ABKD: Pursuing a Proper Allocation of the Probability Mass in KD "
    "via α-β-Divergence, arXiv:2505.04560",
    stats=("alpha_beta",),
    aliases=("ab_divergence", "abkd"),
)
@_document(
    "alpha_beta",
    "        alpha, beta: α > 0, β > 0 (powers of the teacher and the student).\n",
)
def alpha_beta(
    terms: Terms,
    mask: Tensor | None = None,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    hard_weight: float = 0.0,
    num_items=None,
):
    """α-β divergence (Cichocki, Cruces, Amari 2011) with P = p_t (teacher), Q = p_s:

        D = -1/(αβ) Σ ( P^α Q^β - α/(α+β) P^(α+β) - β/(α+β) Q^(α+β) ).

    ``(α, β) → (1, 0)`` is the forward KL and ``(0, 1)`` the reverse KL (ABKD's
    interpolation); ``α = β = ½`` is ``2 Σ (√P - √Q)²``, four times the squared Hellinger
    distance. Restricted to α, β > 0 so every power of a probability stays ≤ 1.
    """
    hyper = {"alpha": alpha, "beta": beta}
    return divergence_mean("alpha_beta", terms, mask, hyper, hard_weight, num_items)


@objective(
    "hellinger",
    family="distill",
    paper="f-divergence (Csiszár 1967); for LMs Go et al. 2023, f-DPG, arXiv:2302.08215",
    stats=("hellinger",),
)
@_document("hellinger")
def hellinger(
    terms: Terms, mask: Tensor | None = None, *, hard_weight: float = 0.0, num_items=None
):
    """Squared Hellinger distance ``D = ½ Σ (√p_s - √p_t)² = 1 - Σ √(p_s p_t)`` (in [0, 1],
    symmetric); the f-divergence with ``f(u) = ½(√u - 1)²``."""
    return divergence_mean("hellinger", terms, mask, {}, hard_weight, num_items)


@objective(
    "chi2",
    family="distill",
    paper="f-divergence (Pearson χ²); for LMs Go et al. 2023, f-DPG, arXiv:2302.08215",
    stats=("chi2",),
    aliases=("chi_squared",),
)
@_document("chi2")
def chi2(terms: Terms, mask: Tensor | None = None, *, hard_weight: float = 0.0, num_items=None):
    """Pearson χ², teacher first: ``D = χ²(p_t ‖ p_s) = Σ (p_t - p_s)² / p_s``.

    Unbounded where the student gives a token far less mass than the teacher: the per-entry
    log-ratio ``log(p_t/p_s)`` is capped at 25 (the term at ``p_s e^50``), which leaves every
    realistic value exact and keeps the loss finite.
    """
    return divergence_mean("chi2", terms, mask, {}, hard_weight, num_items)
