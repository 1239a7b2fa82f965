"""``lmloss.trl.GRPOTrainer``: TRL's GRPOTrainer whose loss is any lmloss policy objective."""

from __future__ import annotations

import torch
import trl

import lmloss
import lmloss.hf
from lmloss.hf._objective import policy_needs
from lmloss.policy import fused_policy_loss
from lmloss.trl._common import config_hyper, final_hidden, require_trl_default, split_hyper

# GRPOConfig fields that are the objective's hyper-parameters (when set away from TRL's default).
_CONFIG_HYPER = {
    "epsilon": "eps_low",
    "epsilon_high": "eps_high",
    "delta": "delta",
    "importance_sampling_level": "ratio_level",
}
# TRL metric names of the objectives' metrics
_METRIC_NAMES = {
    "clip_frac_low": "clip_ratio/low_mean",
    "clip_frac_high": "clip_ratio/high_mean",
    "clip_frac": "clip_ratio/region_mean",
}
# TRL loss options that lmloss replaces by the objective's own hyper-parameters
_REPLACED = {
    "top_entropy_quantile": (1.0, "choose an entropy-aware objective (e.g. objective='gtpo')"),
    "entropy_coef": (0.0, "pass entropy_coef= as a hyper-parameter"),
    "use_adaptive_entropy": (False, "not available with lmloss objectives"),
    "off_policy_mask_threshold": (None, "not available with lmloss objectives"),
    "cast_lm_head_to_fp32": (False, "lmloss's engine accumulates in float32 already"),
}


class GRPOTrainer(trl.GRPOTrainer):
    """TRL's ``GRPOTrainer`` with the loss of the policy objective ``objective``.

    Args:
        *args, **kwargs: TRL's arguments (model, reward_funcs, args, train_dataset, ...).
        objective: a registered policy objective (default ``grpo``, TRL's
            ``loss_type="grpo"``, not TRL's default ``"dapo"``; ``dapo``, ``dr_grpo``,
            ``gspo``, ``cispo``, ``gtpo``, ... ``lmloss.list_objectives("policy")``).
        **hyper: its hyper-parameters (keywords that are not TRL's). The KL coefficient is
            ``GRPOConfig.beta`` (TRL loads the reference model and computes its log-probs from
            it), and ``epsilon``, ``epsilon_high``, ``delta``, ``importance_sampling_level``
            carry over when set away from TRL's defaults.

    TRL generates, scores and computes the advantages, the old and the reference log-probs;
    the loss of each micro-batch is the objective's (its own aggregation over that
    micro-batch) on log-probs the fused engine computes from the hidden states at the
    completion positions, divided by the gradient accumulation steps.
    """

    def __init__(self, *args, objective: str = "grpo", **kwargs) -> None:
        trainer_kwargs, hyper = split_hyper(trl.GRPOTrainer.__init__, kwargs)
        if "beta" in hyper:
            raise ValueError("set the KL coefficient with GRPOConfig(beta=...), not beta=")
        super().__init__(*args, **trainer_kwargs)
        for field, (default, why) in _REPLACED.items():
            require_trl_default(self.args, field, default, why)
        if self.args.use_vllm and self.args.vllm_importance_sampling_correction:
            raise ValueError(
                "GRPOConfig.vllm_importance_sampling_correction is not applied by lmloss "
                "objectives; set it to False"
            )
        takes = lmloss.describe(objective)["hyper"]
        config = config_hyper(self.args, _CONFIG_HYPER, takes)
        if "eps_low" in config and self.args.epsilon_high is None and "eps_high" in takes:
            config["eps_high"] = config["eps_low"]  # TRL clips symmetrically then
        kl = {"beta": self.beta} if "beta" in takes else {}
        if self.beta != 0 and "kl_importance_weighted" in takes:
            kl["kl_importance_weighted"] = self.args.use_bias_correction_kl
        self.hyper = {**config, **kl, **hyper}
        self.needs = policy_needs(objective, self.hyper)
        if self.beta != 0 and not kl:
            raise ValueError(f"objective {objective!r} has no KL term; set GRPOConfig(beta=0.0)")
        lmloss.hf.patch(self.model)  # gives the hidden states through the model's wrappers

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask * inputs["tool_mask"] if "tool_mask" in inputs else completion_mask
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        steps = completion_ids.size(1)
        hidden = final_hidden(model, input_ids=input_ids, attention_mask=attention_mask)
        head = lmloss.hf.head_of(self.model)
        out = fused_policy_loss(
            self.needs.name,
            hidden=hidden[:, -steps - 1 : -1],
            head=head,
            targets=completion_ids.masked_fill(mask == 0, -100),
            advantages=inputs["advantages"],
            mask=mask.to(hidden.dtype),
            old_logps=inputs.get("old_per_token_logps"),
            ref_logps=inputs.get("ref_per_token_logps") if self.beta != 0 else None,
            want_entropy=True,
            temperature=self.temperature,
            **self.hyper,
        )
        for key, value in out.metrics.items():
            value = self.accelerator.gather(value.detach().float().mean().reshape(1)).mean().item()
            self._metrics[mode][_METRIC_NAMES.get(key, key)].append(value)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        return out.loss / accumulation
