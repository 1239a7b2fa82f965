"""Pairwise objectives that are a function of the DPO margin h = f′(u_w) − f′(u_l).

All of them take ``divergence=`` / ``alpha=`` (see :mod:`.margin`): with the default reverse
KL, h = log π_θ(y_w)/π_ref(y_w) − log π_θ(y_l)/π_ref(y_l). Sequence log-probs are token sums
except where the paper averages per token (IPO, LN-DPO). The per-example loss is per pair;
the loss is its batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmloss import _checks
from lmloss.objectives.numerics import MAX_EXPONENT
from lmloss.objectives.preference.inputs import Pairs
from lmloss.objectives.preference.margin import (
    REVERSE_KL,
    FDivergence,
    check_beta,
    check_label_noise,
    dpo_margin,
    soft_label_loss,
)
from lmloss.objectives.preference.metrics import dpo_reward_metrics, mean_loss
from lmloss.objectives.spec import objective
from lmloss.output import LossOutput

Tensor = torch.Tensor
PREF = "preference"


def _margin_logits(pairs: Pairs, beta: float, regularizer: FDivergence, **kw) -> Tensor:
    """β·h, checking β."""
    return check_beta(beta) * dpo_margin(pairs, regularizer.divergence, regularizer.alpha, **kw)


@objective(
    "dpo",
    trl='DPOTrainer(loss_type="sigmoid")',
    family=PREF,
    paper="Rafailov et al. 2023, arXiv:2305.18290",
)
@objective(
    "rso_sigmoid",
    family=PREF,
    paper="Liu et al. 2023 (RSO, sigmoid-norm), arXiv:2309.06657",
)
def dpo(pairs: Pairs, *, beta: float = 0.1, regularizer: FDivergence = REVERSE_KL) -> LossOutput:
    """Direct Preference Optimization: ``−log σ(β h)``.

    ``rso_sigmoid`` is the same loss (RSO's "sigmoid-norm"); RSO's point is that the
    reference is the SFT policy and the pairs are drawn by statistical rejection sampling,
    both of which happen outside the loss.

    Args:
        pairs: chosen/rejected completions with reference log-probs.
        beta: KL strength β > 0.
        divergence, alpha: the f-DPO regularizer (:mod:`.margin`); reverse KL is DPO.

    Returns:
        LossOutput with one loss per pair and the reward metrics.

    References:
        Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290, Eq. 7.
        Liu et al., "Statistical Rejection Sampling Improves Preference Optimization",
        arXiv:2309.06657. Wang et al., "Beyond Reverse KL" (f-DPO), arXiv:2309.16240.
        Formula as in TRL 1.16 ``DPOTrainer`` ``loss_type="sigmoid"``.
    """
    logits = _margin_logits(pairs, beta, regularizer)
    return mean_loss(-F.logsigmoid(logits), dpo_reward_metrics(pairs, beta))


@objective("cdpo", family=PREF, paper="Mitchell 2023, 'A note on DPO with noisy preferences'")
def cdpo(
    pairs: Pairs,
    *,
    beta: float = 0.1,
    eps: float = 0.1,
    regularizer: FDivergence = REVERSE_KL,
) -> LossOutput:
    """Conservative DPO (label smoothing): ``−(1−ε) log σ(βh) − ε log σ(−βh)``.

    The label is flipped with probability ε; the loss is the expected DPO loss under that
    noise. ε = 0 is DPO.

    Args:
        eps: label-noise rate ε in [0, 0.5).

    References:
        E. Mitchell, "A note on DPO with noisy preferences & relationship to IPO" (2023).
        Same form as TRL's former ``label_smoothing`` with ``loss_type="sigmoid"``.
    """
    eps = check_label_noise(eps)
    logits = _margin_logits(pairs, beta, regularizer)
    return mean_loss(soft_label_loss(logits, 1.0 - eps), dpo_reward_metrics(pairs, beta))


@objective(
    "rdpo",
    trl='DPOTrainer(loss_type="robust")',
    family=PREF,
    paper="Chowdhury et al. 2024, arXiv:2403.00409",
)
def rdpo(
    pairs: Pairs,
    *,
    beta: float = 0.1,
    eps: float = 0.1,
    regularizer: FDivergence = REVERSE_KL,
) -> LossOutput:
    """Provably robust DPO: ``[(1−ε) ℓ(βh) − ε ℓ(−βh)] / (1 − 2ε)``, ``ℓ(x) = −log σ(x)``.

    An unbiased estimate of the clean DPO loss when labels flip with probability ε.

    Args:
        eps: label-flip rate ε in [0, 0.5).

    References:
        Chowdhury et al., "Provably Robust DPO", arXiv:2403.00409.
        TRL 1.16 ``loss_type="robust"`` (``label_smoothing`` = ε).
    """
    eps = check_label_noise(eps)
    logits = _margin_logits(pairs, beta, regularizer)
    clean, flipped = -F.logsigmoid(logits), -F.logsigmoid(-logits)
    per_pair = ((1 - eps) * clean - eps * flipped) / (1 - 2 * eps)
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "ipo",
    trl='DPOTrainer(loss_type="ipo")',
    family=PREF,
    paper="Azar et al. 2023, arXiv:2310.12036",
)
def ipo(pairs: Pairs, *, beta: float = 0.1, regularizer: FDivergence = REVERSE_KL) -> LossOutput:
    """Identity Preference Optimization: ``(h̄ − 1/(2β))²`` with per-token-averaged scores.

    h̄ = f′(u_w)/|y_w| − f′(u_l)/|y_l| (log-ratios averaged over completion tokens, the
    normalization the IPO authors confirmed to TRL). β is IPO's τ.

    References:
        Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
        Preferences", arXiv:2310.12036, Eq. 17. TRL 1.16 ``loss_type="ipo"``.
    """
    margin = dpo_margin(pairs, regularizer.divergence, regularizer.alpha, per_token=True)
    per_pair = (margin - 1.0 / (2.0 * check_beta(beta))) ** 2
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "hinge",
    trl='DPOTrainer(loss_type="hinge")',
    family=PREF,
    paper="Zhao et al. 2023 (SLiC-HF), arXiv:2305.10425",
)
@objective("rso_hinge", family=PREF, paper="Liu et al. 2023 (RSO, hinge-norm), arXiv:2309.06657")
def hinge(pairs: Pairs, *, beta: float = 0.1, regularizer: FDivergence = REVERSE_KL) -> LossOutput:
    """Hinge loss on the DPO margin (SLiC with a reference; RSO's hinge-norm): ``max(0, 1 − βh)``.

    References:
        Zhao et al., "SLiC-HF", arXiv:2305.10425; Liu et al. (RSO), arXiv:2309.06657.
        TRL 1.16 ``loss_type="hinge"``.
    """
    logits = _margin_logits(pairs, beta, regularizer)
    return mean_loss(torch.relu(1.0 - logits), dpo_reward_metrics(pairs, beta))


@objective(
    "rpo",
    trl='DPOTrainer(loss_type=["sigmoid", "sft"])',
    family=PREF,
    paper="Pang et al. 2024 (Iterative RPO), arXiv:2404.19733",
)
def rpo(
    pairs: Pairs,
    *,
    beta: float = 0.1,
    nll_weight: float = 1.0,
    regularizer: FDivergence = REVERSE_KL,
) -> LossOutput:
    """DPO + NLL of the chosen completion (Pang et al.; TRL's ``rpo_alpha``).

    ``−log σ(βh) + η · (−(1/|y_w|) Σ_t log π_θ(y_w,t | ...))``; η = 0 is DPO.

    Not to be confused with ``rpo_liu`` (Liu et al. 2024, an SFT regularizer scaled by β on
    the summed log-prob). TRL averages the NLL over all chosen tokens of the batch; here it
    is averaged per pair (the same when chosen lengths are equal), so the loss stays a mean
    of per-pair terms.

    Args:
        nll_weight: η ≥ 0 (the paper's α, TRL's ``rpo_alpha``).

    References:
        Pang et al., "Iterative Reasoning Preference Optimization", arXiv:2404.19733.
        TRL 1.16 ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, η]``.
    """
    _checks.require_in_range("nll_weight", nll_weight, 0.0, float("inf"))
    logits = _margin_logits(pairs, beta, regularizer)
    per_pair = -F.logsigmoid(logits) + nll_weight * pairs.chosen.nll()
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective("rpo_liu", family=PREF, paper="Liu et al. 2024, arXiv:2405.16436")
def rpo_liu(
    pairs: Pairs,
    *,
    beta: float = 0.1,
    eta: float = 1.0,
    regularizer: FDivergence = REVERSE_KL,
    sft_mean: bool = False,
) -> LossOutput:
    """Regularized Preference Optimization ("your SFT loss is an adversarial regularizer").

    ``−log σ(βh) − η·β·log π_θ(y_w)`` with the *summed* log-prob of the chosen completion
    (the paper's baseline responses are the chosen ones here); η = 0 is DPO. The sum is
    the paper's: its SFT term is ``−log π_θ(ỹ | x)``, the log-probability of the whole
    baseline response. ``sft_mean=True`` averages over the response's tokens instead
    (``−(1/|y_w|) Σ_t log π_θ``, the SFT term of TRL's ``rpo_alpha``), which makes η
    independent of the response length; it is lmloss's option, not the paper's.

    References:
        Liu et al., "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is
        Implicitly an Adversarial Regularizer", arXiv:2405.16436 (the practical RPO
        objective: DPO loss plus η·β times the SFT loss).
    """
    _checks.require_in_range("eta", eta, 0.0, float("inf"))
    logits = _margin_logits(pairs, beta, regularizer)
    sft = -pairs.chosen.nll() if sft_mean else pairs.chosen.token_sum_logp()
    per_pair = -F.logsigmoid(logits) - eta * beta * sft
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "exo",
    trl='DPOTrainer(loss_type="exo_pair")',
    family=PREF,
    paper="Ji et al. 2024 (EXO), arXiv:2402.00856",
)
def exo(
    pairs: Pairs,
    *,
    beta: float = 0.1,
    eps: float = 1e-3,
    regularizer: FDivergence = REVERSE_KL,
) -> LossOutput:
    """EXO (pairwise): KL(q_θ ‖ p_ε) between the model's and the smoothed label distribution.

    ``q_w = σ(βh)``, ``q_l = σ(−βh)``, ``p = (1−ε, ε)``; loss
    ``q_w (log q_w − log(1−ε)) + q_l (log q_l − log ε)``.

    Args:
        eps: label smoothing ε in (0, 0.5); it enters a log, so 0 is not allowed
            (the paper uses 1e-3).

    References:
        Ji et al., "Towards Efficient Exact Optimization of Language Model Alignment",
        arXiv:2402.00856, Eq. 16 with K = 2. TRL 1.16 ``loss_type="exo_pair"``.
    """
    eps = check_label_noise(eps, allow_zero=False)
    logits = _margin_logits(pairs, beta, regularizer)
    log_qw, log_ql = F.logsigmoid(logits), F.logsigmoid(-logits)
    eps_t = torch.as_tensor(eps, dtype=logits.dtype, device=logits.device)
    per_pair = log_qw.exp() * (log_qw - torch.log1p(-eps_t)) + log_ql.exp() * (log_ql - eps_t.log())
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "discopop",
    trl='DPOTrainer(loss_type="discopop")',
    family=PREF,
    paper="Lu et al. 2024 (DiscoPOP), arXiv:2406.08414",
)
def discopop(
    pairs: Pairs,
    *,
    beta: float = 0.1,
    tau: float = 0.05,
    regularizer: FDivergence = REVERSE_KL,
) -> LossOutput:
    """DiscoPOP (log-ratio modulated loss), with x = βh and m = σ(x/τ):

    ``(1 − m)·(−log σ(x)) + m·exp(−x)``.

    The exponential term is evaluated as ``exp(−x + log σ(x/τ))`` (clamped): m vanishes
    faster than exp(−x) grows for τ < 1, so the product stays finite where exp(−x) alone
    would overflow.

    Args:
        tau: temperature τ > 0 of the modulation (the paper's 0.05).

    References:
        Lu et al., "Discovering Preference Optimization Algorithms with and for Large
        Language Models", arXiv:2406.08414, Eq. 5. TRL 1.16 ``loss_type="discopop"``.
    """
    tau = _checks.require_positive("tau", tau)
    logits = _margin_logits(pairs, beta, regularizer)
    modulation = torch.sigmoid(logits / tau)
    exponential = torch.exp((-logits + F.logsigmoid(logits / tau)).clamp(max=MAX_EXPONENT))
    per_pair = -F.logsigmoid(logits) * (1 - modulation) + exponential
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))


@objective(
    "ln_dpo",
    trl='DPOTrainer(loss_type="sigmoid_norm")',
    family=PREF,
    paper="Ahrabian et al. 2024 (*PO guide), arXiv:2407.15229",
)
def ln_dpo(pairs: Pairs, *, beta: float = 0.1, regularizer: FDivergence = REVERSE_KL) -> LossOutput:
    """Length-normalized DPO: ``−log σ(β [Δ_w/|y_w| − Δ_l/|y_l|])``, Δ the log-ratio.

    References:
        Ahrabian et al., "The Hitchhiker's Guide to Human Alignment with *PO",
        arXiv:2407.15229. TRL 1.16 ``loss_type="sigmoid_norm"``.
    """
    logits = _margin_logits(pairs, beta, regularizer, per_token=True)
    return mean_loss(-F.logsigmoid(logits), dpo_reward_metrics(pairs, beta))


@objective("osp", family=PREF, paper="Zhai et al. 2024 (Online Self-Preferring), arXiv:2405.14103")
def osp(
    pairs: Pairs,
    *,
    strength: Tensor,
    beta: float = 0.1,
    regularizer: FDivergence = REVERSE_KL,
) -> LossOutput:
    """Soft-preference cross-entropy: ``−[p log σ(βh) + (1 − p) log σ(−βh)]``.

    p is the strength of the preference for y_w over y_l, given per pair; p = 1 is DPO.

    lmloss's own reading: the paper (abstract in ``seeds/``; no authors' code to check
    against) trains on self-judged preference strengths; that the loss is this binary
    cross-entropy against p on the DPO margin (and composes with the f-DPO ``divergence``)
    is our reading of its soft-preference objective. How p is obtained (the model judging
    its own samples) happens outside the loss.

    Args:
        strength: ``[B]`` preference strengths p in [0, 1].

    References:
        "Online Self-Preferring Language Models" (OSP), arXiv:2405.14103 — the
        soft-preference cross-entropy loss.
    """
    strength = _checks.require_floating("strength", strength)
    _checks.require_shape("strength", strength, (pairs.size,), "the number of pairs")
    if bool(((strength < 0) | (strength > 1)).any()):
        raise ValueError("strength must lie in [0, 1]")
    logits = _margin_logits(pairs, beta, regularizer)
    per_pair = soft_label_loss(logits, strength.to(logits.dtype))
    return mean_loss(per_pair, dpo_reward_metrics(pairs, beta))
