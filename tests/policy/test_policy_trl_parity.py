"""Numerical parity with TRL 1.16 ``GRPOTrainer._compute_loss`` and ``RLOOTrainer._compute_loss``.

TRL's own methods are called, unmodified, on a minimal stand-in object that carries the
attributes they read (config values, a one-process accelerator, a metrics dict) and whose
``_get_per_token_logps_and_entropies`` returns our random per-token log-probabilities and
entropies instead of running a model. TRL's advantage computation is inline in
``_generate_and_score_completions`` (it needs a model and reward functions), so its steps are
reproduced here with TRL's own ``nanstd``.
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch
import trl.trainer.grpo_trainer as trl_grpo
import trl.trainer.rloo_trainer as trl_rloo
from trl.trainer.utils import nanstd

import lmloss

B, T, G = 8, 6, 4
MAX_COMPLETION = 10


class OneProcess:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64}
    logps = (-torch.rand(B, T, generator=g, **f64) * 2).requires_grad_()
    # log-probabilities stay <= 0 (the inputs refuse a probability above 1)
    old = (logps.detach() + 0.25 * torch.randn(B, T, generator=g, **f64)).clamp(max=0.0)
    ref = (logps.detach() + 0.25 * torch.randn(B, T, generator=g, **f64)).clamp(max=0.0)
    entropy = (torch.rand(B, T, generator=g, **f64) * 2).requires_grad_()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    rewards = torch.randint(0, 3, (B,), generator=g).to(torch.float64)
    adv = lmloss.advantages("grpo", rewards, group_size=G)
    return logps, old, ref, entropy, mask, adv


def stand_in(trainer_cls, logps, entropy, **config):
    """An object with what ``_compute_loss`` reads; config keys override the defaults."""
    args = types.SimpleNamespace(
        delta=None,
        use_bias_correction_kl=False,
        sapo_temperature_pos=1.0,
        sapo_temperature_neg=1.05,
        vespo_k_pos=2.0,
        vespo_lambda_pos=3.0,
        vespo_k_neg=3.0,
        vespo_lambda_neg=2.0,
        steps_per_generation=1,
    )
    obj = types.SimpleNamespace(
        args=args,
        loss_type="grpo",
        importance_sampling_level="token",
        beta=0.0,
        epsilon_low=0.2,
        epsilon_high=0.2,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        use_adaptive_entropy=False,
        entropy_coef=0.0,
        max_completion_length=MAX_COMPLETION,
        current_gradient_accumulation_steps=1,
        model=types.SimpleNamespace(training=True),
        accelerator=OneProcess(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        get_gamma_weights=getattr(trainer_cls, "get_gamma_weights", None),
    )
    for key, value in config.items():
        target = args if hasattr(args, key) else obj
        setattr(target, key, value)
    obj._get_per_token_logps_and_entropies = lambda *a, **k: (logps, entropy, None)
    return obj


def trl_loss(trainer_cls, logps, entropy, mask, batch, **config):
    obj = stand_in(trainer_cls, logps, entropy, **config)
    data = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        **batch,
    }
    loss = trainer_cls._compute_loss(obj, None, data)
    return loss, {k: v[-1] for k, v in obj._metrics["train"].items()}


# (TRL config, our name, our hyper-parameters)
GRPO_CASES = {
    "grpo": ({"loss_type": "grpo"}, "grpo", {}),
    "grpo_kl": (
        {"loss_type": "grpo", "beta": 0.04, "use_bias_correction_kl": True},
        "grpo",
        {"beta": 0.04, "kl_importance_weighted": True},
    ),
    "bnpo": (
        {"loss_type": "bnpo", "beta": 0.04},
        "bnpo",
        {"beta": 0.04, "eps_high": 0.2, "dual_clip": None, "aggregation": "token_mean"},
    ),
    "dr_grpo": (
        {"loss_type": "dr_grpo", "beta": 0.04},
        "dr_grpo",
        {"beta": 0.04, "max_tokens": MAX_COMPLETION},
    ),
    "dapo": (
        {"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.04},
        "dapo",
        {"beta": 0.04, "num_items": 40.0},
    ),
    "dapo_delta": (
        {"loss_type": "dapo", "epsilon_high": 0.28, "delta": 1.1},
        "dapo",
        {"delta": 1.1, "num_items": 40.0},
    ),
    "cispo": (
        {"loss_type": "cispo", "epsilon_high": 1.15, "beta": 0.04},
        "cispo",
        {"beta": 0.04, "eps_high": 0.15, "num_items": 40.0},
    ),
    # TRL builds the SAPO temperatures with torch.where on Python floats, which rounds them
    # through float32 (1.05 -> 1.0499999523); an exactly representable τ_neg keeps the
    # comparison exact.
    "sapo": (
        {"loss_type": "sapo", "beta": 0.04, "sapo_temperature_neg": 1.25},
        "sapo",
        {"beta": 0.04, "temperature_neg": 1.25},
    ),
    "gspo": (
        {
            "loss_type": "grpo",
            "importance_sampling_level": "sequence",
            "epsilon_low": 0.05,
            "epsilon_high": 0.08,
        },
        "gspo",
        {"eps_low": 0.05, "eps_high": 0.08},
    ),
    "luspo": (
        {
            "loss_type": "luspo",
            "importance_sampling_level": "sequence",
            "epsilon_low": 0.05,
            "epsilon_high": 0.08,
        },
        "luspo",
        {"eps_low": 0.05, "eps_high": 0.08},
    ),
    "vespo": ({"loss_type": "vespo"}, "vespo", {"num_items": 40.0}),
    "entropy_bonus": (
        {
            "loss_type": "dapo",
            "epsilon_high": 0.28,
            "_entropy_bonus_enabled": True,
            "entropy_coef": 0.05,
        },
        "dapo",
        {"entropy_coef": 0.05, "num_items": 40.0},
    ),
}


@pytest.mark.parametrize("case", sorted(GRPO_CASES))
def test_grpo_trainer_loss_parity(case):
    config, name, hyper = GRPO_CASES[case]
    logps, old, ref, entropy, mask, adv = inputs(seed=len(case))
    batch = {
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(40.0),
    }
    theirs, metrics = trl_loss(trl_grpo.GRPOTrainer, logps, entropy, mask, batch, **config)
    their_grads = torch.autograd.grad(theirs, (logps, entropy), allow_unused=True)
    ours = lmloss.policy_loss(
        name,
        logps=logps,
        old_logps=old,
        ref_logps=ref,
        entropy=entropy,
        mask=mask,
        advantages=adv,
        **hyper,
    )
    our_grads = torch.autograd.grad(ours.loss, (logps, entropy), allow_unused=True)
    torch.testing.assert_close(ours.loss, theirs, rtol=1e-12, atol=1e-14)
    for mine, trl in zip(our_grads, their_grads, strict=True):
        if trl is None:
            assert mine is None or torch.count_nonzero(mine) == 0
        else:
            torch.testing.assert_close(mine, trl, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours.metrics["entropy"].item(), metrics["entropy"])
    # TRL logs the importance-weighted KL when it weights it; ours logs the plain estimate.
    if config.get("beta") and not config.get("use_bias_correction_kl"):
        torch.testing.assert_close(ours.metrics["kl"].item(), metrics["kl"])
    # TRL counts clipping on the δ-capped ratio (and per sequence for GSPO/LUSPO): not compared.
    if "clip_ratio/low_mean" in metrics and case not in ("gspo", "luspo", "dapo_delta"):
        for side in ("low", "high"):
            ours_frac = ours.metrics[f"clip_frac_{side}"].item()
            torch.testing.assert_close(ours_frac, metrics[f"clip_ratio/{side}_mean"])


def test_rloo_trainer_loss_parity():
    logps, old, _, entropy, mask, adv = inputs(seed=5)
    seq_old = (old * mask).sum(1)
    obj_config = {"epsilon_low": 0.2, "epsilon_high": 0.28}
    batch = {"advantages": adv, "old_logps": seq_old}
    theirs, _ = trl_loss(trl_rloo.RLOOTrainer, logps, entropy, mask, batch, **obj_config)
    ours = lmloss.policy_loss(
        "loop", logps=logps, old_logps=old, mask=mask, advantages=adv, eps_high=0.28
    )
    torch.testing.assert_close(ours.loss, theirs, rtol=1e-12, atol=1e-14)
    (g_ours,) = torch.autograd.grad(ours.loss, logps)
    (g_trl,) = torch.autograd.grad(theirs, logps)
    torch.testing.assert_close(g_ours, g_trl, rtol=1e-12, atol=1e-14)


def test_advantages_follow_trl_steps():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randint(0, 4, (12,), generator=g).to(torch.float64)
    grouped = rewards.view(-1, G)
    mean = grouped.nanmean(dim=1).repeat_interleave(G)
    std = nanstd(grouped, dim=1).repeat_interleave(G)
    trl_grpo_adv = torch.nan_to_num((rewards - mean) / (std + 1e-4), nan=0.0)
    torch.testing.assert_close(lmloss.advantages("grpo", rewards, group_size=G), trl_grpo_adv)
    torch.testing.assert_close(lmloss.advantages("dr_grpo", rewards, group_size=G), rewards - mean)
    batch_std = nanstd(rewards).expand_as(rewards)
    torch.testing.assert_close(
        lmloss.advantages("grpo", rewards, group_size=G, scale="batch"),
        (rewards - mean) / (batch_std + 1e-4),
    )
    # RLOOTrainer: leave-one-out baseline over the group
    sums = grouped.sum(dim=1, keepdim=True)
    rloo = (grouped - (sums - grouped) / (G - 1)).view(-1)
    torch.testing.assert_close(lmloss.advantages("rloo", rewards, group_size=G), rloo)
