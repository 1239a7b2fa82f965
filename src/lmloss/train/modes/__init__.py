"""Training modes by objective family: how rows become batches and batches a loss.

The trainer looks up the objective in the registry and its family here; a new objective of
an existing family needs no trainer change.
"""

from __future__ import annotations

from lmloss.train.formats import require_trainable
from lmloss.train.modes.base import EXAMPLES, TOKENS, Batch, Context, Example, Mode
from lmloss.train.modes.distill import DistillMode
from lmloss.train.modes.policy import PolicyMode
from lmloss.train.modes.preference import PreferenceMode
from lmloss.train.modes.reward import RewardMode
from lmloss.train.modes.sft import SFTMode

MODES: dict[str, type[Mode]] = {
    mode.family: mode for mode in (SFTMode, PreferenceMode, PolicyMode, DistillMode, RewardMode)
}


def mode_for(family: str) -> type[Mode]:
    """The mode class of an objective family; families without one cannot be trained."""
    require_trainable(family)
    return MODES[family]


def mode_of(recipe) -> type[Mode]:
    """The mode that trains ``recipe``: its objective family's, or the online preference
    mode when the recipe samples its pairs (``[online]``)."""
    if recipe.online.enabled:
        from lmloss.train.modes.online_preference import OnlinePreferenceMode

        return OnlinePreferenceMode
    return mode_for(recipe.entry.family)


__all__ = [
    "EXAMPLES",
    "MODES",
    "TOKENS",
    "Batch",
    "Context",
    "Example",
    "Mode",
    "mode_for",
    "mode_of",
]
