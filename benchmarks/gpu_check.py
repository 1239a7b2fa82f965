"""One check of the Triton backend on a GPU: what a first GPU loan should run (≤ 8 min on
one H100). Started by ``benchmarks/gpu_check.sh``; writes ``gpu_check.json`` and
``gpu_check.md`` to ``--out``.

Steps (each timed; one that would start past ``--budget-s`` is skipped with a line):

1. ``versions`` — Python, torch, Triton, CUDA, the GPU; the peers (Liger, Cut
   Cross-Entropy), one line each when not installed.
2. ``compile`` — :mod:`lmloss.stats.triton.report` for this GPU's architecture: registers,
   spills, shared memory and fenced atomics of every launched variant.
3. ``parity`` — Triton against the PyTorch backend at two shapes, float32 and bfloat16:
   every kernel statistic (``token_stats``: logp, lse, entropy, mean_logit, sum_sq_probs,
   is_argmax; the one-pass ``linear_cross_entropy``) and every pair term (forward_kl,
   reverse_kl, jsd, tvd, teacher trained), values and gradients as relative errors.
4. ``offsets`` — V·H and N·H past 2^31 elements (64-bit offsets).
5. ``determinism`` — ``torch.use_deterministic_algorithms(True)`` repeats bit for bit
   (the atomic default's run-to-run difference is shown); the gradient filter at 2^-12
   stays within 1e-2 of the exact gradient, and what it saves.
6. ``timing`` — cross-entropy forward + backward at Gemma-2-2B's head (N=8192, H=2304,
   V=256000, bf16): naive, Cut Cross-Entropy exact (``filter_eps=None``) and default,
   Liger, lmloss on both backends, with the time of each lmloss kernel.

``--dry-run`` runs every step on the CPU at tiny shapes, the kernels under Triton's
interpreter (the compile step compiles one kernel for sm_90): the script's own test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT_ONLY_IN_DRY_RUN = ("grad", "cross-entropy one pass bf16")
# The interpreter's cost is per program: few, large tiles keep the dry run short.
DRY_RUN_TILES = "block_n=64,block_v=64,block_h=32,target_programs=2"
FILTER = 2.0**-12


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny shapes")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip steps past this")
    parser.add_argument("--steps", nargs="*", help="subset of the steps, by name")
    return parser.parse_args()


class Check:
    """The rows of every step: ``(step, check, value, limit, ok)``; ok None: information."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.rows: list[dict] = []
        self.seconds: dict[str, float] = {}

    def add(self, step: str, check: str, value, limit=None, ok: bool | None = None) -> None:
        self.rows.append({"step": step, "check": check, "value": value, "limit": limit, "ok": ok})
        mark = {True: "ok", False: "FAIL", None: ""}[ok]
        print(f"[{step}] {check}: {value} {'' if limit is None else f'(limit {limit})'} {mark}")

    def relative(self, step: str, check: str, got, ref, tol: float) -> None:
        err = float((got.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30))
        self.add(step, check, f"{err:.2e}", tol, err <= tol)

    def shapes(self, dry, real):
        """The dry run's tiny shapes, or the GPU's."""
        return dry if self.dry_run else real

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["ok"] is False]


# ------------------------------------------------------------------ steps


def versions(check: Check) -> None:
    import torch
    import triton

    check.add("versions", "python", platform.python_version())
    check.add("versions", "torch", torch.__version__)
    check.add("versions", "triton", triton.__version__)
    if torch.cuda.is_available():
        check.add("versions", "cuda", torch.version.cuda)
        check.add("versions", "gpu", torch.cuda.get_device_name())
        major, minor = torch.cuda.get_device_capability()
        check.add("versions", "capability", f"{major}.{minor}")
    else:
        check.add("versions", "device", f"cpu ({platform.processor() or platform.machine()})")
    for module, name in (("liger_kernel", "liger-kernel"), ("cut_cross_entropy", "cce")):
        try:
            __import__(module)
            from importlib.metadata import version

            check.add("versions", name, version(name if name != "cce" else "cut-cross-entropy"))
        except ImportError:
            check.add("versions", name, "not installed: its timings are skipped")


