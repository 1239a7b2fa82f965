"""One policy loss + backward from hidden states: naive vs Liger vs lmloss fused.

Every method computes the loss of B completions of T tokens (GRPO: token-level clipped
ratio to given old log-probs, ε = 0.2, β = 0.04 · k3 to given reference log-probs,
per-sequence token mean; GSPO: the same with the sequence-level ratio, ε = 3e-4 / 4e-4)
from hidden [B, T, H] and the LM head [V, H], and backpropagates to the hidden states and
the head. Methods:

* naive — materialized logits, log_softmax, gather, then ``lmloss.policy_loss``;
* liger — ``LigerFusedLinearGRPOLoss(loss_type="grpo")`` (Liger-Kernel 0.8; torch.compile
  on CPU, warm-up excluded; ``importance_sampling_level="sequence"`` for GSPO);
* lmloss — ``lmloss.fused_policy_loss`` (statistics engine, no [B·T, V] logits; per-tile
  formulas compiled for large calls, warm-up excluded as for Liger): the sequence-aligned
  one-pass schedule (blocks of whole sequences, 3 vocabulary matmuls);
  ``lmloss_recompute``: ``LMLOSS_PAIR_ONE_PASS=0``, the recompute schedule (4 matmuls).

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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODERATE = {"B": 8, "T": 512, "H": 1024, "V": 32000}
CASES = [
    {**MODERATE, "loss": "grpo", "dtype": "fp32"},
    {**MODERATE, "loss": "grpo", "dtype": "bf16"},
    {**MODERATE, "loss": "gspo", "dtype": "fp32"},
    {"B": 16, "T": 1024, "H": 1024, "V": 128256, "loss": "grpo", "dtype": "fp32"},
]
QUICK_CASES = [{"B": 4, "T": 64, "H": 64, "V": 3000, "loss": "grpo", "dtype": "fp32"}]
BASELINE = "naive"
WARM_UP_IN_CHILD = ("liger", "lmloss", "lmloss_recompute")
BETA = 0.04
GROUP = 4
# Liger's spelling of each loss (GSPO: lmloss's defaults ε = 3e-4 / 4e-4)
LIGER_OPTIONS = {
    "grpo": {},
    "gspo": {"importance_sampling_level": "sequence", "epsilon_low": 3e-4, "epsilon_high": 4e-4},
}


def build(case: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    b, t, h, v = case["B"], case["T"], case["H"], case["V"]
    dtype = DTYPES[case["dtype"]]
    rewards = torch.randint(0, 2, (b,), generator=g).float()
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    targets = torch.randint(0, v, (b, t), generator=g)
    return {
        "hidden": (torch.randn(b, t, h, generator=g) / h**0.25).to(dtype).requires_grad_(),
        "weight": (torch.randn(v, h, generator=g) / h**0.25).to(dtype).requires_grad_(),
        "targets": targets,
        "mask": mask,
        # lmloss skips the padding's rows by their targets (both of its schedules alike)
        "fused_targets": targets.masked_fill(mask == 0, -100),
        "advantages": lmloss.advantages("grpo", rewards, group_size=GROUP),
        # plausible log-probs of the sampled tokens under the old and reference policies
        "old_logps": -torch.rand(b, t, generator=g) * 8,
        "ref_logps": -torch.rand(b, t, generator=g) * 8,
        "loss": case["loss"],
    }


def _backward(inputs: dict, loss: torch.Tensor) -> None:
    inputs["hidden"].grad = inputs["weight"].grad = None
    loss.backward()


def naive(inputs: dict) -> None:
    logits = (inputs["hidden"] @ inputs["weight"].T).float()
    logps = torch.log_softmax(logits, -1).gather(-1, inputs["targets"][..., None])[..., 0]
    out = lmloss.policy_loss(
        inputs["loss"],
        logps=logps,
        old_logps=inputs["old_logps"],
        ref_logps=inputs["ref_logps"],
        mask=inputs["mask"],
        advantages=inputs["advantages"],
        beta=BETA,
    )
    _backward(inputs, out.loss)


def liger(inputs: dict) -> None:
    options = LIGER_OPTIONS[inputs["loss"]]
    loss_fn = inputs.setdefault(
        "_liger", LigerFusedLinearGRPOLoss(beta=BETA, loss_type="grpo", **options)
    )
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
        inputs["loss"],
        hidden=inputs["hidden"],
        weight=inputs["weight"],
        targets=inputs["fused_targets"],
        advantages=inputs["advantages"],
        old_logps=inputs["old_logps"],
        ref_logps=inputs["ref_logps"],
        beta=BETA,
    )
    _backward(inputs, out.loss)


METHODS = {
    "naive": naive,
    "liger": liger,
    "lmloss": lmloss_fused,
    "lmloss_recompute": _harness.recomputed(lmloss_fused),
}


def available(name: str, case: dict) -> bool:
    return name != "liger" or LigerFusedLinearGRPOLoss is not None


if __name__ == "__main__":
    _harness.main(globals())
