"""``[objective]`` keys that are options of a family's front door, not hyper-parameters.

The family front doors take options that compose with any objective of the family
(:func:`lmloss.fused_preference_loss`'s ``wpo=`` ..., :func:`lmloss.lcpo`,
:func:`lmloss.fused_likelihood_loss`'s ``reweight=`` and ``weights=``); a recipe sets them in
``[objective]`` beside the hyper-parameters. What an option needs the trainer computes: WPO's
``log Σ_v p_v²`` comes from the engine, HyPO's on-policy samples are drawn from the model
(``[preference]``), token weights are read from a data column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lmloss.objectives.likelihood.reweight import STRATEGIES


@dataclass(frozen=True)
class Option:
    """One option: its type, its documentation and the values it takes."""

    kind: type
    doc: str
    low: float | None = None  # numbers: the inclusive lower bound
    high: float | None = None  # numbers: the upper bound
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def check(self, where: str, value: Any) -> Any:
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (self.kind is not bool and isinstance(value, bool)):
            raise TypeError(f"{where} must be {self.kind.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.kind is float:
            too_high = self.high is not None and (
                value >= self.high if self.high_open else value > self.high
            )
            if not math.isfinite(value) or (self.low is not None and value < self.low) or too_high:
                right = ")" if self.high_open else "]"
                high = "inf)" if self.high is None else f"{self.high:g}{right}"
                raise ValueError(f"{where} must be in [{self.low:g}, {high}, got {value!r}")
        return value


OPTIONS: dict[str, dict[str, Option]] = {
    "preference": {
        "wpo": Option(
            bool,
            "pairwise: weight each pair by WPO's weight (Zhou et al. 2024, arXiv:2406.11827); "
            "TRL's use_weighting",
        ),
        "wpo_clamp": Option(bool, "pairwise, with wpo: cap the pair weight at 1 (authors' code)"),
        "ld_alpha": Option(
            float,
            "pairwise: LD-DPO weight of tokens past the shorter answer (Liu et al. 2024, "
            "arXiv:2409.06411)",
            low=0.0,
            high=1.0,
        ),
        "hypo_weight": Option(
            float,
            "pairwise: HyPO's weight of the KL on on-policy samples the trainer draws "
            "(Song et al. 2024, arXiv:2406.01462; see [preference])",
            low=0.0,
        ),
        "lcpo_noise": Option(
            float,
            "pairwise: LCPO's label-noise rate of its EM re-weighting (Cao et al. 2025, "
            "arXiv:2509.24159)",
            low=0.0,
            high=0.5,
            high_open=True,
        ),
    },
    "likelihood": {
        "reweight": Option(
            str,
            "loss-based sample reweighting of each micro-batch (Sow et al. 2025, arXiv:2502.06733)",
            choices=tuple(STRATEGIES),
        ),
        "reweight_temperature": Option(float, "reweight: the softmax temperature r", low=0.0),
        "token_weights": Option(
            str,
            "a data column of token weights: a number per row (all its completion tokens) or a "
            "list with one number >= 0 per completion token",
        ),
    },
}
PAIRWISE = ("wpo", "wpo_clamp", "ld_alpha", "hypo_weight", "lcpo_noise")


def options_of(entry) -> dict[str, Option]:
    """The options an objective's family takes."""
    return OPTIONS.get(entry.family, {})


def applies(entry, key: str) -> bool:
    """Whether ``entry`` takes the option ``key`` (pairwise ones: pairwise objectives only)."""
    return key in options_of(entry) and (key not in PAIRWISE or entry.spec.kind == "Pairs")


def check(entry, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (already known to be the family's) checked for ``entry``; a ValueError
    or TypeError names the ``objective.`` key and what it needs."""
    table = options_of(entry)
    out = {key: table[key].check(f"objective.{key}", value) for key, value in options.items()}
    asked = [key for key in PAIRWISE if key in out]
    if asked and entry.spec.kind != "Pairs":
        raise ValueError(
            f"objective.{asked[0]} applies to pairwise objectives; {entry.name!r} takes "
            f"{entry.spec.kind} inputs"
        )
    per_pair = [key for key in ("wpo", "lcpo_noise") if out.get(key)]
    if per_pair and entry.spec.batch_coupled:
        raise ValueError(
            f"objective.{per_pair[0]} needs per-pair losses, but {entry.name!r} sorts the batch"
        )
    if out.get("wpo_clamp") and not out.get("wpo"):
        raise ValueError("objective.wpo_clamp = true caps WPO's pair weights: it needs wpo = true")
    if "reweight_temperature" in out and out["reweight_temperature"] == 0:
        raise ValueError("objective.reweight_temperature must be > 0, got 0.0")
    if "reweight_temperature" in out and "reweight" not in out:
        raise ValueError("objective.reweight_temperature needs objective.reweight")
    return out


def reference_lines() -> list[str]:
    """The options, for ``lmloss train --help``."""
    lines = []
    for family, table in OPTIONS.items():
        for key, option in table.items():
            lines.append(f"  {key} ({option.kind.__name__}, {family} objectives): {option.doc}")
    return lines
