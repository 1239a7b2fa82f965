"""What an objective declares: the one contract every front door, the trainer and the CLI read.

Objectives stay plain functions; ``@objective(...)`` attaches the facts only the author can
state (name, family, paper, statistics, whether a reference model is needed, ...). The
registry then reads the rest from the function's signature once, at registration
(:func:`lmloss.objectives.signatures.complete`), so nothing downstream inspects signatures
or probes an objective to learn what it needs. This layer never imports the registry (data
and imports flow one way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Whether the objective needs a frozen reference model's log-probs.
REFERENCE = ("required", "optional", "none")

# What the loss averages over, i.e. what the distributed-correct count is:
# token (a global ``num_items`` token count), sequence, pair, example (one row of logits),
# batch (the terms are coupled across the batch: no per-row split is meaningful).
NORMALIZERS = ("token", "sequence", "pair", "example", "batch")


@dataclass(frozen=True)
class Family:
    """What a family of objectives declares, once, as ``FAMILY`` in its package's ``__init__``.

    The registry finds every ``lmloss.objectives.<package>.FAMILY``; nothing else lists the
    families. A new family is its package (objectives + this declaration) and, for its
    callers, the front-door functions named here.

    Attributes:
        name: the family name objectives declare (``@objective(..., family=name)``).
        read_signature: ``(spec, fn, extra_inputs) -> dict`` of what the family's signature
            convention says (``kind``, ``inputs``, ``optional_inputs``, ``normalizer``);
            see :mod:`lmloss.objectives.signatures`.
        plain: ``"module:function"`` of the front door on per-token statistics (or logits).
        fused: ``"module:function"`` of the front door on hidden states and LM heads, or
            ``""`` when the family's inputs are not a language model's head.
        reference: the default of ``@objective(reference=...)`` in this family.
        trl_trainer: the :mod:`lmloss.trl` trainer that takes its objectives, if any.
    """

    name: str
    read_signature: Callable[[ObjectiveSpec, Callable, tuple[str, ...]], dict]
    plain: str
    fused: str = ""
    reference: str = "none"
    trl_trainer: str = ""


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything the library knows about an objective, declared or read once.

    Declared with :func:`objective`:
        name: registry name, lower case (``"dpo"``).
        family: the name of a declared :class:`Family`.
        paper: the reference, e.g. ``"Rafailov et al. 2023, arXiv:2305.18290"``.
        stats: statistics the fused path must compute for it, by engine name
            (``"logp"``, ``"entropy"``, ``"lse"``, ``"forward_kl"``, ...).
        aliases: other names that resolve to it.
        defaults: hyper-parameter overrides that distinguish this entry when several
            registry names share one function (e.g. ``tdpo2`` is ``tdpo`` with ``alpha=0.5``).
        reference: ``"required"``, ``"optional"`` or ``"none"`` (of :data:`REFERENCE`);
            declared or the family's default.
        batch_coupled: its per-example terms are not tied to one row (AOT sorts the batch;
            Clip-Cov and KL-Cov pick tokens by a covariance over the whole batch, STEER and
            Lp-Reg by the batch's extremes, GTPO by the other completions of a group).
        optional_inputs: keyword tensors it may take that its signature cannot show (the
            token masks of SparsePO, read from its input kind); completed below.
        samples: it compares each row with answers sampled from the reference policy for
            the same prompt (D2O's ``sample_*`` group): a trainer must draw them.
        trl: how TRL 1.16 spells the same loss, where it has it
            (``'DPOTrainer(loss_type="sigmoid")'``); ``""`` where it has none.

    Read from the signature at registration (see :mod:`lmloss.objectives.signatures`):
        kind: the input kind the front door builds (``"Pairs"``, ``"Rollouts"``,
            ``"tokens"``, ``"distributions"``, ``"logits"``, ...).
        inputs: keyword tensors that must be given (by their front-door names).
        optional_inputs: keyword tensors it may take.
        extra_inputs: the inputs beyond its kind's (``strength`` of OSP, ``desirable`` of
            KTO): per-example data the trainer reads from the data column of that name.
        hyper: hyper-parameters and their defaults (``defaults`` applied), in order.
        groups: keyword parameters that take a dataclass of shared options, with the class;
            their fields are flattened into ``hyper`` so callers and recipes stay flat.
        normalizer: of :data:`NORMALIZERS`, for the default hyper-parameters (see
            :meth:`normalizer_for`).
    """

    name: str
    family: str
    paper: str
    stats: tuple[str, ...] = ("logp",)
    aliases: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()
    reference: str = ""
    batch_coupled: bool = False
    trl: str = ""
    kind: str = ""
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    extra_inputs: tuple[str, ...] = ()
    hyper: tuple[tuple[str, Any], ...] = ()
    groups: tuple[tuple[str, type], ...] = ()
    normalizer: str = ""
    samples: bool = False

    @property
    def hyper_defaults(self) -> dict[str, Any]:
        """Hyper-parameter name → default, for this registry entry."""
        return dict(self.hyper)

    @property
    def takes(self) -> tuple[str, ...]:
        """Every keyword tensor it accepts."""
        return (*self.inputs, *self.optional_inputs)

    def normalizer_for(self, hyper: dict[str, Any]) -> str:
        """The normalizer once ``hyper`` overrides the defaults: a policy objective averages
        over tokens exactly when its ``aggregation`` is ``token_mean``."""
        full = {**self.hyper_defaults, **hyper}
        if self.family == "policy":
            return "token" if full["aggregation"] == "token_mean" else "sequence"
        return self.normalizer

    def group(self, hyper: dict[str, Any]) -> dict[str, Any]:
        """Flat hyper-parameters → the keyword arguments of the function: the fields of
        each option group packed into its dataclass (defaults from this entry)."""
        out = dict(hyper)
        for param, cls in self.groups:
            names = cls.__dataclass_fields__
            out[param] = cls(**{k: out.pop(k) for k in list(out) if k in names})
        return out

    def summary(self) -> str:
        """A plain-text description: what ``lmloss describe NAME`` prints above the formula."""

        def names(values) -> str:
            return ", ".join(values) or "-"

        hyper = "\n".join(f"    {k} = {v!r}" for k, v in self.hyper) or "    -"
        lines = [
            f"{self.name}  ({self.family})  {self.paper}",
            f"  aliases:          {names(self.aliases)}",
            f"  input kind:       {self.kind}",
            f"  inputs:           {names(self.inputs)}",
            f"  optional inputs:  {names(self.optional_inputs)}",
            f"  per-example:      {names(self.extra_inputs)}",
            f"  statistics:       {names(self.stats)}",
            f"  reference model:  {self.reference}",
            f"  TRL:              {self.trl or '-'}",
            f"  normalizer:       {self.normalizer}" + ("  (batch-coupled)" * self.batch_coupled),
            "  hyper-parameters:",
            hyper,
        ]
        return "\n".join(lines)