def compile_report(check: Check, out: Path) -> None:
    """In a child process: kernels compile only when ``TRITON_INTERPRET`` is unset."""
    import torch

    arch = 90
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = 10 * major + minor
    command = [sys.executable, "-m", "lmloss.stats.triton.report", "--arch", str(arch)]
    command += ["--json", str(out / "compile_report.json")]
    if check.dry_run:
        only, scenario = REPORT_ONLY_IN_DRY_RUN
        command += ["--only", only, "--scenario", scenario, "--shape", "8192,2304,256000"]
    dropped = (
        ("TRITON_INTERPRET", "LMLOSS_TRITON_TILES") if check.dry_run else ("TRITON_INTERPRET",)
    )
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    (out / "compile_report.md").write_text(result.stdout)
    if not (out / "compile_report.json").exists():
        check.add("compile", "report", result.stderr.strip().splitlines()[-1:], ok=False)
        return
    for row in json.loads((out / "compile_report.json").read_text()):
        label = f"{row['kernel']} ({row['scenario']}) {row['constexprs']}"
        value = (
            f"{row['registers']} regs, {row['spill_bytes']} B spilled, "
            f"{row['shared_bytes']} B shared, {row['fenced_atomics']}/{row['atomics']} fenced"
        )
        check.add("compile", label, value, "no spill (single model), no fence", not row["problems"])


def _heads(shape: dict, dtype, device, seed: int = 0, scale: float = 1.0):
    import torch

    g = torch.Generator().manual_seed(seed)
    n, h, v = shape["N"], shape["H"], shape["V"]

    def leaf(*size, s=1.0):
        return (s * torch.randn(*size, generator=g) / h**0.25).to(device, dtype).requires_grad_()

    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < 0.1] = -100
    return leaf(n, h), leaf(v, h, s=scale), leaf(v), targets.to(device)


