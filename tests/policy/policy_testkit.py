"""Shared random inputs for the policy-family tests (float64, small shapes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import lmloss

POLICY_NAMES = lmloss.list_objectives("policy")
GROUP = 3


@dataclass
class Case:
    logps: torch.Tensor  # leaf, requires grad
    old_logps: torch.Tensor
    ref_logps: torch.Tensor
    proxy_logps: torch.Tensor
    entropy: torch.Tensor
    token_ids: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor


def make_case(seed: int = 0, batch: int = 6, length: int = 7, spread: float = 0.3) -> Case:
    """Groups of ``GROUP`` completions with varied lengths (one row fully masked is avoided)."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64
    logps = (-torch.rand(batch, length, generator=g, dtype=dtype) * 3 - 0.05).requires_grad_()
    # log-probabilities stay <= 0 (the inputs refuse a probability above 1)
    old = (logps.detach() + spread * torch.randn(batch, length, generator=g, dtype=dtype)).clamp(
        max=0.0
    )
    ref = (logps.detach() + spread * torch.randn(batch, length, generator=g, dtype=dtype)).clamp(
        max=0.0
    )
    proxy = logps.detach() + torch.randn(batch, length, generator=g, dtype=dtype)
    entropy = torch.rand(batch, length, generator=g, dtype=dtype) * 1.2
    token_ids = torch.randint(0, 3, (batch, length), generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(dtype)
    rewards = torch.randint(0, 2, (batch,), generator=g).to(dtype)
    rewards[0], rewards[1] = 1.0, 0.0  # at least one informative group
    adv = lmloss.advantages("grpo", rewards, group_size=GROUP)
    return Case(logps, old, ref, proxy, entropy, token_ids, mask, rewards, adv)


def extra_inputs(name: str, case: Case) -> dict:
    """Inputs and hyper-parameters a name needs beyond the common ones."""
    if name == "gtpo":
        return {"token_ids": case.token_ids, "group_size": GROUP}
    if name == "lp_reg":
        return {"proxy_logps": case.proxy_logps, "neg_fraction": 0.3}
    if name == "clip_cov":
        return {"generator": torch.Generator().manual_seed(0), "clip_fraction": 0.2}
    if name == "kl_cov":
        return {"kl_fraction": 0.2}
    return {}
