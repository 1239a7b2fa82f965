"""The judge of online modes: reward functions and an optional reward model, weighted.

``total = Σ_k w_k · f_k(completions, prompts, **columns) + w_rm · RM(prompt, completion)``.
The policy mode turns the totals of a group into advantages; the online preference mode
pairs the best and worst completion of each prompt by them. Each part's mean is logged
(``reward/<name>``; the reward model as ``reward/reward_model``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from lmloss.train import rewards as reward_fns
from lmloss.train.config import DataConfig

MODEL_KEY = "reward_model"


class Judge:
    """Grades completions; built from a recipe section's ``rewards``, ``reward_weights``,
    ``reward_model`` and ``reward_model_weight``."""

    def __init__(
        self,
        functions: Sequence[reward_fns.Reward],
        model=None,
        model_weight: float = 1.0,
    ) -> None:
        if not functions and model is None:
            raise ValueError("the judge needs a reward function or a reward model")
        self.functions, self.model, self.model_weight = list(functions), model, model_weight

    @classmethod
    def from_section(
        cls,
        section,
        *,
        where: str,
        data: DataConfig,
        device: torch.device | str = "cpu",
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> Judge:
        """The judge a ``[policy]`` or ``[online]`` section describes (``where`` names it)."""
        functions = (
            reward_fns.build(section.rewards, section.reward_weights) if section.rewards else []
        )
        model = None
        if section.reward_model is not None:
            from lmloss.train.reward_model import RewardModel

            model = RewardModel(
                section.reward_model,
                data=data,
                device=device,
                autocast=autocast,
                where=f"{where}.reward_model",
            )
        return cls(functions, model, section.reward_model_weight)

    def grade(
        self, rows: list[dict], completions: list[str], group_size: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted totals ``[N]`` (host float32) of ``group_size`` completions per row of
        ``rows`` (in row order), and each part's mean. A row's other columns go to the reward
        functions as keyword lists, as TRL passes them."""
        prompts = [row["prompt"] for row in rows for _ in range(group_size)]
        names = [k for k in rows[0] if k != "prompt"]
        columns = {k: [row[k] for row in rows for _ in range(group_size)] for k in names}
        if self.functions:
            total, means = reward_fns.score(self.functions, completions, prompts, columns)
        else:
            total, means = torch.zeros(len(completions), device="cpu"), {}  # host rewards
        if self.model is not None:
            values = self.model(prompts, completions)
            if not bool(torch.isfinite(values).all()):
                raise reward_fns.RewardError(
                    f"reward model {self.model.name!r} gave a non-finite score"
                )
            total = total + self.model_weight * values
            means[MODEL_KEY] = float(values.mean())
        return total, means
