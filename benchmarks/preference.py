"""DPO loss + backward from hidden states: naive vs lmloss fused vs Liger's fused DPO.

One DPO step on B pairs of T-token completions (chosen rows then rejected rows, the first
T/8 positions of every row are prompt and ignored), with a reference model: policy hidden
states [2B, T, H] and head [V, H] receive gradients; the reference hidden states and head
only give log-probs. Methods:

* naive — materialized logits, log_softmax, gather, for policy and (no_grad) reference,
  then the DPO formula (what a plain PyTorch trainer does);
* lmloss — ``lmloss.fused_preference_loss("dpo", ...)`` (engine: no [tokens, vocab] logits;
  per-tile formulas compiled for large calls, warm-up excluded as for Liger): the
  pair-aligned one-pass schedule (blocks of whole pairs, 3 vocabulary matmuls);
  ``lmloss_recompute``: ``LMLOSS_PAIR_ONE_PASS=0``, the recompute schedule (4 matmuls);
  ``lmloss_cold``: first call, warm-up included; ``lmloss_eager``: ``LMLOSS_COMPILE=0``;
* liger — ``LigerFusedLinearDPOLoss`` (Liger-Kernel 0.8; torch.compile, warm-up excluded).

Run: ``.venv/bin/python benchmarks/preference.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _harness
import lmloss

try:  # imported up front so that import memory is not charged to a method
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
except ImportError:  # reference library, optional outside the test environment
    LigerFusedLinearDPOLoss = None

BETA = 0.1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CASES = [{"B": 4, "T": 512, "H": 1024, "V": 32000, "dtype": d} for d in ("fp32", "bf16")]
CASES += [{"B": 8, "T": 512, "H": 1024, "V": 128256, "dtype": d} for d in ("fp32", "bf16")]
QUICK_CASES = [{"B": 2, "T": 64, "H": 64, "V": 3000, "dtype": d} for d in ("fp32", "bf16")]
BASELINE = "naive"
WARM_UP_IN_CHILD = ("liger", "lmloss", "lmloss_recompute")


def build(case: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    dtype = DTYPES[case["dtype"]]
    rows, t, h, v = 2 * case["B"], case["T"], case["H"], case["V"]

    def randn(*shape):
        return (torch.randn(*shape, generator=g) / h**0.25).to(dtype)

    targets = torch.randint(0, v, (rows, t), generator=g)
    targets[:, : t // 8] = -100  # prompt positions
    return {
        "hidden": randn(rows, t, h).requires_grad_(),
        "weight": randn(v, h).requires_grad_(),
        "ref_hidden": randn(rows, t, h),
        "ref_weight": randn(v, h),
        "targets": targets,
    }


def _backward(inputs: dict, loss: torch.Tensor) -> None:
    inputs["hidden"].grad = inputs["weight"].grad = None
    loss.backward()


def _sequence_logps(hidden, weight, targets):
    logits = (hidden @ weight.T).float()
    mask = targets != -100
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return (logp * mask).sum(-1)


def naive(inputs: dict) -> None:
    targets = inputs["targets"]
    policy = _sequence_logps(inputs["hidden"], inputs["weight"], targets)
    with torch.no_grad():
        ref = _sequence_logps(inputs["ref_hidden"], inputs["ref_weight"], targets)
    chosen, rejected = (policy - ref).chunk(2)
    _backward(inputs, -F.logsigmoid(BETA * (chosen - rejected)).mean())


def lmloss_fused(inputs: dict) -> None:
    out = lmloss.fused_preference_loss(
        "dpo",
        hidden=inputs["hidden"],
        weight=inputs["weight"],
        targets=inputs["targets"],
        ref_hidden=inputs["ref_hidden"],
        ref_weight=inputs["ref_weight"],
        beta=BETA,
    )
    _backward(inputs, out.loss)


def liger(inputs: dict) -> None:
    loss_fn = inputs.setdefault("_liger", LigerFusedLinearDPOLoss(beta=BETA))
    out = loss_fn(
        inputs["weight"],
        inputs["hidden"],
        inputs["targets"],
        ref_input=inputs["ref_hidden"],
        ref_weight=inputs["ref_weight"],
    )
    _backward(inputs, out[0] if isinstance(out, tuple) else out)


METHODS = {
    "naive": naive,
    **_harness.lmloss_variants(lmloss_fused),
    "lmloss_recompute": _harness.recomputed(lmloss_fused),
    "liger": liger,
}


def available(name: str, case: dict) -> bool:
    return name != "liger" or LigerFusedLinearDPOLoss is not None


if __name__ == "__main__":
    _harness.main(globals())
