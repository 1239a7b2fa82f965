"""lmloss inside TRL: TRL's trainers with the loss computed by lmloss's fused engine.

``lmloss.trl.SFTTrainer``, ``lmloss.trl.DPOTrainer``, ``lmloss.trl.GRPOTrainer`` and
``lmloss.trl.RewardTrainer`` are TRL's classes with one more argument, ``objective=`` (any
registered objective of the family; pairwise reward objectives for the reward trainer),
and its hyper-parameters as keywords. Data handling, the reference model, PEFT, generation,
logging and callbacks are TRL's; only the loss changes. Needs the ``trl`` extra
(``pip install -e '.[hf,trl]'`` in the lmloss clone); ``import lmloss`` never imports TRL,
only ``import lmloss.trl`` does.
"""

from __future__ import annotations

from lmloss._extras import missing_extra

try:
    import trl  # noqa: F401
except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
    raise missing_extra(error, "lmloss.trl", "trl") from None

from lmloss.trl.dpo import DPOTrainer
from lmloss.trl.grpo import GRPOTrainer
from lmloss.trl.reward import RewardTrainer
from lmloss.trl.sft import SFTTrainer

__all__ = ["DPOTrainer", "GRPOTrainer", "RewardTrainer", "SFTTrainer"]
