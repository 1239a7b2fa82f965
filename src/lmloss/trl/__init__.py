"""lmloss inside TRL: TRL's trainers with the loss computed by lmloss's fused engine.

``lmloss.trl.SFTTrainer``, ``lmloss.trl.DPOTrainer`` and ``lmloss.trl.GRPOTrainer`` are TRL's
classes with one more argument, ``objective=`` (any registered objective of the family),
and its hyper-parameters as keywords. Data handling, the reference model, PEFT, generation,
logging and callbacks are TRL's; only the loss changes. Needs ``pip install lmloss[trl]``;
importing :mod:`lmloss` does not import TRL (this package loads it on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SFTTrainer": "lmloss.trl.sft",
    "DPOTrainer": "lmloss.trl.dpo",
    "GRPOTrainer": "lmloss.trl.grpo",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmloss.trl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = list(_LAZY)
