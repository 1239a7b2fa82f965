"""Divergences between two distributions, each defined once as a per-vocabulary-entry term.

Every quantity here is a sum over the vocabulary ``D = Σ_v f(a_v, b_v)`` of a term ``f`` of
the student's log-probability ``a = log p_s`` and the teacher's ``b = log p_t`` of one entry
(``p = e^a``, ``q = e^b``). A :class:`PairTerm` gives ``f`` and its two partial derivatives
``∂f/∂a`` and ``∂f/∂b``. That is all the engine needs: with ``a_v = z_v - lse(z)``, the
gradient w.r.t. the student logits is

    ∂D/∂z_u = ∂f/∂a_u - p_u · Σ_v ∂f/∂a_v

(and likewise for the teacher with ``b`` and ``q``), so the engine accumulates ``Σ_v f`` and
``Σ_v ∂f/∂a`` per token in the forward and forms the gradient tile by tile in the backward.
The plain path (full logits) and the sparse-teacher path apply the same ``value`` to whole
rows and let autograd differentiate it; the tests hold the hand-written partials to it.

Adding a divergence means adding one :class:`PairTerm` to :data:`PAIR_TERMS` below.

Conventions: "forward" is teacher-first, ``KL(p_t ‖ p_s) = Σ q (b - a)``; the generalized JSD
follows TRL's ``GKDTrainer.generalized_jsd_loss`` (mixture ``(1-β) p_s + β p_t``, with exactly
``β = 0`` the forward KL and exactly ``β = 1`` the reverse KL, as TRL special-cases them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from lmloss import _checks

Tensor = torch.Tensor
Hyper = Mapping[str, float]

# χ² divides by the student's probability; its log-ratio is capped so the term stays finite.
CHI2_MAX_LOG_RATIO = 25.0


def log_floor(dtype: torch.dtype) -> float:
    """The log-probability a ``-inf`` one (a masked vocabulary entry) is raised to: -1e9,
    or a quarter of the format's lowest value where -1e9 is not finite (float16), so that
    sums and differences of two floors stay finite. Its probability is exactly 0."""
    return max(-1e9, torch.finfo(dtype).min / 4)


class Pair:
    """Student and teacher log-probabilities of the same vocabulary entries (any shape).

    A ``-inf`` log-probability (a ``-inf`` logit: a masked vocabulary, as in constrained
    decoding or a padded head) is probability 0: ``a`` and ``b`` are clamped at
    :func:`log_floor`, so that ``0 · (-inf)`` and ``-inf - (-inf)`` never make a NaN. A term
    is then what masking with -1e9 gives: exact where the exact value is finite (an entry
    masked in the teacher adds nothing to the forward KL, one masked in both adds nothing
    to any divergence), and large but finite where it is infinite (the teacher puts mass
    on an entry the student masks). Below the floor the terms are constant (clamp), so the
    gradient reaching a masked logit is 0.

    Intermediates shared by a term's value and partials (probabilities, a log-mixture)
    are computed once per pair through :meth:`memo`.
    """

    __slots__ = ("_memo", "_p", "_q", "a", "b")

    def __init__(self, a: Tensor, b: Tensor):
        self.a, self.b = a.clamp(min=log_floor(a.dtype)), b.clamp(min=log_floor(b.dtype))
        self._p: Tensor | None = None
        self._q: Tensor | None = None
        self._memo: dict = {}

    def memo(self, key: object, compute: Callable[[], object]) -> object:
        """``compute()`` the first time ``key`` is asked for, the stored result after."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def p(self) -> Tensor:
        """Student probabilities ``e^a``."""
        if self._p is None:
            self._p = self.a.exp()
        return self._p

    @property
    def q(self) -> Tensor:
        """Teacher probabilities ``e^b``."""
        if self._q is None:
            self._q = self.b.exp()
        return self._q


Partials = tuple[Tensor | None, Tensor | None]  # (∂f/∂a, ∂f/∂b); None where identically zero


