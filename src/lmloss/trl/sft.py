"""``lmloss.trl.SFTTrainer``: TRL's SFTTrainer whose loss is a fused lmloss likelihood objective."""

from __future__ import annotations

import torch
import trl

import lmloss.hf
from lmloss.hf.patch import causal_lm_loss
from lmloss.trl._common import (
    final_hidden,
    masked_mean,
    require_trl_default,
    split_hyper,
    token_metrics,
)


class SFTTrainer(trl.SFTTrainer):
    """TRL's ``SFTTrainer`` with the model patched by :func:`lmloss.hf.patch`.

    Args:
        *args, **kwargs: TRL's arguments (model, args, train_dataset, peft_config, ...).
        objective: a likelihood objective (default ``ce``, TRL's ``loss_type="nll"``;
            ``label_smoothing``, ``focal``, ``dco``, ...).
        **hyper: its hyper-parameters (keywords that are not TRL's arguments).

    The loss is ``Σ ℓ_t / n`` over the completion tokens TRL's collator marks, ``n`` the
    trained tokens of the whole optimizer step (``num_items_in_batch``), as TRL's own
    ``loss_type="nll"``; the logits are never built. The ``entropy`` and
    ``mean_token_accuracy`` metrics cost one more forward pass over the vocabulary, without
    gradient.
    """

    def __init__(self, *args, objective: str = "ce", **kwargs) -> None:
        trainer_kwargs, hyper = split_hyper(trl.SFTTrainer.__init__, kwargs)
        super().__init__(*args, **trainer_kwargs)
        require_trl_default(self.args, "loss_type", "nll", "pass objective= instead")
        require_trl_default(
            self.args, "label_smoothing_factor", 0.0, "use objective='label_smoothing'"
        )
        lmloss.hf.patch(self.model, objective, **hyper)  # checks objective and hyper-parameters
        self.objective, self.hyper = objective, hyper

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        labels, shift_labels = inputs.pop("labels", None), inputs.pop("shift_labels", None)
        inputs.pop("use_cache", None)
        hidden = final_hidden(model, **inputs)
        out = causal_lm_loss(
            self.model,
            hidden,
            labels=labels,
            shift_labels=shift_labels,
            num_items_in_batch=num_items_in_batch,
            objective=self.objective,
            **self.hyper,
        )
        loss = out.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        targets = labels[:, 1:] if shift_labels is None else shift_labels
        hidden = hidden[:, :-1] if shift_labels is None else hidden
        stats = token_metrics(
            hidden, lmloss.hf.head_of(self.model), targets, ("entropy", "is_argmax")
        )
        valid = (targets != -100).to(hidden.dtype)
        self._metrics[mode]["entropy"].append(
            masked_mean(stats["entropy"], valid, self.accelerator)
        )
        accuracy = masked_mean(stats["is_argmax"], valid, self.accelerator)
        self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        if mode == "train" and "attention_mask" in inputs:
            tokens = (
                self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            )
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if return_outputs:  # evaluation asked for logits (compute_metrics): one more forward
            with torch.no_grad():
                return loss, model(**inputs)
        return loss
