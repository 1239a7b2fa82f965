"""Compile report: the kernel variants the backend launches, compiled for a GPU without one.

The host code runs for real on ``meta`` tensors of a model's shape (Gemma-2-2B's head by
default: N = 8192, H = 2304, V = 256000) while every ``kernel[grid](...)`` call is recorded
instead of launched (:func:`recorded_launches`). Each recorded call is specialised as
Triton's launcher would specialise it (:func:`compile_source`: 16-byte aligned pointers
and integers divisible by 16 get divisibility hints, an integer equal to 1 becomes a
constant), so what compiles here is what would run there, then compiled for
``sm_{arch}``. Per kernel variant: registers, spilled bytes (``ptxas -v``), shared memory,
and the atomic instructions of its PTX.

It fails (exit status 1) on a spill in a single-model kernel, on shared memory over the
architecture's limit, and on an acquire/release ("fenced") atomic, which on Hopper turns
each add into a GPU-wide memory barrier.

Run: ``python -m lmloss.stats.triton.report [--arch 90] [--only grad] [--scenario NAME]
[--json FILE]``
(not under ``TRITON_INTERPRET=1``); ``LMLOSS_TRITON_TILES`` applies, so a tile choice can
be checked before a GPU is at hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmloss.stats.transform import LogitTransform

Tensor = torch.Tensor

GEMMA_2_2B = {"N": 8192, "H": 2304, "V": 256000}
# Shared memory per block (bytes): H100 (sm_90) 227 KiB, A100 (sm_80) 163 KiB, sm_86/89 99 KiB.
SHARED_LIMIT = {90: 232448, 80: 166912, 89: 101376, 86: 101376}
SINGLE_MODEL_KERNELS = ("moments_kernel", "logit_grad_kernel")
# An atomic or reduction with acquire/release semantics, or a memory fence (not the
# ``fence.proxy.async``/``fence.sync`` of Hopper's asynchronous copies and matmuls).
FENCED = re.compile(
    r"\b(?:atom|red)\.[\w.]*\b(?:acq_rel|acquire|release)\b|\bfence\.(?:acq_rel|sc)\b|\bmembar\."
)
ATOMIC = re.compile(r"\b(?:atom|red)\.global\.")


@dataclass(frozen=True)
class Launch:
    """One recorded ``kernel[grid](*args, **kwargs)`` call and the scenario that made it."""

    scenario: str
    kernel: object  # triton.JITFunction
    args: tuple
    kwargs: dict


@dataclass
class Row:
    """One compiled variant: what the report prints and stores."""

    scenario: str
    kernel: str
    constexprs: str
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    atomics: int
    fenced_atomics: int
    compile_s: float
    problems: list[str]


# ------------------------------------------------------------------ recording launches


KERNELS = {
    "single": ("moments_kernel", "logit_grad_kernel"),
    "pair": ("pair_moments_kernel", "pair_sums_kernel", "pair_grad_kernel"),
}


@contextlib.contextmanager
def patched_kernels(stand_in: Callable[[object], object]) -> Iterator[None]:
    """Replace every kernel the host code of :mod:`.single` and :mod:`.pair` launches by
    ``stand_in(kernel)`` (an object launched as ``obj[grid](*args, **kwargs)``)."""
    from lmloss.stats.triton import pair, single

    modules = {"single": single, "pair": pair}
    originals = {(m, n): getattr(modules[m], n) for m, names in KERNELS.items() for n in names}
    try:
        for (module, name), kernel in originals.items():
            setattr(modules[module], name, stand_in(kernel))
        yield
    finally:
        for (module, name), kernel in originals.items():
            setattr(modules[module], name, kernel)


class _Recorder:
    def __init__(self, kernel, sink: list, scenario: list[str]):
        self.kernel, self.sink, self.scenario = kernel, sink, scenario

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.sink.append(Launch(self.scenario[0], self.kernel, args, kwargs))

        return record


@contextlib.contextmanager
def recorded_launches() -> Iterator[tuple[list[Launch], Callable[[str], None]]]:
    """Record the kernel launches instead of running them; yields the list of launches
    and a function naming the scenario the next launches belong to."""
    launches: list[Launch] = []
    current = ["?"]
    with patched_kernels(lambda kernel: _Recorder(kernel, launches, current)):
        yield launches, lambda label: current.__setitem__(0, label)


@contextlib.contextmanager
def _torch_flags(tf32: bool = False, deterministic: bool = False) -> Iterator[None]:
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.use_deterministic_algorithms(deterministic)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
        torch.use_deterministic_algorithms(old_det)


def _head(shape: dict, dtype: torch.dtype, bias: bool, grad: bool = True) -> tuple:
    def leaf(*size):
        return torch.empty(*size, device="meta", dtype=dtype).requires_grad_(grad)

    hidden, weight = leaf(shape["N"], shape["H"]), leaf(shape["V"], shape["H"])
    return hidden, weight, leaf(shape["V"]) if bias else None


def _targets(shape: dict) -> Tensor:
    return torch.zeros(shape["N"], dtype=torch.long, device="meta")


SOFT_CAPPED = LogitTransform(logit_scale=1.0, softcap=30.0, temperature=1.0)


def scenarios(shape: dict) -> dict[str, Callable[[], None]]:
    """Named host calls that, between them, launch every kernel variant worth compiling:
    each dtype, TF32, the deterministic sweeps, a frozen and a trained teacher."""
    from lmloss.stats.divergence import PairSpec, pair_plan
    from lmloss.stats.divergence_terms import resolve_hyper
    from lmloss.stats.triton import pair, single

    def stats(dtype, names, transform=SOFT_CAPPED, bias=True):
        def run():
            hidden, weight, b = _head(shape, dtype, bias)
            out = single.token_stats(hidden, weight, b, _targets(shape), transform, names)
            sum(out[n].sum() for n in names if n != "is_argmax").backward()

        return run

    def one_pass(dtype):
        def run():
            hidden, weight, b = _head(shape, dtype, bias=False)
            total, _ = single.eager_token_loss(
                hidden, weight, b, _targets(shape), LogitTransform(), ("logp",),
                lambda v, rows: -v["logp"].sum() / shape["N"],
            )  # fmt: skip
            total.backward()

        return run

    def distill(dtype, names, hyper, teacher_grad):
        def run():
            student = _head(shape, dtype, bias=False)
            teacher = _head(shape, dtype, bias=False, grad=teacher_grad)
            spec = PairSpec(
                names=names,
                hyper={n: resolve_hyper(n, hyper) for n in names},
                student_transform=LogitTransform(temperature=2.0),
                teacher_transform=LogitTransform(temperature=2.0),
                plan=pair_plan(shape["N"], shape["V"], 4),
                dtype=torch.float32,
            )
            out = pair.pair_terms((*student, *teacher, None, None), spec)
            sum(v.sum() for v in out.values()).backward()

        return run

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    return {
        "token_stats bf16, bias + soft cap": stats(bf16, ("logp", "entropy", "lse")),
        "token_stats fp16, sum_sq_probs": stats(fp16, ("logp", "sum_sq_probs")),
        "token_stats fp32": stats(fp32, ("logp",), LogitTransform(), bias=False),
        "token_stats fp32, TF32": stats(fp32, ("logp",), LogitTransform(), bias=False),
        "token_stats bf16, deterministic": stats(bf16, ("logp",), LogitTransform(), False),
        "cross-entropy one pass bf16": one_pass(bf16),
        "JSD bf16, frozen teacher": distill(bf16, ("jsd",), {"beta": 0.5}, False),
        "forward+reverse KL bf16, trained teacher": distill(
            bf16, ("forward_kl", "reverse_kl"), {}, True
        ),
        "JSD fp32, frozen teacher": distill(fp32, ("jsd",), {"beta": 0.5}, False),
    }


def record(
    shape: dict, only: str | None = None, wanted: tuple[str, ...] | None = None
) -> list[Launch]:
    """The launches of the scenarios ``wanted`` (all by default) of kernels whose name
    contains ``only``, one per compiled variant."""
    with recorded_launches() as (launches, name):
        for label, run in scenarios(shape).items():
            if wanted is not None and label not in wanted:
                continue
            name(label)
            flags = {"tf32": "TF32" in label, "deterministic": "deterministic" in label}
            with _torch_flags(**flags):
                run()
    unique: dict[str, Launch] = {}
    for launch in launches:
        if only and only not in launch.kernel.__name__:
            continue
        unique.setdefault(_variant_key(launch), launch)
    return list(unique.values())


# ------------------------------------------------------------------ compiling


class _Aligned:
    """What the launcher sees of a tensor: its dtype and a 16-byte aligned address."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    @staticmethod
    def data_ptr() -> int:
        return 0


