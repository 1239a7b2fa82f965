"""The inputs of preference objectives: per-token completions and the four ways they come.

A :class:`Completions` holds one group of completions as per-token tensors (policy log-probs,
completion mask, optional reference log-probs and other per-token statistics) and knows how
to reduce them to per-sequence values. The input kinds group completions the way each
family of objectives consumes them:

=============== ============================================ ==============================
kind            keyword tensors (plain path)                 objectives
=============== ============================================ ==============================
``Pairs``       ``chosen_*``, ``rejected_*``  ``[B, T]``     DPO and every pairwise loss
``Unpaired``    ``logps``/``mask``/``ref_logps`` ``[B, T]``, KTO
                KL samples ``kl_*``
``Negatives``   ``logps``... ``[B, T]``, reference samples   NPO, D2O
                ``sample_*`` ``[B, K, T]``
``Lists``       ``logps``... ``[B, K, T]``                   LiPO
=============== ============================================ ==============================

For a group with prefix ``p`` the keywords are ``{p}logps`` (policy log-prob per token, any
value where masked), ``{p}mask`` (0/1 or bool completion mask), ``ref_{p}logps`` (reference
log-probs per token, or already summed per sequence, or absent) and optional per-token
statistics ``{p}sum_sq_probs`` (``log Σ_v p_v²``, for WPO), ``{p}kl`` (``KL(π_ref ‖ π_θ)``
per token, for TDPO / SparsePO), ``{p}reward_weights`` and ``{p}kl_weights`` (SparsePO
token masks). Policy and reference log-probs above 0 (by more than
:data:`lmloss._checks.LOGPROB_TOLERANCE` per token) are refused. ``from_keywords`` pops the
names it uses from a dict, checking each; the
fused front door hands the values it computed per group as ``computed`` (by field:
``logps``, ``mask``, ``ref_logps`` and statistic suffixes), not as keyword strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from lmloss import _checks
from lmloss.objectives.reduce import as_mask, masked_mean, masked_sum, token_count

Tensor = torch.Tensor

# Optional per-token values a group may carry: keyword suffix -> the engine statistic that
# computes it on the fused path (one model: ``lmloss.stats.STATISTICS``; two models, the
# reference as teacher: a divergence), or None for values only the caller can give.
TOKEN_STATISTICS = {
    "sum_sq_probs": "sum_sq_probs",
    "kl": "forward_kl",
    "reward_weights": None,
    "kl_weights": None,
}


def _floating(name: str, value: object) -> Tensor:
    """A floating tensor, promoted to at least float32 (objectives accumulate in float32)."""
    tensor = _checks.require_floating(name, value)
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _zero_outside(values: Tensor, inside: Tensor) -> Tensor:
    """Zeros outside the completion, so that padding values (even inf) never reach the math."""
    return torch.where(inside, values, torch.zeros((), dtype=values.dtype, device=values.device))


@dataclass(frozen=True)
class Completions:
    """One group of completions as per-token tensors ``[..., T]``.

    Attributes:
        prefix: keyword prefix of the group (``"chosen_"``); used in error messages.
        logps: policy log-probability of each target token.
        mask: 1.0 on completion tokens, 0.0 elsewhere.
        ref_logps: reference log-probs per token (``[..., T]``), per sequence (``[...]``,
            used as given), or ``None``.
        weights: token weights of the sequence log-prob; the mask unless an option (LD-DPO)
            re-weights tokens.
        stats: other per-token statistics by name (see :data:`TOKEN_STATISTICS`).
    """

    prefix: str
    logps: Tensor
    mask: Tensor
    ref_logps: Tensor | None = None
    weights: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weights is None:
            object.__setattr__(self, "weights", self.mask)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.logps.shape[:-1])

    def sequence_logp(self) -> Tensor:
        """log π_θ(y) = Σ_t w_t log π_θ(y_t | ...), the token-weighted sum (weights = mask)."""
        return masked_sum(self.logps, self.weights)

    def ref_sequence_logp(self) -> Tensor:
        """log π_ref(y), reduced with the same token weights as :meth:`sequence_logp`."""
        ref = self.require_ref()
        return masked_sum(ref, self.weights) if ref.dim() == self.logps.dim() else ref

    def logratio(self) -> Tensor:
        """log π_θ(y)/π_ref(y) per sequence."""
        return self.sequence_logp() - self.ref_sequence_logp()

    def length(self) -> Tensor:
        """|y|, the number of completion tokens."""
        return token_count(self.mask)

    def mean_logp(self) -> Tensor:
        """Length-normalized log-prob, log π_θ(y)/|y|."""
        return self.sequence_logp() / self.length()

    def token_sum_logp(self) -> Tensor:
        """Σ_t log π_θ(y_t | ...) over the completion, ignoring token re-weighting options."""
        return masked_sum(self.logps, self.mask)

    def nll(self) -> Tensor:
        """Token-averaged negative log-likelihood −(1/|y|) Σ_t log π_θ(y_t | ...)."""
        return -masked_mean(self.logps, self.mask)

    def token_logratios(self) -> Tensor:
        """Per-token log π_θ(y_t|...) − log π_ref(y_t|...); needs per-token reference log-probs."""
        ref = self.require_ref()
        if ref.dim() != self.logps.dim():
            raise ValueError(
                f"this objective needs per-token reference log-probs: ref_{self.prefix}logps must "
                f"have shape {tuple(self.logps.shape)}, got the summed shape {tuple(ref.shape)}"
            )
        return self.logps - ref

    def require_ref(self) -> Tensor:
        if self.ref_logps is None:
            raise ValueError(
                f"this objective needs reference log-probs: pass ref_{self.prefix}logps= (or "
                "ref_hidden= and ref_weight= to fused_preference_loss)"
            )
        return self.ref_logps

    def stat(self, name: str) -> Tensor:
        """A per-token statistic given as ``{prefix}{name}``."""
        if name not in self.stats:
            raise ValueError(
                f"this objective needs {self.prefix}{name}= (per-token, shaped like "
                f"{self.prefix}logps)"
            )
        return self.stats[name]

    def stat_or(self, name: str, default: Tensor) -> Tensor:
        return self.stats.get(name, default)

    @classmethod
    def from_keywords(
        cls,
        kw: dict,
        prefix: str,
        *,
        ndim: int | tuple[int, ...],
        required: bool = True,
        computed: dict[str, Tensor] | None = None,
    ) -> Completions | None:
        """Pop and check the group ``prefix`` from ``kw``; ``None`` when optional and absent.

        ``ndim`` is 2 for ``[B, T]`` groups, 3 for ``[B, K, T]`` ones (or a tuple of both).
        ``computed`` holds values the fused path computed for this group, by field name; they
        take the place of the keywords.
        """
        logps_name, mask_name, ref_name = f"{prefix}logps", f"{prefix}mask", f"ref_{prefix}logps"
        fields = {
            "logps": kw.pop(logps_name, None),
            "mask": kw.pop(mask_name, None),
            "ref_logps": kw.pop(ref_name, None),
            **{suffix: kw.pop(f"{prefix}{suffix}", None) for suffix in TOKEN_STATISTICS},
        }
        fields.update(computed or {})
        if fields["logps"] is None:
            if required:
                raise ValueError(f"missing {logps_name}: per-token policy log-probs are required")
            if any(value is not None for value in fields.values()):
                raise ValueError(f"the {prefix.rstrip('_')} group needs {logps_name} too")
            return None
        logps = _floating(logps_name, fields["logps"])
        ndims = (ndim,) if isinstance(ndim, int) else ndim
        want = " or ".join({2: "[B, T]", 3: "[B, K, T]"}[n] for n in ndims)
        if logps.dim() not in ndims:
            raise ValueError(f"{logps_name} must be {want}, got shape {tuple(logps.shape)}")
        _checks.require_nonempty(logps_name, logps)
        if fields["mask"] is None:
            raise ValueError(
                f"missing {mask_name}: a {want} completion mask must go with {logps_name}"
            )
        mask = as_mask(mask_name, fields["mask"], logps, logps_name)
        empty = (token_count(mask) == 0).nonzero()
        if empty.numel():
            raise ValueError(
                f"{mask_name} has an empty completion at index {tuple(empty[0].tolist())}: "
                "every completion needs at least one token (fused: a row of targets that is "
                "all ignore_index)"
            )
        inside = mask != 0
        logps = _zero_outside(logps, inside)
        _checks.require_log_probabilities(logps_name, logps)
        ref = fields["ref_logps"]
        if ref is not None:
            ref = _floating(ref_name, ref)
            if ref.shape == logps.shape:
                ref = _zero_outside(ref, inside)
                _checks.require_log_probabilities(ref_name, ref)
            elif tuple(ref.shape) == tuple(logps.shape[:-1]):
                # a summed value may gather the rounding of each of its tokens
                _checks.require_log_probabilities(ref_name, ref, tokens=logps.shape[-1])
            else:
                raise ValueError(
                    f"{ref_name} must have shape {tuple(logps.shape)} (per token) or "
                    f"{tuple(logps.shape[:-1])} (summed), matching {logps_name}; "
                    f"got {tuple(ref.shape)}"
                )
        stats = {}
        for stat in TOKEN_STATISTICS:
            value = fields[stat]
            if value is not None:
                value = _floating(f"{prefix}{stat}", value)
                _checks.require_shape(f"{prefix}{stat}", value, logps.shape, logps_name)
                stats[stat] = _zero_outside(value, inside)
        return cls(prefix=prefix, logps=logps, mask=mask, ref_logps=ref, stats=stats)


def _require_same_batch(name: str, group: Completions, like_name: str, like: Completions) -> None:
    if group.batch_shape[0] != like.batch_shape[0]:
        raise ValueError(
            f"{name} must hold {like.batch_shape[0]} rows (one per {like_name} row), "
            f"got {group.batch_shape[0]}"
        )


def _main_and_extra(
    kw: dict, computed: dict | None, extra: str, *, extra_ndim: int
) -> tuple[Completions, Completions | None]:
    """The unprefixed ``[B, T]`` group and the optional group ``extra`` of a kind."""
    computed = computed or {}
    main = Completions.from_keywords(kw, "", ndim=2, computed=computed.get(""))
    other = Completions.from_keywords(
        kw, extra, ndim=extra_ndim, required=False, computed=computed.get(extra)
    )
    return main, other


@dataclass(frozen=True)
class Pairs:
    """Chosen (preferred, y_w) and rejected (y_l) completions of the same ``B`` prompts."""

    chosen: Completions
    rejected: Completions

    SIGNATURE: ClassVar[str] = (
        "chosen_logps, rejected_logps, chosen_mask, rejected_mask [B, T], "
        "ref_chosen_logps, ref_rejected_logps [B, T] or [B]"
    )
    # fused path: the stacked ``hidden`` [2B, T, H] holds these groups in this order
    PRIMARY: ClassVar[tuple[str, ...]] = ("chosen_", "rejected_")
    EXTRA: ClassVar[tuple[str, ...]] = ()

    @property
    def size(self) -> int:
        return self.chosen.batch_shape[0]

    def swapped(self) -> Pairs:
        """The same pairs with the preference label flipped."""
        return Pairs(chosen=self.rejected, rejected=self.chosen)

    def map(self, fn) -> Pairs:
        """Apply ``fn(completions, other) -> completions`` to both sides."""
        return Pairs(chosen=fn(self.chosen, self.rejected), rejected=fn(self.rejected, self.chosen))

    @classmethod
    def from_keywords(cls, kw: dict, computed: dict | None = None) -> Pairs:
        computed = computed or {}
        chosen = Completions.from_keywords(kw, "chosen_", ndim=2, computed=computed.get("chosen_"))
        rejected = Completions.from_keywords(
            kw, "rejected_", ndim=2, computed=computed.get("rejected_")
        )
        _require_same_batch("rejected_logps", rejected, "chosen_logps", chosen)
        return cls(chosen=chosen, rejected=rejected)


@dataclass(frozen=True)
class Unpaired:
    """Single completions labelled desirable or undesirable, plus KTO's KL samples.

    ``reference_point`` holds completions paired with the wrong prompts (``kl_*``), whose
    policy/reference log-ratio estimates KL(π_θ ‖ π_ref) for KTO's reference point.
    """

    completions: Completions
    reference_point: Completions | None = None

    SIGNATURE: ClassVar[str] = (
        "logps, mask, ref_logps [B, T], desirable [B]; KL samples kl_logps, kl_mask, ref_kl_logps"
    )
    PRIMARY: ClassVar[tuple[str, ...]] = ("",)
    EXTRA: ClassVar[tuple[str, ...]] = ("kl_",)

    @property
    def size(self) -> int:
        return self.completions.batch_shape[0]

    @classmethod
    def from_keywords(cls, kw: dict, computed: dict | None = None) -> Unpaired:
        completions, reference_point = _main_and_extra(kw, computed, "kl_", extra_ndim=2)
        return cls(completions=completions, reference_point=reference_point)


@dataclass(frozen=True)
class Negatives:
    """Dispreferred completions only, optionally with ``K`` reference samples per prompt."""

    negatives: Completions
    samples: Completions | None = None

    SIGNATURE: ClassVar[str] = (
        "logps, mask, ref_logps [B, T]; reference samples sample_logps, sample_mask, "
        "ref_sample_logps [B, K, T]"
    )
    PRIMARY: ClassVar[tuple[str, ...]] = ("",)
    EXTRA: ClassVar[tuple[str, ...]] = ("sample_",)

    @property
    def size(self) -> int:
        return self.negatives.batch_shape[0]

    @classmethod
    def from_keywords(cls, kw: dict, computed: dict | None = None) -> Negatives:
        negatives, samples = _main_and_extra(kw, computed, "sample_", extra_ndim=3)
        if samples is not None:
            _require_same_batch("sample_logps", samples, "logps", negatives)
        return cls(negatives=negatives, samples=samples)

    def require_samples(self) -> Completions:
        if self.samples is None:
            raise ValueError(
                "this objective needs reference samples: pass sample_logps= [B, K, T], "
                "sample_mask= and ref_sample_logps="
            )
        return self.samples


@dataclass(frozen=True)
class Lists:
    """``K`` completions of each of ``B`` prompts, as ``[B, K, T]`` tensors."""

    items: Completions

    SIGNATURE: ClassVar[str] = "logps, mask, ref_logps [B, K, T], scores [B, K]"
    PRIMARY: ClassVar[tuple[str, ...]] = ("",)
    EXTRA: ClassVar[tuple[str, ...]] = ()

    @property
    def size(self) -> int:
        return self.items.batch_shape[0]

    @classmethod
    def from_keywords(cls, kw: dict, computed: dict | None = None) -> Lists:
        items = Completions.from_keywords(kw, "", ndim=3, computed=(computed or {}).get(""))
        return cls(items=items)


INPUT_KINDS = (Pairs, Unpaired, Negatives, Lists)
_KIND_BY_NAME = {kind.__name__: kind for kind in INPUT_KINDS}


def kind_of(spec) -> type:
    """The input kind class an :class:`~lmloss.objectives.spec.ObjectiveSpec` names."""
    return _KIND_BY_NAME[spec.kind]


def with_weights(completions: Completions, weights: Tensor) -> Completions:
    """The same completions with new token weights for the sequence log-prob."""
    return replace(completions, weights=weights)