@dataclass(frozen=True)
class PairTerm:
    """One per-vocabulary-entry term ``f(a, b)`` of a sum over the vocabulary.

    Attributes:
        name: engine name (also the registry name of the matching distillation objective).
        value: ``f`` elementwise, given a :class:`Pair` and the hyper-parameters.
        partials: ``(∂f/∂a, ∂f/∂b)`` elementwise.
        defaults: the term's hyper-parameters and their defaults.
        check: validates resolved hyper-parameters (raises ValueError/TypeError).
        divergence: True for divergences (≥ 0, zero iff the distributions agree); False
            for helper terms such as entropies.
    """

    name: str
    value: Callable[[Pair, Hyper], Tensor]
    partials: Callable[[Pair, Hyper], Partials]
    defaults: Mapping[str, float] = field(default_factory=dict)
    check: Callable[[Hyper], None] = lambda hyper: None
    divergence: bool = True


# ---------------------------------------------------------------- KL in both directions


def _forward_kl(pair: Pair, h: Hyper) -> Tensor:
    return pair.q * (pair.b - pair.a)


def _forward_kl_partials(pair: Pair, h: Hyper) -> Partials:
    return -pair.q, pair.q * (pair.b - pair.a + 1)


def _reverse_kl(pair: Pair, h: Hyper) -> Tensor:
    return pair.p * (pair.a - pair.b)


def _reverse_kl_partials(pair: Pair, h: Hyper) -> Partials:
    return pair.p * (pair.a - pair.b + 1), -pair.p


# ---------------------------------------------------------------- generalized JSD


def _log_mixture(x: Tensor, y: Tensor, weight_y: float) -> Tensor:
    """``log((1-w) e^x + w e^y)`` without leaving log space."""
    log_wx = math.log1p(-weight_y) if weight_y < 1 else -math.inf
    log_wy = math.log(weight_y) if weight_y > 0 else -math.inf
    return torch.logaddexp(x + log_wx, y + log_wy)


def _jsd_log_mixture(pair: Pair, beta: float) -> Tensor:
    return pair.memo(("jsd_mixture", beta), lambda: _log_mixture(pair.a, pair.b, beta))


def _jsd(pair: Pair, h: Hyper) -> Tensor:
    beta = h["beta"]
    if beta == 0:  # TRL's convention: the end points are the two KLs, not the 0 limit
        return _forward_kl(pair, h)
    if beta == 1:
        return _reverse_kl(pair, h)
    log_m = _jsd_log_mixture(pair, beta)
    return beta * pair.q * (pair.b - log_m) + (1 - beta) * pair.p * (pair.a - log_m)


def _jsd_partials(pair: Pair, h: Hyper) -> Partials:
    # d(log m)/da = (1-β) p / m, so the mixture's own derivative cancels the "+1" terms.
    beta = h["beta"]
    if beta == 0:
        return _forward_kl_partials(pair, h)
    if beta == 1:
        return _reverse_kl_partials(pair, h)
    log_m = _jsd_log_mixture(pair, beta)
    return (1 - beta) * pair.p * (pair.a - log_m), beta * pair.q * (pair.b - log_m)


def _check_beta(h: Hyper) -> None:
    _checks.require_in_range("beta", h["beta"], 0.0, 1.0)


# ---------------------------------------------------------------- total variation


def _tvd(pair: Pair, h: Hyper) -> Tensor:
    return 0.5 * (pair.p - pair.q).abs()


def _tvd_partials(pair: Pair, h: Hyper) -> Partials:
    sign = 0.5 * torch.sign(pair.p - pair.q)
    return sign * pair.p, -sign * pair.q


# ---------------------------------------------------------------- skew KL (DistiLLM)