def compile_source(launch: Launch):
    """``(ASTSource, options)`` of a launch, specialised as Triton's launcher would."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.compiler import ASTSource

    fn = launch.kernel
    bound = dict(zip(fn.arg_names, launch.args))
    bound.update({k: v for k, v in launch.kwargs.items() if k in fn.arg_names})
    options = {k: v for k, v in launch.kwargs.items() if k not in fn.arg_names}
    signature, constexprs, attrs = {}, {}, {}
    for index, (param, name) in enumerate(zip(fn.params, fn.arg_names)):
        value = bound[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        if isinstance(value, torch.Tensor):
            value = _Aligned(value.dtype)
        kind, key = native_specialize_impl(BaseBackend, value, False, True, True)
        if kind == "constexpr":
            signature[name], constexprs[name] = "constexpr", key
        else:
            signature[name] = kind
            if key == "D":
                attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), options


def _variant_key(launch: Launch) -> str:
    src, options = compile_source(launch)
    return repr((src.name, sorted(src.signature.items()), src.attrs, src.constants, options))


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """``(registers, spilled bytes)`` of the one kernel in ``ptx``, from ``ptxas -v``."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run(
            [
                get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                f"--gpu-name={sm_arch_from_capability(arch)}", str(source),
                "-o", str(Path(tmp) / "kernel.o"),
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    log = result.stderr + result.stdout
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return int(registers.group(1)) if registers else -1, int(spills.group(1)) if spills else 0


# Constexprs that tell the variants of a kernel apart in the report.
SHOWN = ("PRECISION", "TERM", "HAS_Q", "SWEEP", "SCALE_DA", "NEED_DH_T")


def _variant(launch: Launch, src) -> str:
    named = {name: src.constants.get((i,)) for i, name in enumerate(launch.kernel.arg_names)}
    flags = [f"{k}={v}" for k, v in named.items() if k.startswith(SHOWN) and v is not None]
    return " ".join([*flags, "tile={BLOCK_N}x{BLOCK_V}x{BLOCK_H}".format(**named)])


def _problems(name: str, spills: int, shared: int, fenced: int, arch: int) -> list[str]:
    problems = []
    if spills and name in SINGLE_MODEL_KERNELS:
        problems.append(f"spills {spills} B")
    limit = SHARED_LIMIT.get(arch)
    if limit is not None and shared > limit:
        problems.append(f"shared memory {shared} B over {limit} B")
    if fenced:
        problems.append(f"{fenced} fenced atomics")
    return problems


def compile_launch(launch: Launch, arch: int) -> Row:
    import triton
    from triton.backends.compiler import GPUTarget

    src, options = compile_source(launch)
    start = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    registers, spills = ptxas_usage(ptx, arch)
    shared = compiled.metadata.shared
    fenced = len(FENCED.findall(ptx))
    return Row(
        scenario=launch.scenario,
        kernel=src.name,
        constexprs=_variant(launch, src),
        num_warps=options.get("num_warps", 4),
        num_stages=options.get("num_stages", 3),
        registers=registers,
        spill_bytes=spills,
        shared_bytes=shared,
        atomics=len(ATOMIC.findall(ptx)),
        fenced_atomics=fenced,
        compile_s=round(seconds, 1),
        problems=_problems(src.name, spills, shared, fenced, arch),
    )


def markdown(rows: list[Row], arch: int) -> str:
    lines = [
        f"| scenario | kernel | variant | warps/stages | registers | spill (B) | "
        f"shared (B) | atomics (fenced) | sm_{arch} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "; ".join(r.problems) or "ok"
        lines.append(
            f"| {r.scenario} | {r.kernel} | {r.constexprs} | {r.num_warps}/{r.num_stages} "
            f"| {r.registers} | {r.spill_bytes} | {r.shared_bytes} "
            f"| {r.atomics} ({r.fenced_atomics}) | {verdict} |"
        )
    return "\n".join(lines)


def run(
    arch: int = 90,
    shape: dict | None = None,
    only: str | None = None,
    wanted: tuple[str, ...] | None = None,
) -> list[Row]:
    from lmloss.stats.triton.launch import interpreting

    if interpreting():
        raise RuntimeError(
            "the compile report compiles for a GPU: run it without TRITON_INTERPRET=1"
        )
    launches = record(shape or GEMMA_2_2B, only, wanted)
    return [compile_launch(launch, arch) for launch in launches]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90")
    parser.add_argument("--only", help="kernels whose name contains this (e.g. grad)")
    parser.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    parser.add_argument("--shape", default="8192,2304,256000", help="N,H,V")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    n, h, v = (int(x) for x in args.shape.split(","))
    wanted = tuple(args.scenario) if args.scenario else None
    rows = run(args.arch, {"N": n, "H": h, "V": v}, args.only, wanted)
    print(markdown(rows, args.arch), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    failed = [r for r in rows if r.problems]
    for r in failed:
        print(f"FAIL {r.kernel} ({r.scenario}): {'; '.join(r.problems)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
