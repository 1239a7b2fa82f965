"""GPU benchmark of the Triton backend against the naive path and the fused peers.

Cases (bf16, issue 12): N=8192, H=2304, V=256000 (Gemma-2-2B's head, the Cut
Cross-Entropy paper's case) and N=16384, H=4096, V=128256 (Llama-3-8B). Every method runs
forward + backward to the hidden states and the head weight; time is the median over
``--repeats`` CUDA-synchronized calls after one warm-up call (Triton compilation and
autotuning are not timed), memory is the peak CUDA allocation above the inputs and the
gradients left on them.

Families (``--families``):

* ``lce`` — token-mean cross-entropy (10% ignored targets): naive float32 logits +
  ``cross_entropy``; Liger's fused linear cross-entropy; Cut Cross-Entropy (``impl="cce"``);
  TRL's ``ChunkedLogProbFunction``; ``lmloss.linear_cross_entropy`` on the PyTorch and on
  the Triton backend;
* ``logp`` — per-token log-probabilities (``lmloss.token_stats``, recompute schedule), the
  loss being their sum: naive; TRL; lmloss on both backends;
* ``jsd`` — generalized JSD (β = 0.5) to a frozen teacher head: naive; Liger's fused
  linear JSD; lmloss ``fused_divergence_loss("jsd")`` on both backends.

Run on a GPU: ``python benchmarks/triton_gpu.py --device cuda`` (``--quick`` for small
shapes). Without CUDA it says so and exits; ``--device cpu --quick`` runs the lmloss
methods at tiny shapes under Triton's interpreter (a smoke test of this script), and
``--compile-only`` runs the compile report (:mod:`lmloss.stats.triton.report`: every
launched kernel variant compiled for a GPU architecture, default sm_90, without one). The
whole first-GPU check, parity and determinism included, is ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

CASES = [
    {"N": 8192, "H": 2304, "V": 256000},
    {"N": 16384, "H": 4096, "V": 128256},
]
QUICK_CASES = [{"N": 1000, "H": 256, "V": 5003}]
CPU_QUICK_CASES = [{"N": 37, "H": 24, "V": 101}]
IGNORED_FRACTION = 0.1
BETA = 0.5
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a smoke run")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--families", nargs="*", default=["lce", "logp", "jsd"])
    parser.add_argument("--methods", nargs="*", help="subset of methods")
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--cases", nargs="*", type=int, help="indices of the cases to run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compile-only", action="store_true", help="compile the kernels for --arch, no GPU"
    )
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90")
    return parser.parse_args()


# ------------------------------------------------------------------ methods


def _build(case: dict, dtype, device, family: str) -> dict:
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    n, h, v = case["N"], case["H"], case["V"]
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < IGNORED_FRACTION] = -100

    def leaf(*shape):
        return (torch.randn(*shape, generator=g) / h**0.25).to(device, dtype).requires_grad_()

    inputs = {"hidden": leaf(n, h), "weight": leaf(v, h), "targets": targets.to(device)}
    if family == "jsd":
        inputs["teacher_hidden"] = leaf(n, h).detach()
        inputs["teacher_weight"] = leaf(v, h).detach()
    return inputs


def _backward(inputs: dict, loss) -> None:
    loss.backward()


def _with_backend(name: str, fn: Callable) -> Callable:
    def run(inputs: dict) -> None:
        previous = os.environ.get("LMLOSS_BACKEND")
        os.environ["LMLOSS_BACKEND"] = name
        try:
            fn(inputs)
        finally:
            if previous is None:
                del os.environ["LMLOSS_BACKEND"]
            else:
                os.environ["LMLOSS_BACKEND"] = previous

    return run


def _methods(family: str, device: str) -> dict[str, Callable]:
    import torch
    import torch.nn.functional as F

    import lmloss

    def naive_lce(x):
        logits = (x["hidden"] @ x["weight"].T).float()
        _backward(x, F.cross_entropy(logits, x["targets"]))

    def naive_logp(x):
        logits = (x["hidden"] @ x["weight"].T).float()
        y = x["targets"]
        logp = torch.log_softmax(logits, -1).gather(1, y.clamp(min=0)[:, None])[:, 0]
        _backward(x, (logp * (y != -100)).sum())

    def naive_jsd(x):
        log_p = torch.log_softmax((x["hidden"] @ x["weight"].T).float(), -1)
        with torch.no_grad():
            log_q = torch.log_softmax((x["teacher_hidden"] @ x["teacher_weight"].T).float(), -1)
        log_m = torch.logaddexp(
            log_p + torch.log(torch.tensor(1 - BETA)), log_q + torch.log(torch.tensor(BETA))
        )
        jsd = BETA * log_q.exp() * (log_q - log_m) + (1 - BETA) * log_p.exp() * (log_p - log_m)
        _backward(x, jsd.sum(-1).mean())

    def lmloss_lce(x):
        _backward(x, lmloss.linear_cross_entropy(x["hidden"], x["weight"], x["targets"]))

    def lmloss_logp(x):
        stats = lmloss.token_stats(x["hidden"], x["weight"], x["targets"], want="logp")
        _backward(x, stats.logp.sum())

    def lmloss_jsd(x):
        out = lmloss.fused_divergence_loss(
            "jsd",
            student_hidden=x["hidden"],
            student_weight=x["weight"],
            teacher_hidden=x["teacher_hidden"],
            teacher_weight=x["teacher_weight"],
            beta=BETA,
        )
        _backward(x, out.loss)

    methods: dict[str, Callable] = {}
    methods["naive"] = {"lce": naive_lce, "logp": naive_logp, "jsd": naive_jsd}[family]
    gpu = device == "cuda"
    if gpu:
        methods.update(_peers(family))
    if family in ("lce", "logp"):
        trl = _trl_method(family)
        if trl is not None:
            methods["trl_chunked"] = trl
    ours = {"lce": lmloss_lce, "logp": lmloss_logp, "jsd": lmloss_jsd}[family]
    methods["lmloss_torch"] = _with_backend("torch", ours)
    methods["lmloss_triton"] = _with_backend("triton", ours)
    return methods


def _peers(family: str) -> dict[str, Callable]:
    """Liger and Cut Cross-Entropy (Triton kernels: GPU only), when installed."""
    peers: dict[str, Callable] = {}
    if family == "lce":
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

            peers["liger_flce"] = lambda x: _backward(
                x, liger_fused_linear_cross_entropy(x["hidden"], x["weight"], x["targets"])
            )
        except ImportError:
            pass
        try:
            from cut_cross_entropy import linear_cross_entropy as cce

            peers["cce"] = lambda x: _backward(
                x, cce(x["hidden"], x["weight"], x["targets"], impl="cce")
            )
        except ImportError:
            pass
    if family == "jsd":
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

            loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA)
            peers["liger_jsd"] = lambda x: _backward(
                x,
                loss_fn(
                    x["hidden"],
                    x["weight"],
                    x["teacher_hidden"],
                    x["teacher_weight"],
                    x["targets"],
                ),
            )
        except ImportError:
            pass
    return peers


def _trl_method(family: str) -> Callable | None:
    try:
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    except ImportError:
        return None

    def run(x):
        y = x["targets"]
        mask = y != -100
        logp = ChunkedLogProbFunction.apply(
            x["hidden"][mask], x["weight"], None, y[mask], 1.0, 4096, None, 1.0, ()
        )[0]
        loss = -logp.float().sum() / mask.sum().clamp(min=1) if family == "lce" else logp.sum()
        _backward(x, loss)

    return run


# ------------------------------------------------------------------ measurement


def _measure(fn: Callable, inputs: dict, device: str, repeats: int) -> tuple[float, float]:
    """Median seconds over ``repeats`` and the peak allocation above inputs + grads (MiB)."""
    import torch

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    fn(inputs)  # warm-up: compilation, autotuning, allocator caches
    times, peak = [], 0.0
    for _ in range(repeats):
        for t in leaves:
            t.grad = None
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sync()
        start = time.perf_counter()
        fn(inputs)
        sync()
        times.append(time.perf_counter() - start)
        if cuda:
            grads = sum(t.grad.nbytes for t in leaves if t.grad is not None)
            peak = max(peak, (torch.cuda.max_memory_allocated() - base - grads) / 2**20)
    return statistics.median(times), peak


def main() -> int:
    args = _parse()
    if args.compile_only:
        from lmloss.stats.triton import report

        return report.main(["--arch", str(args.arch)])
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "benchmarks/triton_gpu.py measures CUDA kernels, and no CUDA device is available "
            "here (torch.cuda.is_available() is False). Run it on a GPU machine; on this one, "
            "--compile-only checks the kernels compile for a GPU, and --device cpu --quick "
            "smoke-tests the script under Triton's interpreter."
        )
        return 0
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dtype = getattr(torch, DTYPES[args.dtype])
    cases = (CPU_QUICK_CASES if args.device == "cpu" else QUICK_CASES) if args.quick else CASES
    if args.cases:
        cases = [cases[i] for i in args.cases]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    print(f"device {name}, torch {torch.__version__}, {args.dtype}, repeats {args.repeats}\n")
    print("| family | case | method | time (ms) | time / naive | peak above inputs+grads (MiB) |")
    print("|---|---|---|---|---|---|")
    for family in args.families:
        methods = _methods(family, args.device)
        if args.methods:
            methods = {k: v for k, v in methods.items() if k in args.methods}
        for case in cases:
            label = ", ".join(f"{k}={v}" for k, v in case.items())
            results: dict[str, tuple[float, float] | str] = {}
            for method, fn in methods.items():
                inputs = _build(case, dtype, args.device, family)
                try:
                    results[method] = _measure(fn, inputs, args.device, args.repeats)
                except torch.OutOfMemoryError:
                    results[method] = "out of memory"
                del inputs
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            naive = results.get("naive")
            for method, result in results.items():
                if isinstance(result, str):
                    print(f"| {family} | {label} | {method} | {result} | | |", flush=True)
                    continue
                seconds, peak = result
                ratio = seconds / naive[0] if isinstance(naive, tuple) else float("nan")
                print(
                    f"| {family} | {label} | {method} | {seconds * 1e3:.1f} | {ratio:.2f} "
                    f"| {peak:.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
