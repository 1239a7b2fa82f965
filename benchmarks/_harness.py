"""Shared benchmark harness: every measurement is one call in a fresh process.

A benchmark script defines ``build(case) -> inputs``, ``METHODS = {name: fn(inputs)}``
where ``fn`` runs one forward + backward, ``CASES`` and ``QUICK_CASES`` (dicts of shape
parameters), optionally ``available(name, case)``, ``BASELINE`` (default ``"naive"``) and
``WARM_UP_IN_CHILD`` (methods that use torch.compile: they also run once at the measured
shape first, so compilation is not what is timed), then calls :func:`main`. Every child
first runs its method once on the first quick case, so one-time set-up is not timed.

For each case the methods run one after another, each in its own child process, repeated
``--repeats`` times interleaved (so load drifting on this shared machine hits every method
alike). A child reports the wall time of the call and its peak resident memory above the
resident set after inputs were built and libraries imported, less the bytes of the
gradients left on the inputs: the working memory above inputs and gradients. Times are
medians over repeats, peaks maxima; ratios are to ``BASELINE``.
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


def greedy_chat(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[torch.Tensor, int]:
    """``prompt`` as one user turn, answered greedily: the ids of prompt + answer and the
    prompt's length (where the answer starts)."""
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0], enc["input_ids"].shape[1]


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


def measure(fn: Callable[[], object]) -> tuple[object, float, float]:
    """Run ``fn()`` in this process: its result, seconds, and peak resident memory above
    the start in MB (Linux; for one-off measurements such as ``demo.py``)."""
    base = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, max(0.0, _vm_hwm_mb() - base)


def child(script_globals: dict, method: str, case: dict) -> None:
    fn = script_globals["METHODS"][method]
    fn(script_globals["build"](script_globals["QUICK_CASES"][0]))  # lazy imports and set-up
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


def lmloss_variants(fn: Callable[[dict], None]) -> dict[str, Callable[[dict], None]]:
    """``fn`` as three methods: ``lmloss`` (steady state: list it in ``WARM_UP_IN_CHILD``),
    ``lmloss_cold`` (the first call of a process: ``torch.compile`` warm-up included,
    inductor's on-disk caches off as on a fresh machine) and ``lmloss_eager``
    (``LMLOSS_COMPILE=0``: the per-tile formulas as separate eager ops)."""

    def cold(inputs: dict) -> None:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
        fn(inputs)

    def eager(inputs: dict) -> None:
        os.environ["LMLOSS_COMPILE"] = "0"
        fn(inputs)

    return {"lmloss": fn, "lmloss_cold": cold, "lmloss_eager": eager}


def recomputed(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    """``fn`` on the recompute schedule (``LMLOSS_PAIR_ONE_PASS=0``: 4 vocabulary matmuls
    where the one pass over whole pairs or sequences does 3)."""

    def recompute(inputs: dict) -> None:
        os.environ["LMLOSS_PAIR_ONE_PASS"] = "0"
        fn(inputs)

    return recompute


def run_child(script: str, case: dict, method: str) -> dict | str:
    """One measured call of ``method`` in a fresh process: its seconds and peak memory,
    or the reason it produced none (a crash, or the kernel's out-of-memory kill)."""
    command = [sys.executable, script, "--child", method, "--case", json.dumps(case)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(f"[{method} {case}] child failed:\n{result.stderr[-2000:]}\n")
        return "killed (out of memory)" if result.returncode in (-9, 137) else "failed"
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(script_globals: dict) -> None:
    parser = argparse.ArgumentParser(description=script_globals.get("__doc__"))
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, to check the script runs"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", nargs="*", help="subset of methods")
    parser.add_argument("--cases", nargs="*", type=int, help="indices of the cases to run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
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
    script = script_globals["__file__"]
    for case in cases:
        names = [m for m in methods if available(m, case)]
        runs: dict[str, list] = {name: [] for name in names}
        for _ in range(args.repeats):  # interleaved, so drifting load hits every method alike
            for name in names:
                runs[name].append(run_child(script, case, name))
        label = ", ".join(f"{k}={v}" for k, v in case.items())
        seconds = {
            name: statistics.median(r["seconds"] for r in rs)
            for name, rs in runs.items()
            if all(isinstance(r, dict) for r in rs)
        }
        for name, rs in runs.items():
            if name not in seconds:
                reason = next(r for r in rs if not isinstance(r, dict))
                print(f"| {label} | {name} | {reason} | | |", flush=True)
                continue
            ratio = seconds[name] / seconds[baseline] if baseline in seconds else float("nan")
            peak = max(r["peak_above_inputs_and_grads_mb"] for r in rs)
            print(
                f"| {label} | {name} | {seconds[name]:.3f} | {ratio:.2f} | {peak:.0f} |", flush=True
            )
