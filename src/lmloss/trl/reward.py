"""``lmloss.trl.RewardTrainer``: TRL's RewardTrainer whose loss is an lmloss reward objective."""

from __future__ import annotations

import torch
import trl

from lmloss.classify import reward_model_loss, reward_objective
from lmloss.trl._common import split_hyper


class RewardTrainer(trl.RewardTrainer):
    """TRL's ``RewardTrainer`` with the loss of the pairwise objective ``objective``.

    Args:
        *args, **kwargs: TRL's arguments (model, args, train_dataset, peft_config, ...).
        objective: a pairwise reward-model objective (``bradley_terry``,
            ``lmloss.classify.PAIRWISE_SCORE_OBJECTIVES``).
        **hyper: its hyper-parameters (keywords that are not TRL's);
            ``RewardConfig.center_rewards_coefficient`` carries over when set.

    Data, the model (``AutoModelForSequenceClassification`` with one label), the optional
    ``margin`` column and TRL's logs (``accuracy``, ``margin``, ``min/mean/max_reward``) are
    TRL's; the loss is :func:`lmloss.reward_model_loss`.
    """

    def __init__(self, *args, objective: str = "bradley_terry", **kwargs) -> None:
        trainer_kwargs, hyper = split_hyper(trl.RewardTrainer.__init__, kwargs)
        super().__init__(*args, **trainer_kwargs)
        coefficient = self.args.center_rewards_coefficient
        carried = {} if coefficient is None else {"center_rewards_coefficient": coefficient}
        self.hyper = {**carried, **hyper}
        self.objective = reward_objective(objective, self.hyper).name

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        margin = inputs.pop("margin", None)
        outputs = model(**inputs, use_cache=False)
        chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
        out = reward_model_loss(
            self.objective, chosen=chosen, rejected=rejected, margin=margin, **self.hyper
        )
        self._log_metrics(mode, out.metrics, outputs.logits, inputs)
        return (out.loss, outputs) if return_outputs else out.loss

    def _log_metrics(self, mode, metrics, scores, inputs) -> None:
        """TRL's reward metrics: token count, reward range, pairwise accuracy and margin."""
        logs = self._metrics[mode]
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum())
            self._total_train_tokens += tokens.sum().item() // self._tp_size
        logs["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            every = self.accelerator.gather(scores)
            logs["min_reward"].append(every.min().item())
            logs["mean_reward"].append(every.mean().item())
            logs["max_reward"].append(every.max().item())
        for key in ("accuracy", "margin"):
            logs[key].append(self.accelerator.gather_for_metrics(metrics[key]).mean().item())
