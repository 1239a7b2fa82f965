"""``lmloss.trl.DPOTrainer``: TRL's DPOTrainer whose loss is any lmloss preference objective."""

from __future__ import annotations

import contextlib

import torch
import trl
from accelerate.utils import is_peft_model
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

import lmloss.hf
from lmloss.hf._objective import preference_needs
from lmloss.preference import fused_preference_loss
from lmloss.trl._common import (
    config_hyper,
    detached_head,
    final_hidden,
    masked_mean,
    require_trl_default,
    split_hyper,
    token_metrics,
)

# DPOConfig fields that carry over to the objective's hyper-parameters of the same meaning.
_CONFIG_HYPER = {"beta": "beta"}


class DPOTrainer(trl.DPOTrainer):
    """TRL's ``DPOTrainer`` with the loss of the preference objective ``objective``.

    Args:
        *args, **kwargs: TRL's arguments (model, ref_model, args, train_dataset, peft_config, ...).
        objective: a registered preference objective with paired inputs (default ``dpo``,
            TRL's ``loss_type="sigmoid"``; ``simpo``, ``ipo``, ``nca``, ``tdpo1``, ``cpo``, ...
            ``lmloss.list_objectives("preference")``); an objective of another family is
            refused with the trainer that takes it.
        **hyper: its hyper-parameters (keywords that are not TRL's); ``DPOConfig.beta``
            carries over when set away from TRL's default. ``DPOConfig.use_weighting`` and
            ``ld_alpha`` become lmloss's ``wpo`` and ``ld_alpha`` options.

    The statistics the objective declares (per-token log-probs, ``sum_sq_probs`` for WPO, the
    per-token KL to the reference for TDPO) come from the fused engine on the hidden states of
    TRL's concatenated ``[chosen; rejected]`` batch. A reference-free objective (SimPO, CPO,
    ORPO, ...) never runs the reference model: the one TRL made at construction is released.
    """

    def __init__(self, *args, objective: str = "dpo", **kwargs) -> None:
        trainer_kwargs, hyper = split_hyper(trl.DPOTrainer.__init__, kwargs)
        super().__init__(*args, **trainer_kwargs)
        for field, why in (
            ("loss_type", ["sigmoid"]),
            ("loss_weights", None),
            ("f_divergence_type", "reverse_kl"),
        ):
            require_trl_default(self.args, field, why, "choose the loss with objective=")
        self.needs = preference_needs(objective, hyper)
        if self.needs.input_kind != "Pairs":
            raise ValueError(
                f"objective {objective!r} takes {self.needs.input_kind} inputs; DPOTrainer "
                "feeds chosen/rejected pairs"
            )
        takes = lmloss.describe(self.needs.name)["hyper"]
        defaults = config_hyper(self.args, _CONFIG_HYPER, takes)
        options = {"wpo": True} if self.args.use_weighting else {}
        if self.args.ld_alpha is not None:
            options["ld_alpha"] = self.args.ld_alpha
        self.hyper = {**defaults, **options, **hyper}
        if not self.needs.reference:
            self.ref_model = None
        lmloss.hf.patch(self.model)  # gives the hidden states through the model's wrappers
        if self.ref_model is not None:
            lmloss.hf.patch(self.ref_model)

    def _reference_hidden(self, inputs: dict) -> tuple[torch.Tensor, lmloss.hf.Head]:
        """The reference model's hidden states (or the policy's with its adapters off)."""
        adapters_off = contextlib.nullcontext()
        reference = self.ref_model
        if reference is None and is_peft_model(self.model):
            peft_model = self.accelerator.unwrap_model(self.model)
            name = "ref" if "ref" in peft_model.peft_config else None
            adapters_off, reference = use_adapter(peft_model, adapter_name=name), self.model
        if reference is None:
            raise ValueError(
                f"objective {self.needs.name!r} needs a reference model: pass ref_model=, a PEFT "
                "model, or DPOConfig(precompute_ref_log_probs=True)"
            )
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapters_off,
        ):
            hidden = final_hidden(reference, **inputs)
        return hidden, detached_head(reference)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        model_inputs = {
            k: v
            for k, v in inputs.items()
            if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
        }
        completion = inputs["completion_mask"][:, 1:]
        targets = inputs["input_ids"][:, 1:].masked_fill(completion == 0, -100)
        hidden = final_hidden(model, **model_inputs)[:, :-1]
        head = lmloss.hf.head_of(self.model)
        reference = {}
        if self.needs.reference and self.precompute_ref_logps:
            reference = {k: inputs[k] for k in ("ref_chosen_logps", "ref_rejected_logps")}
        elif self.needs.reference:
            ref_hidden, ref_head = self._reference_hidden(model_inputs)
            reference = {"ref_hidden": ref_hidden[:, :-1], "ref_head": ref_head}
        out = fused_preference_loss(
            self.needs.name,
            hidden=hidden,
            head=head,
            targets=targets,
            **reference,
            **self.hyper,
        )
        self._log_metrics(mode, out.metrics, hidden, head, targets, inputs)
        if return_outputs:
            with torch.no_grad():
                return out.loss, model(**model_inputs)
        return out.loss

    def _log_metrics(self, mode, metrics, hidden, head, targets, inputs) -> None:
        """TRL's DPO metrics: the objective's rewards and log-probs, and per-token statistics."""
        logs = self._metrics[mode]
        for key, value in metrics.items():
            logs[key].append(self.accelerator.gather(value.detach()).float().mean().item())
        stats = token_metrics(hidden, head, targets, ("entropy", "mean_logit", "is_argmax"))
        valid = (targets != -100).to(hidden.dtype)
        chosen, rejected = valid.chunk(2)
        logs["entropy"].append(masked_mean(stats["entropy"], valid, self.accelerator))
        for name, part, rows in (("chosen", chosen, 0), ("rejected", rejected, 1)):
            mean_logit = stats["mean_logit"].chunk(2)[rows]
            logs[f"logits/{name}"].append(masked_mean(mean_logit, part, self.accelerator))
        accuracy = masked_mean(stats["is_argmax"].chunk(2)[0], chosen, self.accelerator)
        logs["mean_token_accuracy"].append(accuracy)
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum())
            self._total_train_tokens += tokens.sum().item() // self._tp_size
        logs["num_tokens"] = [self._total_train_tokens]
