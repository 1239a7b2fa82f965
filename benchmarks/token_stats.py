"""Forward + backward of per-token log-probs: naive vs TRL's chunked kernel vs Liger vs lmloss.

Every method computes the per-token log-probability of the target from hidden [N, H] and
the head [V, H], reduces with a fixed random weight per token, and backpropagates to the
hidden states and the head. Liger has no per-token log-prob function; its chunked DPO loss
(policy log-probs of N/512 sequences of 512 tokens as pairs, no reference) is shown as the
nearest fused path. Methods:

* naive — materialized logits, log_softmax, gather (what a plain PyTorch trainer does);
* trl — ``trl.kernels.ChunkedLogProbFunction`` (TRL 1.16);
* liger_dpo — ``LigerFusedLinearDPOLoss`` (torch.compile on CPU; warm-up excluded);
* lmloss — ``lmloss.token_stats`` (generic: the backward recomputes each tile);
* lmloss_eager — the one-pass path used when the per-token upstream gradient is known
  during the forward (``lmloss.stats.single_model.eager_token_loss``; what the fused SFT and other
  per-token objectives use).

Run: ``.venv/bin/python benchmarks/token_stats.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _harness
import lmloss

try:  # imported up front so that import memory is not charged to a method
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
except ImportError:  # reference libraries are optional outside the test environment
    LigerFusedLinearDPOLoss = ChunkedLogProbFunction = None
from lmloss.stats.chunking import plan_chunks
from lmloss.stats.single_model import compute_dtype, eager_token_loss
from lmloss.stats.transform import LogitTransform

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CASES = [
    {"N": n, "H": h, "V": v, "dtype": d}
    for (n, h, v) in ((4096, 1024, 32000), (4096, 576, 49152), (8192, 1024, 128256))
    for d in ("fp32", "bf16")
]
QUICK_CASES = [
    {"N": 1024, "H": 64, "V": 3000, "dtype": "fp32"},
    {"N": 1024, "H": 64, "V": 3000, "dtype": "bf16"},
]
BASELINE = "naive"
WARM_UP_IN_CHILD = ("liger_dpo",)


def build(case: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    dtype = DTYPES[case["dtype"]]
    n, h, v = case["N"], case["H"], case["V"]
    return {
        "hidden": (torch.randn(n, h, generator=g) / h**0.25).to(dtype).requires_grad_(),
        "weight": (torch.randn(v, h, generator=g) / h**0.25).to(dtype).requires_grad_(),
        "targets": torch.randint(0, v, (n,), generator=g),
        "upstream": torch.randn(n, generator=g),
    }


def _backward(inputs: dict, loss: torch.Tensor) -> None:
    inputs["hidden"].grad = inputs["weight"].grad = None
    loss.backward()


def naive(inputs: dict) -> None:
    logits = (inputs["hidden"] @ inputs["weight"].T).float()
    logp = torch.log_softmax(logits, -1).gather(1, inputs["targets"][:, None]).squeeze(1)
    _backward(inputs, (logp * inputs["upstream"]).sum())


def trl_chunked(inputs: dict) -> None:
    logp = ChunkedLogProbFunction.apply(
        inputs["hidden"], inputs["weight"], None, inputs["targets"], 1.0, 4096, None, 1.0, ()
    )[0]
    _backward(inputs, (logp.float() * inputs["upstream"]).sum())


def liger_dpo(inputs: dict) -> None:
    n, h = inputs["hidden"].shape
    loss_fn = inputs.setdefault("_liger", LigerFusedLinearDPOLoss(use_ref_model=False))
    hidden = inputs["hidden"].view(n // 512, 512, h)
    targets = inputs["targets"].view(n // 512, 512)
    out = loss_fn(inputs["weight"], hidden, targets)
    _backward(inputs, out[0] if isinstance(out, tuple) else out)


def lmloss_generic(inputs: dict) -> None:
    logp = lmloss.token_stats(inputs["hidden"], inputs["weight"], inputs["targets"]).logp
    _backward(inputs, (logp * inputs["upstream"]).sum())


def lmloss_eager(inputs: dict) -> None:
    hidden, weight, upstream = inputs["hidden"], inputs["weight"], inputs["upstream"]
    plan = plan_chunks(
        hidden.shape[0], weight.shape[0], compute_dtype(hidden.dtype).itemsize, whole_vocab=True
    )
    total, _ = eager_token_loss(
        hidden,
        weight,
        None,
        inputs["targets"],
        LogitTransform(),
        ("logp",),
        lambda stats, rows: (stats["logp"] * upstream[rows]).sum(),
        plan,
    )
    _backward(inputs, total)


METHODS = {
    "naive": naive,
    "trl": trl_chunked,
    "liger_dpo": liger_dpo,
    "lmloss": lmloss_generic,
    "lmloss_eager": lmloss_eager,
}


def available(name: str, case: dict) -> bool:
    if name == "trl":
        return ChunkedLogProbFunction is not None
    if name == "liger_dpo":
        return LigerFusedLinearDPOLoss is not None and case["N"] % 512 == 0
    return True


if __name__ == "__main__":
    _harness.main(globals())
