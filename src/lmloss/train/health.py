"""Whether a run went wrong, in plain words: worse held-out numbers, likely reward hacking.

Two checks, both on what the run already measured:

* **regression**: a held-out metric is worse after training than before (accuracy lower,
  held-out loss higher), compared on the same problems (``eval.size`` before and after);
* **reward hacking**: one reward component rose while the verifier's reward fell, comparing
  the mean of the first and the last quarter of the logged steps. The policy found reward
  the verifier does not grant (Skalse et al. 2022, "Defining and Characterizing Reward
  Hacking"): the textbook case is a format reward that pays for a bare number, right or
  wrong, which GRPO earns by dropping the working that made the answers right.

A change counts only when it is at least :data:`MIN_EFFECT` and :data:`MIN_Z` times its
standard error ``sqrt(var_first / q + var_last / q)`` over the ``q`` steps of each quarter,
so step-to-step sampling noise does not trip the flag.

The verifier is ``policy.verifier``, or by default the accuracy grader of the run's task
(``eval.task``, else ``data.task``; ``exact_numeric`` for arithmetic) when it is one of
``policy.rewards``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from lmloss.train import tasks
from lmloss.train.config import Recipe

# held-out metric -> (label, higher is better, format)
HELDOUT = {
    "accuracy": ("held-out accuracy", True, ".3f"),
    "eval_loss": ("held-out loss", False, ".4g"),
}
MIN_EFFECT = 0.05  # a smaller move of a 0/1 reward's mean is not worth a flag
MIN_Z = 2.0  # the move must stand out of the step-to-step noise by two standard errors
MIN_STEPS = 8  # fewer logged steps: quarters of one step have no noise estimate


@dataclass(frozen=True)
class Finding:
    """One thing that went wrong: ``kind`` is ``"regression"`` or ``"reward_hacking"``."""

    kind: str
    message: str
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def verifier_of(recipe: Recipe) -> str | None:
    """The reward that says whether an answer is right (None: no such reward in the run)."""
    policy = recipe.policy
    if recipe.entry.family != "policy":
        return None
    if policy.verifier is not None:
        return policy.verifier
    for task in (recipe.eval.task, recipe.data.task):
        grader = tasks.GRADERS.get(task or "", {}).get("accuracy")
        if grader in policy.rewards:
            return grader
    return None


def regressions(before: dict, after: dict) -> list[Finding]:
    """Held-out metrics (``{name: value}``) that are worse ``after`` than ``before``."""
    found = []
    for metric, (label, higher_is_better, spec) in HELDOUT.items():
        if metric not in before or metric not in after:
            continue
        b, a = before[metric], after[metric]
        if (a < b) if higher_is_better else (a > b):
            found.append(
                Finding(
                    "regression",
                    f"{label} is worse after training than before: {b:{spec}} -> {a:{spec}}",
                    {"metric": metric, "before": b, "after": a},
                )
            )
    return found


@dataclass(frozen=True)
class Trend:
    """Means of the first and last quarter of a series, and the move's size in standard
    errors (``z``)."""

    first: float
    last: float
    z: float

    @classmethod
    def of(cls, values: list[float]) -> Trend:
        quarter = len(values) // 4
        head, tail = values[:quarter], values[-quarter:]
        first, last = statistics.fmean(head), statistics.fmean(tail)
        error = math.sqrt((statistics.variance(head) + statistics.variance(tail)) / quarter)
        move = last - first
        z = move / error if error > 0 else math.copysign(math.inf, move) if move else 0.0
        return cls(first, last, z)

    def moved(self, direction: int) -> bool:
        """Rose (``direction = 1``) or fell (``-1``) by more than effect and noise."""
        return direction * (self.last - self.first) >= MIN_EFFECT and direction * self.z >= MIN_Z


def _logged(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))]


def reward_hacking(rows: list[dict], verifier: str) -> list[Finding]:
    """Reward components of the logged ``rows`` (``reward/<name>`` keys of metrics.jsonl)
    that rose while ``reward/<verifier>`` fell."""
    key = f"reward/{verifier}"
    values = _logged(rows, key)
    if len(values) < MIN_STEPS or not (judged := Trend.of(values)).moved(-1):
        return []
    found = []
    for other in sorted({k for r in rows for k in r if k.startswith("reward/") and k != key}):
        values = _logged(rows, other)
        if len(values) < MIN_STEPS or not (trend := Trend.of(values)).moved(1):
            continue
        found.append(
            Finding(
                "reward_hacking",
                f"likely reward hacking: {other} rose {trend.first:.3g} -> {trend.last:.3g} "
                f"while the verifier's {key} fell {judged.first:.3g} -> {judged.last:.3g} "
                "(first vs last quarter of the steps)",
                {
                    "reward": other,
                    "first": trend.first,
                    "last": trend.last,
                    "verifier": key,
                    "verifier_first": judged.first,
                    "verifier_last": judged.last,
                },
            )
        )
    return found


@dataclass(frozen=True)
class Health:
    """What went wrong (``findings``) and what was checked and held (``checked``, in words)."""

    findings: list[Finding]
    checked: list[str]

    def line(self) -> str:
        """The run's last console line."""
        if self.findings:
            return "WARNING: this run went wrong: " + "; ".join(f.message for f in self.findings)
        if not self.checked:
            return "not checked: no held-out evaluation before and after, and no verifier reward"
        return "ok: " + "; ".join(self.checked)

    def as_dict(self) -> dict:
        kinds = {f.kind for f in self.findings}
        return {
            "ok": not self.findings,
            "regressed": "regression" in kinds,
            "reward_hacking": "reward_hacking" in kinds,
            "findings": [f.as_dict() for f in self.findings],
            "checked": self.checked,
        }


def assess(before: dict, after: dict, rows: list[dict], verifier: str | None) -> Health:
    """The health of a run from its held-out metrics before and after (``{name: value}``,
    empty when not measured) and its logged step rows."""
    findings = regressions(before, after)
    checked = []
    for metric, (label, _, spec) in HELDOUT.items():
        if metric in before and metric in after:
            checked.append(f"{label} {before[metric]:{spec}} -> {after[metric]:{spec}}")
    if verifier is not None and len(_logged(rows, f"reward/{verifier}")) >= MIN_STEPS:
        findings += reward_hacking(rows, verifier)
        checked.append(f"no reward rose while the verifier's reward/{verifier} fell")
    if findings:
        checked = []
    return Health(findings, checked)
