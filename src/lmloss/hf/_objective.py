"""What an objective asks of the integrations (``hf.patch``, ``lmloss.trl``): one place.

The integrations need three answers about a registered objective — is it of the expected
family and are these its hyper-parameters, which engine statistics does it read, and does
it need a reference model — and ask them only here, so that the source of those answers
(today the registry entry and the training modes' reference probe) can change in one file.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmloss import registry
from lmloss.objectives.binding import check_hyper

# Options of the fused likelihood front door that a patched model may also take.
LIKELIHOOD_OPTIONS = ("reweight", "reweight_temperature", "memory_budget", "embedding_table")
# Options of the preference front doors (any pairwise objective).
PREFERENCE_OPTIONS = ("wpo", "wpo_clamp", "ld_alpha", "hypo_weight")


def likelihood_objective(name: str, hyper: dict) -> str:
    """The registry name of the likelihood objective ``name``, its ``hyper`` checked."""
    entry = registry.get(name, family="likelihood")
    check_hyper(entry.spec, hyper, LIKELIHOOD_OPTIONS)
    return entry.name


@dataclass(frozen=True)
class PreferenceNeeds:
    """What a preference objective needs from a trainer."""

    name: str
    reference: bool  # the loss reads reference log-probs (else the reference never runs)
    input_kind: str  # "Pairs", "Unpaired", ... (the batch layout it takes)


def preference_needs(name: str, hyper: dict) -> PreferenceNeeds:
    """The needs of the preference objective ``name`` with ``hyper``, checked."""
    entry = registry.get(name, family="preference")
    check_hyper(entry.spec, hyper, PREFERENCE_OPTIONS)
    return PreferenceNeeds(entry.name, entry.spec.reference != "none", entry.spec.kind)


@dataclass(frozen=True)
class PolicyNeeds:
    """What a policy objective needs from a trainer."""

    name: str
    reference: bool  # a KL penalty to the reference (β ≠ 0)


def policy_needs(name: str, hyper: dict) -> PolicyNeeds:
    """The needs of the policy objective ``name`` with ``hyper``, checked."""
    entry = registry.get(name, family="policy")
    check_hyper(entry.spec, hyper)
    beta = hyper.get("beta", entry.spec.hyper_defaults.get("beta", 0.0))
    return PolicyNeeds(entry.name, float(beta or 0.0) != 0.0)