@contextlib.contextmanager
def backend(name: str):
    previous = os.environ.get("LMLOSS_BACKEND")
    os.environ["LMLOSS_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("LMLOSS_BACKEND")
        if previous is not None:
            os.environ["LMLOSS_BACKEND"] = previous


def _on_both(run: Callable[[], list]) -> tuple[list, list]:
    with backend("triton"):
        got = run()
    with backend("torch"):
        ref = run()
    return got, ref


WANT = ("logp", "lse", "entropy", "mean_logit", "sum_sq_probs", "is_argmax")
TERMS = ("forward_kl", "reverse_kl", "jsd", "tvd")


def parity(check: Check, device: str) -> None:
    import torch

    shapes = check.shapes(
        dry=[{"N": 13, "H": 20, "V": 37}, {"N": 40, "H": 24, "V": 70}],
        real=[{"N": 1999, "H": 1024, "V": 50257}, {"N": 4096, "H": 2304, "V": 256000}],
    )
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            _parity_case(check, shape, dtype, device)


def _parity_case(check: Check, shape: dict, dtype, device: str) -> None:
    import torch

    import lmloss
    from lmloss.stats.divergence_api import token_pair_terms
    from lmloss.stats.model_input import ModelInput, PairSettings

    tol = 1e-4 if dtype == torch.float32 else 3e-2
    label = f"N={shape['N']} H={shape['H']} V={shape['V']} {str(dtype)[6:]}"
    hidden, weight, bias, targets = _heads(shape, dtype, device)
    t_hidden, t_weight, t_bias, _ = _heads(shape, dtype, device, seed=1, scale=2.0)
    mix = torch.randn(len(WANT), shape["N"], generator=torch.Generator().manual_seed(2))
    mix = mix.to(device)
    student = (hidden, weight, bias)

    def stats():
        out = lmloss.token_stats(hidden, weight, targets, bias, want=WANT, softcap=30.0)
        loss = sum((out[n] * mix[i]).sum() for i, n in enumerate(WANT) if n != "is_argmax")
        return [out[n] for n in WANT] + list(torch.autograd.grad(loss, student))

    def cross_entropy():
        loss = lmloss.linear_cross_entropy(hidden, weight, targets, bias)
        return [loss, *torch.autograd.grad(loss, student)]

    def pairs():
        out = token_pair_terms(
            ModelInput(hidden, lmloss.Head(weight, bias)),
            ModelInput(t_hidden, lmloss.Head(t_weight, t_bias)),
            TERMS, hyper={"beta": 0.3},
            settings=PairSettings(temperature=1.5, teacher_requires_grad=True),
        )  # fmt: skip
        loss = sum((out[n] * mix[i]).sum() for i, n in enumerate(TERMS))
        leaves = (*student, t_hidden, t_weight, t_bias)
        return [out[n] for n in TERMS] + list(torch.autograd.grad(loss, leaves))

    grads = ["d hidden", "d weight", "d bias"]
    cases = [
        ("token_stats", stats, [*WANT, *grads], tol),
        ("linear_cross_entropy", cross_entropy, ["loss", *grads], tol),
        ("pair", pairs, [*TERMS, *grads, "d t_hidden", "d t_weight", "d t_bias"], 3 * tol),
    ]
    for prefix, run, names, limit in cases:
        for name, got, ref in zip(names, *_on_both(run)):
            check.relative("parity", f"{prefix} {name}, {label}", got, ref, limit)


def offsets(check: Check, device: str) -> None:
    """Hidden and weight rows past element 2^31: the last rows' gradients equal PyTorch's."""
    cases = check.shapes(
        dry=[{"N": 16, "H": 16, "V": 40}, {"N": 40, "H": 16, "V": 16}],
        real=[{"N": 64, "H": 8192, "V": 262400}, {"N": 262400, "H": 8192, "V": 64}],
    )
    for shape in cases:
        _offset_case(check, shape, device)


def _offset_case(check: Check, shape: dict, device: str) -> None:
    import torch

    import lmloss

    label = f"N={shape['N']} H={shape['H']} V={shape['V']} bf16"
    hidden, weight, _, targets = _heads(shape, torch.bfloat16, device)

    def run():
        logp = lmloss.token_stats(hidden, weight, targets, want="logp").logp
        return [logp, *torch.autograd.grad(logp.sum(), (hidden, weight))]

    got, ref = _on_both(run)
    check.relative("offsets", f"logp, {label}", got[0], ref[0], 1e-2)
    for name, g, r in (("d hidden", got[1], ref[1]), ("d weight", got[2], ref[2])):
        check.relative("offsets", f"last 8 rows of {name}, {label}", g[-8:], r[-8:], 3e-2)


def determinism(check: Check, device: str) -> None:
    import torch

    import lmloss

    shape = check.shapes(dry={"N": 40, "H": 24, "V": 70}, real={"N": 8192, "H": 2304, "V": 32000})
    hidden, weight, _, targets = _heads(shape, torch.bfloat16, device)

    def grads():
        loss = lmloss.linear_cross_entropy(hidden, weight, targets)
        return torch.autograd.grad(loss, (hidden, weight))

    with backend("triton"):
        first, second = grads(), grads()
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(first, second))
        check.add("determinism", "atomic sweep: max run-to-run difference", f"{diff:.2e}")
        torch.use_deterministic_algorithms(True)
        try:
            (det1, t_det), (det2, _) = _timed(grads), _timed(grads)
        finally:
            torch.use_deterministic_algorithms(False)
        same = all(torch.equal(a, b) for a, b in zip(det1, det2))
        check.add("determinism", "deterministic sweeps: bitwise repeat", same, ok=same)
        for name, a, b in zip(("d hidden", "d weight"), det1, first):
            check.relative("determinism", f"deterministic vs atomic {name}", a, b, 3e-2)
        exact, t_exact = _timed(grads)
        os.environ["LMLOSS_TRITON_GRAD_FILTER"] = str(FILTER)
        try:
            filtered, t_filter = _timed(grads)
        finally:
            del os.environ["LMLOSS_TRITON_GRAD_FILTER"]
    for name, a, b in zip(("d hidden", "d weight"), filtered, exact):
        check.relative("determinism", f"filter 2^-12 vs exact {name}", a, b, 1e-2)
    check.add(
        "determinism",
        "time: atomic / deterministic / filtered (ms)",
        f"{t_exact * 1e3:.1f} / {t_det * 1e3:.1f} / {t_filter * 1e3:.1f}",
    )


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable):
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return result, time.perf_counter() - start


class _TimedKernel:
    """A kernel whose launches are synchronized and timed (per-kernel times)."""

    def __init__(self, kernel, totals: dict):
        self.kernel, self.totals = kernel, totals

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _, seconds = _timed(lambda: self.kernel[grid](*args, **kwargs))
            self.totals[self.kernel.__name__] += seconds

        return launch