def _skew(x: Tensor, y: Tensor, px: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """``KL(X ‖ αX + (1-α)Y)`` per entry and its partials w.r.t. ``x = log X``, ``y = log Y``."""
    log_mix = _log_mixture(x, y, 1 - alpha)
    share_x = (x + (math.log(alpha) if alpha > 0 else -math.inf) - log_mix).exp()  # αX / mix
    share_y = (y + (math.log1p(-alpha) if alpha < 1 else -math.inf) - log_mix).exp()
    value = px * (x - log_mix)
    return value, px * (x - log_mix + 1 - share_x), -px * share_y


def _skew_teacher_first(pair: Pair, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """``KL(p_t ‖ α p_t + (1-α) p_s)`` and its partials (w.r.t. teacher, student)."""
    return pair.memo(("skew_kl", alpha), lambda: _skew(pair.b, pair.a, pair.q, alpha))


def _skew_student_first(pair: Pair, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """``KL(p_s ‖ α p_s + (1-α) p_t)`` and its partials (w.r.t. student, teacher)."""
    return pair.memo(("skew_reverse_kl", alpha), lambda: _skew(pair.a, pair.b, pair.p, alpha))


def _skew_kl(pair: Pair, h: Hyper) -> Tensor:
    return _skew_teacher_first(pair, h["alpha"])[0]


def _skew_kl_partials(pair: Pair, h: Hyper) -> Partials:
    _, d_teacher, d_student = _skew_teacher_first(pair, h["alpha"])
    return d_student, d_teacher


def _skew_reverse_kl(pair: Pair, h: Hyper) -> Tensor:
    return _skew_student_first(pair, h["alpha"])[0]


def _skew_reverse_kl_partials(pair: Pair, h: Hyper) -> Partials:
    _, d_student, d_teacher = _skew_student_first(pair, h["alpha"])
    return d_student, d_teacher


def _check_alpha_unit(h: Hyper) -> None:
    _checks.require_in_range("alpha", h["alpha"], 0.0, 1.0)


# ---------------------------------------------------------------- alpha-beta divergence


def _ab_powers(pair: Pair, h: Hyper) -> tuple[Tensor, Tensor, Tensor]:
    """``P^α Q^β``, ``P^(α+β)``, ``Q^(α+β)`` with P the teacher and Q the student."""
    alpha, beta = h["alpha"], h["beta"]
    cross = (alpha * pair.b + beta * pair.a).exp()
    return cross, ((alpha + beta) * pair.b).exp(), ((alpha + beta) * pair.a).exp()


def _alpha_beta(pair: Pair, h: Hyper) -> Tensor:
    alpha, beta = h["alpha"], h["beta"]
    cross, teacher_pow, student_pow = _ab_powers(pair, h)
    total = alpha + beta
    return -(cross - alpha / total * teacher_pow - beta / total * student_pow) / (alpha * beta)


def _alpha_beta_partials(pair: Pair, h: Hyper) -> Partials:
    cross, teacher_pow, student_pow = _ab_powers(pair, h)
    return -(cross - student_pow) / h["alpha"], -(cross - teacher_pow) / h["beta"]


def _check_alpha_beta(h: Hyper) -> None:
    # Positive powers of probabilities stay in [0, 1]: no exponential can overflow.
    _checks.require_positive("alpha", h["alpha"])
    _checks.require_positive("beta", h["beta"])


# ---------------------------------------------------------------- f-divergences


def _hellinger(pair: Pair, h: Hyper) -> Tensor:
    return 0.5 * ((0.5 * pair.a).exp() - (0.5 * pair.b).exp()) ** 2


def _hellinger_partials(pair: Pair, h: Hyper) -> Partials:
    root_p, root_q = (0.5 * pair.a).exp(), (0.5 * pair.b).exp()
    diff = 0.5 * (root_p - root_q)
    return diff * root_p, -diff * root_q


def _chi2_excess(pair: Pair) -> Tensor:
    """``q/p - 1`` with the log-ratio capped at :data:`CHI2_MAX_LOG_RATIO`."""
    return torch.expm1((pair.b - pair.a).clamp(max=CHI2_MAX_LOG_RATIO))


def _chi2(pair: Pair, h: Hyper) -> Tensor:
    # (q - p)² / p written as p (q/p - 1)²: no cancellation when p ≈ q.
    return pair.p * _chi2_excess(pair) ** 2


def _chi2_partials(pair: Pair, h: Hyper) -> Partials:
    e = _chi2_excess(pair)
    capped = (pair.b - pair.a) > CHI2_MAX_LOG_RATIO  # the cap is constant in a and b
    d_student = torch.where(capped, pair.p * e * e, -pair.p * e * (e + 2))
    d_teacher = torch.where(capped, torch.zeros_like(e), 2 * pair.p * e * (e + 1))
    return d_student, d_teacher


# ---------------------------------------------------------------- entropies (helper terms)


def _student_entropy(pair: Pair, h: Hyper) -> Tensor:
    return -pair.p * pair.a


def _student_entropy_partials(pair: Pair, h: Hyper) -> Partials:
    return -pair.p * (pair.a + 1), None


def _teacher_entropy(pair: Pair, h: Hyper) -> Tensor:
    return -pair.q * pair.b


def _teacher_entropy_partials(pair: Pair, h: Hyper) -> Partials:
    return None, -pair.q * (pair.b + 1)


PAIR_TERMS: dict[str, PairTerm] = {
    t.name: t
    for t in (
        PairTerm("forward_kl", _forward_kl, _forward_kl_partials),
        PairTerm("reverse_kl", _reverse_kl, _reverse_kl_partials),
        PairTerm("jsd", _jsd, _jsd_partials, {"beta": 0.5}, _check_beta),
        PairTerm("tvd", _tvd, _tvd_partials),
        PairTerm("skew_kl", _skew_kl, _skew_kl_partials, {"alpha": 0.1}, _check_alpha_unit),
        PairTerm(
            "skew_reverse_kl",
            _skew_reverse_kl,
            _skew_reverse_kl_partials,
            {"alpha": 0.1},
            _check_alpha_unit,
        ),
        PairTerm(
            "alpha_beta",
            _alpha_beta,
            _alpha_beta_partials,
            {"alpha": 0.5, "beta": 0.5},
            _check_alpha_beta,
        ),
        PairTerm("hellinger", _hellinger, _hellinger_partials),
        PairTerm("chi2", _chi2, _chi2_partials),
        PairTerm("student_entropy", _student_entropy, _student_entropy_partials, divergence=False),
        PairTerm("teacher_entropy", _teacher_entropy, _teacher_entropy_partials, divergence=False),
    )
}


def term_partials(pair: Pair, name: str, hyper: Hyper) -> Partials:
    """The partials of term ``name`` on ``pair``, computed once per pair."""
    return pair.memo(("partials", name), lambda: PAIR_TERMS[name].partials(pair, hyper))


DIVERGENCES: tuple[str, ...] = tuple(name for name, t in PAIR_TERMS.items() if t.divergence)


def parse_terms(names: str | Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated term names."""
    return _checks.require_names("divergence", names, PAIR_TERMS, "name at least one term from")


def resolve_hyper(name: str, hyper: Mapping[str, float]) -> dict[str, float]:
    """The term's hyper-parameters: its defaults overridden by ``hyper`` (other keys ignored)."""
    term = PAIR_TERMS[name]
    resolved = {key: hyper.get(key, default) for key, default in term.defaults.items()}
    term.check(resolved)
    return resolved


def term_values(
    a: Tensor, b: Tensor, names: tuple[str, ...], hyper: Mapping[str, Hyper]
) -> dict[str, Tensor]:
    """``Σ_v f`` over the last dimension of log-probabilities ``a`` (student), ``b`` (teacher).

    Plain differentiable PyTorch: the reference and sparse paths use it with autograd.
    """
    pair = Pair(a, b)
    return {name: PAIR_TERMS[name].value(pair, hyper[name]).sum(-1) for name in names}