def objective(
    name: str,
    *,
    family: str,
    paper: str,
    stats: tuple[str, ...] = ("logp",),
    aliases: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    reference: str | None = None,
    batch_coupled: bool = False,
    optional_inputs: tuple[str, ...] = (),
    samples: bool = False,
    trl: str = "",
) -> Callable[[Callable], Callable]:
    """Tag a function as the objective ``name``. Can be stacked to register variants.

    ``reference`` defaults to the family's convention (:attr:`Family.reference`):
    ``"required"`` for preference objectives (declare ``"none"`` for reference-free ones
    such as SimPO), ``"optional"`` for policy objectives (used by the ``beta`` KL term),
    ``"none"`` elsewhere. The registry checks that ``family`` is declared.
    """
    if reference is not None and reference not in REFERENCE:
        raise ValueError(f"reference must be one of {REFERENCE}, got {reference!r}")
    spec = ObjectiveSpec(
        name=name,
        family=family,
        paper=paper,
        stats=tuple(stats),
        aliases=tuple(aliases),
        defaults=tuple(sorted((defaults or {}).items())),
        reference=reference or "",
        batch_coupled=batch_coupled,
        optional_inputs=tuple(optional_inputs),
        samples=samples,
        trl=trl,
    )

    def tag(fn: Callable) -> Callable:
        fn.__objective_specs__ = (*getattr(fn, "__objective_specs__", ()), spec)
        return fn

    return tag
