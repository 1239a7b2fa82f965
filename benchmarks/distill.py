"""Forward + backward of the generalized JSD between a student and a teacher head.

Every method computes the token mean of the generalized JSD (β = 0.5, temperature 1) between
the student's ``softmax(h_s W_sᵀ)`` and the teacher's ``softmax(h_t W_tᵀ)`` for N tokens, and
backpropagates to the student's hidden states and head (the teacher is frozen). Methods:

* naive — both ``[N, V]`` logits materialized, log-softmax, log-space mixture, two KLs
  (TRL's ``GKDTrainer.generalized_jsd_loss`` written out);
* trl — ``trl.kernels.chunked_divergence.ChunkedDivergenceFunction`` (TRL 1.16; torch tiles
  on CPU; two vocabulary passes in the forward for the JSD, one recomputing backward);
* liger — ``LigerFusedLinearJSDLoss`` (Liger-Kernel 0.8, ``weight_hard_loss=0``; chunks of
  1024 tokens with whole-vocabulary logits, gradients in the forward; torch.compile on CPU,
  warm-up excluded);
* lmloss — ``lmloss.fused_divergence_loss("jsd")`` (the tile engine's pair kernel:
  whole-vocabulary token blocks within the memory budget, one matmul per head, gradients in
  the same pass; per-tile formulas compiled by ``torch.compile`` for large calls, warm-up
  excluded as for Liger);
* lmloss_cold — the same, first call of the process: compile warm-up included (inductor's
  on-disk caches off, as on a fresh machine);
* lmloss_eager — the same with ``LMLOSS_COMPILE=0``: per-tile formulas as eager ops.

Run: ``.venv/bin/python benchmarks/distill.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _harness
import lmloss

try:  # imported up front so that import memory is not charged to a method
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
except ImportError:  # reference libraries are optional outside the test environment
    LigerFusedLinearJSDLoss = None
try:
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
except ImportError:
    ChunkedDivergenceFunction = None

CASES = [
    {"N": 4096, "H": 1024, "HT": 1024, "V": 128256},
    {"N": 2048, "H": 1024, "HT": 1024, "V": 32000},
]
QUICK_CASES = [{"N": 256, "H": 64, "HT": 96, "V": 3000}]
BASELINE = "naive"
WARM_UP_IN_CHILD = ("liger", "lmloss")
BETA = 0.5


def build(case: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    n, h, ht, v = case["N"], case["H"], case["HT"], case["V"]
    return {
        "hidden": (torch.randn(n, h, generator=g) / h**0.25).requires_grad_(),
        "weight": (torch.randn(v, h, generator=g) / h**0.25).requires_grad_(),
        "teacher_hidden": torch.randn(n, ht, generator=g) / ht**0.25,
        "teacher_weight": torch.randn(v, ht, generator=g) / ht**0.25,
        "labels": torch.randint(0, v, (n,), generator=g),
    }


def _backward(inputs: dict, loss: torch.Tensor) -> None:
    inputs["hidden"].grad = inputs["weight"].grad = None
    loss.backward()


def naive(inputs: dict) -> None:
    log_p = torch.log_softmax(inputs["hidden"] @ inputs["weight"].T, -1)
    with torch.no_grad():
        log_q = torch.log_softmax(inputs["teacher_hidden"] @ inputs["teacher_weight"].T, -1)
    log_m = torch.logaddexp(log_p + torch.tensor(1 - BETA).log(), log_q + torch.tensor(BETA).log())
    jsd = BETA * (log_q.exp() * (log_q - log_m)) + (1 - BETA) * (log_p.exp() * (log_p - log_m))
    _backward(inputs, jsd.sum(-1).mean())


def trl(inputs: dict) -> None:
    divergence, _ = ChunkedDivergenceFunction.apply(
        inputs["hidden"],
        inputs["weight"],
        None,
        inputs["teacher_hidden"],
        inputs["teacher_weight"],
        None,
        BETA,
        1.0,
    )
    _backward(inputs, divergence.mean())


def liger(inputs: dict) -> None:
    loss_fn = inputs.setdefault(
        "_liger", LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA)
    )
    loss = loss_fn(
        inputs["hidden"],
        inputs["weight"],
        inputs["teacher_hidden"],
        inputs["teacher_weight"],
        inputs["labels"],
    )
    _backward(inputs, loss)


def lmloss_fused(inputs: dict) -> None:
    out = lmloss.fused_divergence_loss(
        "jsd",
        student_hidden=inputs["hidden"],
        student_weight=inputs["weight"],
        teacher_hidden=inputs["teacher_hidden"],
        teacher_weight=inputs["teacher_weight"],
        beta=BETA,
    )
    _backward(inputs, out.loss)


METHODS = {"naive": naive, "trl": trl, "liger": liger, **_harness.lmloss_variants(lmloss_fused)}


def available(name: str, case: dict) -> bool:
    if name == "liger":
        return LigerFusedLinearJSDLoss is not None
    return name != "trl" or ChunkedDivergenceFunction is not None


if __name__ == "__main__":
    _harness.main(globals())
