"""``lmloss train``: train a causal LM with any registered objective, from a TOML recipe.

The objective is found in the registry; its family picks a mode (SFT, offline preference,
online policy optimization, distillation, see :mod:`lmloss.train.modes`); every loss runs
through the family's fused front door on hidden states and the LM head, never logits.

    >>> from lmloss.train import load_recipe, train      # doctest: +SKIP
    >>> summary = train(load_recipe("recipe.toml"))      # doctest: +SKIP

Names are imported on first use, so that ``lmloss list`` does not load the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute)
_LAZY = {
    "Recipe": ("lmloss.train.config", "Recipe"),
    "Summary": ("lmloss.train.loop", "Summary"),
    "Trainer": ("lmloss.train.loop", "Trainer"),
    "train": ("lmloss.train.loop", "train"),
    "bundled_recipes": ("lmloss.train.recipe", "bundled_recipes"),
    "load_recipe": ("lmloss.train.recipe", "load"),
    "reference_text": ("lmloss.train.recipe", "reference_text"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lmloss.train' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = list(_LAZY)
