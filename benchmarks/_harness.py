"""Shared benchmark harness: interleaved timing in one process, peak memory per process.

A benchmark script defines ``build(case) -> inputs`` and ``METHODS = {name: fn(inputs)}``
where ``fn`` runs one forward + backward, and ``CASES`` (dicts of shape parameters), then
calls :func:`main`. Timing runs every method of a case in one process, interleaved over
repeats (medians), so the ratios are side by side on this noisy shared machine. Peak
memory runs each method in its own child process: the resident-set peak minus the
resident set after the inputs were built and the libraries imported, less the bytes of the
gradients left on the inputs (so the figure is the working memory above inputs and
gradients). Methods listed in
``WARM_UP_IN_CHILD`` (torch.compile users) run once before the measured call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

Inputs = dict
Method = Callable[[Inputs], None]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS counter (VmHWM) of this process.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _peak_rss_mb()


def child(script_globals: dict, method: str, case: dict) -> None:
    inputs = script_globals["build"](case)
    if method in script_globals.get("WARM_UP_IN_CHILD", ()):
        script_globals["METHODS"][method](inputs)  # compile caches are not what we measure
    base = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    script_globals["METHODS"][method](inputs)
    elapsed = time.perf_counter() - start
    grads = sum(
        t.grad.nbytes for t in inputs.values() if isinstance(t, torch.Tensor) and t.grad is not None
    )
    peak = _vm_hwm_mb() - base - grads / 2**20
    print(json.dumps({"peak_above_inputs_and_grads_mb": peak, "seconds": elapsed}))


def time_case(
    script_globals: dict, case: dict, methods: list[str], repeats: int
) -> dict[str, float]:
    inputs = script_globals["build"](case)
    fns = script_globals["METHODS"]
    for name in methods:  # warm-up: first-call allocations, compile caches
        fns[name](inputs)
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name in methods:
            start = time.perf_counter()
            fns[name](inputs)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def memory_case(script: str, case: dict, method: str) -> float | None:
    command = [sys.executable, script, "--child", method, "--case", json.dumps(case)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(f"[{method} {case}] child failed:\n{result.stderr[-2000:]}\n")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_above_inputs_and_grads_mb"]


def main(script_globals: dict) -> None:
    parser = argparse.ArgumentParser(description=script_globals.get("__doc__"))
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, to check the script runs"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", help="subset of methods")
    parser.add_argument("--cases", nargs="*", type=int, help="indices of the cases to run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process memory runs")
    args = parser.parse_args()
    if args.child:
        child(script_globals, args.child, json.loads(args.case))
        return
    cases = script_globals["QUICK_CASES"] if args.quick else script_globals["CASES"]
    if args.cases:
        cases = [cases[i] for i in args.cases]
    methods = args.methods or list(script_globals["METHODS"])
    available = script_globals.get("available", lambda name, case: True)
    baseline = script_globals.get("BASELINE", "naive")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}\n")
    print(f"| case | method | time (s) | time / {baseline} | peak above inputs+grads (MB) |")
    print("|---|---|---|---|---|")
    for case in cases:
        names = [m for m in methods if available(m, case)]
        times = time_case(script_globals, case, names, 1 if args.quick else args.repeats)
        label = ", ".join(f"{k}={v}" for k, v in case.items())
        for name in names:
            mem = None if args.no_memory else memory_case(script_globals["__file__"], case, name)
            ratio = times[name] / times[baseline] if baseline in times else float("nan")
            mem_text = "n/a" if mem is None else f"{mem:.0f}"
            print(
                f"| {label} | {name} | {times[name]:.3f} | {ratio:.2f} | {mem_text} |", flush=True
            )