def timing(check: Check, device: str) -> None:
    import torch

    import lmloss
    from lmloss.stats.triton.report import patched_kernels

    sys.path.insert(0, str(Path(__file__).parent))
    from triton_gpu import _build, _measure

    case = check.shapes(dry={"N": 64, "H": 32, "V": 300}, real={"N": 8192, "H": 2304, "V": 256000})
    dtype, repeats = torch.bfloat16, (1 if check.dry_run else 3)

    def naive(x):
        logits = (x["hidden"] @ x["weight"].T).float()
        torch.nn.functional.cross_entropy(logits, x["targets"]).backward()

    def ours(name):
        def run(x):
            with backend(name):
                lmloss.linear_cross_entropy(x["hidden"], x["weight"], x["targets"]).backward()

        return run

    methods = {"naive": naive, "lmloss torch backend": ours("torch")}
    methods.update(_peers(check, device))
    methods["lmloss triton"] = ours("triton")
    label = f"N={case['N']} H={case['H']} V={case['V']} bf16"
    base = None
    for name, fn in methods.items():
        inputs = _build(case, dtype, device, "lce")
        try:
            seconds, peak = _measure(fn, inputs, device, repeats)
        except torch.OutOfMemoryError:
            check.add("timing", f"{name}, {label}", "out of memory")
            continue
        base = seconds if name == "naive" else base
        check.add(
            "timing",
            f"{name}, {label}",
            f"{seconds * 1e3:.1f} ms ({seconds / base:.2f}× naive), peak {peak:.0f} MiB",
        )
        del inputs
    totals: dict[str, float] = defaultdict(float)
    inputs = _build(case, dtype, device, "lce")
    ours("triton")(inputs)  # compiled before the kernels are timed
    with patched_kernels(lambda kernel: _TimedKernel(kernel, totals)):
        ours("triton")(inputs)
    for kernel, seconds in totals.items():
        check.add("timing", f"lmloss triton kernel {kernel}", f"{seconds * 1e3:.1f} ms")


def _peers(check: Check, device: str) -> dict[str, Callable]:
    """Cut Cross-Entropy (exact and default filter) and Liger: Triton kernels, GPU only."""
    if device != "cuda":
        check.add("timing", "peers", "skipped: their kernels need a GPU")
        return {}
    peers: dict[str, Callable] = {}
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        for label, eps in (("cce exact (filter_eps=None)", None), ("cce default", "high")):
            peers[label] = lambda x, eps=eps: cce(
                x["hidden"], x["weight"], x["targets"], filter_eps=eps
            ).backward()
    except ImportError:
        check.add("timing", "cce", "not installed: skipped")
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        peers["liger"] = lambda x: liger_fused_linear_cross_entropy(
            x["hidden"], x["weight"], x["targets"]
        ).backward()
    except ImportError:
        check.add("timing", "liger", "not installed: skipped")
    return peers


STEPS = ("versions", "compile", "parity", "offsets", "determinism", "timing")


def markdown(check: Check) -> str:
    lines = ["| step | check | value | limit | verdict |", "|---|---|---|---|---|"]
    for r in check.rows:
        verdict = {True: "ok", False: "**FAIL**", None: ""}[r["ok"]]
        limit = "" if r["limit"] is None else r["limit"]
        lines.append(f"| {r['step']} | {r['check']} | {r['value']} | {limit} | {verdict} |")
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in check.seconds.items())
    return "\n".join([*lines, "", f"Step times: {seconds}."])


def main() -> int:
    args = _parse()
    if args.dry_run:  # before triton is first imported
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["LMLOSS_TRITON_TILES"] = DRY_RUN_TILES
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check needs a CUDA device (torch.cuda.is_available() is False); --dry-run")
        print("runs every step on the CPU under Triton's interpreter")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.dry_run)
    start = time.perf_counter()
    steps = {
        "versions": lambda: versions(check),
        "compile": lambda: compile_report(check, args.out),
        "parity": lambda: parity(check, device),
        "offsets": lambda: offsets(check, device),
        "determinism": lambda: determinism(check, device),
        "timing": lambda: timing(check, device),
    }
    for name in args.steps or STEPS:
        if time.perf_counter() - start > args.budget_s:
            check.add(name, "skipped", f"past the {args.budget_s:.0f} s budget")
            continue
        step_start = time.perf_counter()
        try:
            steps[name]()
        except Exception as err:  # one broken step must not hide the others
            check.add(name, "error", f"{type(err).__name__}: {err}"[:300], ok=False)
        check.seconds[name] = time.perf_counter() - step_start
    (args.out / "gpu_check.json").write_text(
        json.dumps(
            {"rows": check.rows, "seconds": check.seconds, "dry_run": args.dry_run}, indent=1
        )
    )
    (args.out / "gpu_check.md").write_text(markdown(check) + "\n")
    print(f"\n{len(check.failed)} failed checks; wrote {args.out}/gpu_check.md and .json")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
