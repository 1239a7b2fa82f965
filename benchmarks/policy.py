"""One GRPO loss + backward from hidden states: naive vs Liger vs lmloss fused.

Every method computes the GRPO loss (token-level clipped ratio to given old log-probs,
ε = 0.2, β = 0.04 · k3 to given reference log-probs, per-sequence token mean) of B
completions of T tokens from hidden [B, T, H] and the LM head [V, H], and backpropagates to
the hidden states and the head. Methods:

* naive — materialized logits, log_softmax, gather, then ``lmloss.policy_loss("grpo")``;
* liger — ``LigerFusedLinearGRPOLoss(loss_type="grpo")`` (Liger-Kernel 0.8; torch.compile
  on CPU, warm-up excluded);
* lmloss — ``lmloss.fused_policy_loss("grpo")`` (statistics engine, no [B·T, V] logits).

Run: ``.venv/bin/python benchmarks/policy.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _harness
import lmloss

try:  # imported up front so that import memory is not charged to a method
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
except ImportError:  # reference library is optional outside the test environment
    LigerFusedLinearGRPOLoss = None

CASES = [{"B": 16, "T": 1024, "H": 1024, "V": 128256}]
QUICK_CASES = [{"B": 4, "T": 64, "H": 64, "V": 3000}]
BASELINE = "naive"
WARM_UP_IN_CHILD = ("liger",)
BETA = 0.04
GROUP = 4


def build(case: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    b, t, h, v = case["B"], case["T"], case["H"], case["V"]
    rewards = torch.randint(0, 2, (b,), generator=g).float()
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    return {
        "hidden": (torch.randn(b, t, h, generator=g) / h**0.25).requires_grad_(),
        "weight": (torch.randn(v, h, generator=g) / h**0.25).requires_grad_(),
        "targets": torch.randint(0, v, (b, t), generator=g),
        "mask": mask,
        "advantages": lmloss.advantages("grpo", rewards, group_size=GROUP),
        # plausible log-probs of the sampled tokens under the old and reference policies
        "old_logps": -torch.rand(b, t, generator=g) * 8,
        "ref_logps": -torch.rand(b, t, generator=g) * 8,
    }


def _backward(inputs: dict, loss: torch.Tensor) -> None:
    inputs["hidden"].grad = inputs["weight"].grad = None
    loss.backward()


def naive(inputs: dict) -> None:
    logits = (inputs["hidden"] @ inputs["weight"].T).float()
    logps = torch.log_softmax(logits, -1).gather(-1, inputs["targets"][..., None])[..., 0]
    out = lmloss.policy_loss(
        "grpo",
        logps=logps,
        old_logps=inputs["old_logps"],
        ref_logps=inputs["ref_logps"],
        mask=inputs["mask"],
        advantages=inputs["advantages"],
        beta=BETA,
    )
    _backward(inputs, out.loss)


def liger(inputs: dict) -> None:
    loss_fn = inputs.setdefault("_liger", LigerFusedLinearGRPOLoss(beta=BETA, loss_type="grpo"))
    out = loss_fn(
        inputs["hidden"],
        inputs["weight"],
        inputs["targets"],
        inputs["mask"],
        inputs["advantages"],
        ref_per_token_logps=inputs["ref_logps"],
        old_per_token_logps=inputs["old_logps"],
    )
    _backward(inputs, out[0])


def lmloss_fused(inputs: dict) -> None:
    out = lmloss.fused_policy_loss(
        "grpo",
        hidden=inputs["hidden"],
        weight=inputs["weight"],
        targets=inputs["targets"],
        mask=inputs["mask"],
        advantages=inputs["advantages"],
        old_logps=inputs["old_logps"],
        ref_logps=inputs["ref_logps"],
        beta=BETA,
    )
    _backward(inputs, out.loss)


METHODS = {"naive": naive, "liger": liger, "lmloss": lmloss_fused}


def available(name: str, case: dict) -> bool:
    return name != "liger" or LigerFusedLinearGRPOLoss is not None


if __name__ == "__main__":
    _harness.main(globals())
