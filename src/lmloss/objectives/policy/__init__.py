"""Online policy optimization: the GRPO family, advantage estimators and KL estimators.

Every objective here is a pure function of per-token tensors ``[B, T]`` (log-probabilities
of the sampled completion tokens under the current, old and reference policies, a
completion mask, advantages, and where declared the token entropy). Modules by theme:

* :mod:`.surrogates` — clipped surrogate family (PPO, GRPO, Dr. GRPO, DAPO, BNPO, GSPO,
  LUSPO, RLOO/LOOP), CISPO, SAPO, VESPO;
* :mod:`.gtpo` — GTPO (conflict tokens, entropy filter);
* :mod:`.entropy` — entropy-control variants (Clip-Cov, KL-Cov, STEER, Lp-Reg);
* :mod:`.advantages` — advantage estimators (not losses) and the DAPO group filter;
* :mod:`.kl` — per-token KL estimators and the KL-in-reward helper;
* :mod:`.aggregate` — token → sequence → batch reductions;
* :mod:`.common` — input checks, ratios, the shared finish (KL term, entropy bonus,
  aggregation, metrics).
"""

from __future__ import annotations

from collections.abc import Callable

from lmloss.objectives.policy.rollouts import Rollouts
from lmloss.objectives.signatures import first_annotation
from lmloss.objectives.spec import Family, ObjectiveSpec


def _read_signature(spec: ObjectiveSpec, fn: Callable, extra: tuple[str, ...]) -> dict:
    """First parameter: :class:`Rollouts` (log-probs, mask, advantages, [entropy])."""
    if first_annotation(fn) is not Rollouts:
        raise TypeError(f"{fn.__qualname__}: first parameter must be annotated Rollouts")
    entropy = "entropy" in spec.stats
    return {
        "kind": "Rollouts",
        "inputs": ("logps", "mask", "advantages", *(("entropy",) * entropy), *extra),
        "optional_inputs": ("old_logps", "ref_logps", *(() if entropy else ("entropy",))),
        "normalizer": "sequence",
    }


FAMILY = Family(
    name="policy",
    read_signature=_read_signature,
    plain="lmloss.policy:policy_loss",
    fused="lmloss.policy:fused_policy_loss",
    reference="optional",
    trl_trainer="GRPOTrainer",
)
