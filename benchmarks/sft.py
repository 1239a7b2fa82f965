"""SFT loss + backward: naive vs Cut Cross-Entropy vs Liger vs TRL vs lmloss.linear_cross_entropy.

Every method computes the token-mean cross-entropy of ``hidden [N, H] @ weight[V, H].T``
against targets (about 10% ignored, as padding and prompt tokens are in SFT) and
backpropagates to the hidden states and the head. Methods:

* naive — materialized float32 logits + ``torch.nn.functional.cross_entropy``;
* cce_compile — Cut Cross-Entropy's ``linear_cross_entropy(..., impl="torch_compile")``
  (the only CCE path that runs on CPU: it compiles the naive graph, logits included;
  compilation is excluded from the times and from the memory figures);
* liger_flce — Liger-Kernel's fused linear cross-entropy (Triton: GPU only, skipped on CPU);
* trl — TRL 1.16's ``ChunkedLogProbFunction`` (chunked per-token log-probs, torch tiles on
  CPU), reduced to the token mean;
* lmloss — ``lmloss.linear_cross_entropy`` (the fused ``ce`` likelihood objective: one pass
  over the vocabulary, gradients computed during the forward; per-tile formulas compiled by
  ``torch.compile`` for large calls, warm-up excluded as for CCE); ``lmloss_cold``: first
  call, warm-up included; ``lmloss_eager``: ``LMLOSS_COMPILE=0``.

The full case is the issue's N=8192, H=2048, V=128256: the naive path's float32 logits,
their log-softmax and their gradient (3 × 4.2 GB) fit in 24 GB, so no smaller stand-in is
needed; a medium case (N=4096, H=1024, V=32000) comes first for a quicker run.

Run: ``.venv/bin/python benchmarks/sft.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _harness
import lmloss

try:  # imported up front so that import memory is not charged to a method
    from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
except ImportError:  # reference libraries are optional outside the test environment
    cce_linear_cross_entropy = liger_fused_linear_cross_entropy = ChunkedLogProbFunction = None

CASES = [
    {"N": 4096, "H": 1024, "V": 32000},
    {"N": 8192, "H": 2048, "V": 128256},
]
QUICK_CASES = [{"N": 512, "H": 64, "V": 3001}]
BASELINE = "naive"
WARM_UP_IN_CHILD = ("cce_compile", "lmloss")
IGNORED_FRACTION = 0.1


def build(case: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    n, h, v = case["N"], case["H"], case["V"]
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < IGNORED_FRACTION] = -100
    return {
        "hidden": (torch.randn(n, h, generator=g) / h**0.25).requires_grad_(),
        "weight": (torch.randn(v, h, generator=g) / h**0.25).requires_grad_(),
        "targets": targets,
    }


def _backward(inputs: dict, loss: torch.Tensor) -> None:
    inputs["hidden"].grad = inputs["weight"].grad = None
    loss.backward()


def naive(inputs: dict) -> None:
    logits = inputs["hidden"] @ inputs["weight"].T
    _backward(inputs, torch.nn.functional.cross_entropy(logits.float(), inputs["targets"]))


def cce_compile(inputs: dict) -> None:
    loss = cce_linear_cross_entropy(
        inputs["hidden"], inputs["weight"], inputs["targets"], impl="torch_compile"
    )
    _backward(inputs, loss)


def liger_flce(inputs: dict) -> None:
    loss = liger_fused_linear_cross_entropy(inputs["hidden"], inputs["weight"], inputs["targets"])
    _backward(inputs, loss)


def trl_chunked(inputs: dict) -> None:
    targets = inputs["targets"]
    mask = targets != -100
    logp = ChunkedLogProbFunction.apply(
        inputs["hidden"][mask], inputs["weight"], None, targets[mask], 1.0, 4096, None, 1.0, ()
    )[0]
    _backward(inputs, -logp.float().sum() / mask.sum().clamp(min=1))


def lmloss_fused(inputs: dict) -> None:
    loss = lmloss.linear_cross_entropy(inputs["hidden"], inputs["weight"], inputs["targets"])
    _backward(inputs, loss)


METHODS = {
    "naive": naive,
    "cce_compile": cce_compile,
    "liger_flce": liger_flce,
    "trl": trl_chunked,
    **_harness.lmloss_variants(lmloss_fused),
}


def available(name: str, case: dict) -> bool:
    if name == "cce_compile":
        return cce_linear_cross_entropy is not None
    if name == "liger_flce":  # Triton kernels: GPU only
        return liger_fused_linear_cross_entropy is not None and torch.cuda.is_available()
    if name == "trl":
        return ChunkedLogProbFunction is not None
    return True


if __name__ == "__main__":
    _harness.main(globals())
