"""What every kernel launch needs: tile sizes, the interpreter's upcast, the grid split,
the device guard and the deterministic sweeps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

from lmloss.stats.transform import LogitTransform
from lmloss.stats.triton.config import KernelTiles, TileConfig, tiles_for
from lmloss.stats.triton.tuning import tuned

Tensor = torch.Tensor

# Input dtypes the kernels take (float64 stays on the PyTorch engine).
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether the kernels run under Triton's interpreter.

    ``triton.jit`` decides when a function is defined, not at launch: Triton's own
    ``triton.language`` helpers when ``triton`` is first imported, ours when :mod:`.tiles`
    is. Both must have seen ``TRITON_INTERPRET=1``."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    from lmloss.stats.triton.tiles import logit_tile

    return isinstance(logit_tile, InterpretedFunction) and not isinstance(
        tl.zeros, triton.runtime.JITFunction
    )


@dataclass(frozen=True)
class Head:
    """One model's head, contiguous, with its transform as kernel arguments."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    transform: LogitTransform

    @classmethod
    def of(
        cls, hidden: Tensor, weight: Tensor, bias: Tensor | None, transform: LogitTransform
    ) -> Head:
        bias = None if bias is None else bias.contiguous()
        return cls(hidden.contiguous(), weight.contiguous(), bias, transform)

    @property
    def n(self) -> int:
        return self.hidden.shape[0]

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def args(self) -> tuple:
        """``h_ptr, w_ptr, b_ptr`` (the weight stands in for an absent bias)."""
        return (self.hidden, self.weight, self.weight if self.bias is None else self.bias)

    def transform_args(self) -> tuple[float, float, float]:
        """``scale, softcap, 1/temperature`` (softcap 1.0 when absent: never read)."""
        t = self.transform
        return float(t.logit_scale), float(t.softcap or 1.0), 1.0 / float(t.temperature)

    def flags(self) -> dict[str, bool]:
        return {"HAS_BIAS": self.bias is not None, "SOFTCAP": self.transform.softcap is not None}


def settings(
    kind: str, *dtypes: torch.dtype, tiles: KernelTiles | None = None
) -> tuple[TileConfig, KernelTiles, dict]:
    """The tile configuration, the tiles of ``kind`` (``"forward"`` or ``"grad"``; or
    ``tiles``, from the autotuner) and the constexpr/launch keywords common to every such
    kernel whose operands have ``dtypes``."""
    cfg = tiles_for(interpreting())
    tiles = tiles or cfg.tiles(kind, max(d.itemsize for d in dtypes))
    common = {
        "BLOCK_N": tiles.block_n,
        "BLOCK_V": tiles.block_v,
        "BLOCK_H": tiles.block_h,
        "PRECISION": _float32_dot_precision(),
        "num_warps": tiles.num_warps,
        "num_stages": tiles.num_stages,
    }
    return cfg, tiles, common


def on_device(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Launches go to the current CUDA device: make it ``tensor``'s (a model on
    ``cuda:1`` while ``cuda:0`` is current would otherwise read foreign memory)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def grad_sweeps(need_dh: bool, need_weight: bool) -> tuple[tuple[int, bool, bool], ...]:
    """``(SWEEP, hidden gradient?, weight and bias gradients?)`` of each gradient launch.

    One launch of tiles with atomic adds (run-to-run differences in the last bits);
    under ``torch.use_deterministic_algorithms(True)`` one sweep per owner instead (token
    blocks own the hidden gradient, vocabulary blocks the weight's): each recomputes the
    logits, so the backward runs 4 matmuls where it ran 3 when both are needed."""
    if not torch.are_deterministic_algorithms_enabled():
        return ((0, need_dh, need_weight),)
    sweeps = ((1, True, False),) if need_dh else ()
    return sweeps + (((2, False, True),) if need_weight else ())


def grad_grid(sweep: int, n: int, vocab: int, tiles: KernelTiles) -> tuple[int]:
    n_blocks, v_blocks = triton.cdiv(n, tiles.block_n), triton.cdiv(vocab, tiles.block_v)
    return ((n_blocks * v_blocks, n_blocks, v_blocks)[sweep],)


def autotuned(
    kernel: str, kind: str, head: Head, run: Callable[[KernelTiles], object], *others: Head
) -> KernelTiles | None:
    """:func:`.tuning.tuned` for a launch over ``head`` (and ``others``, a teacher)."""
    heads = (head, *others)
    shape = (head.n, head.vocab, *(h.hidden.shape[1] for h in heads))
    dtypes = tuple(h.hidden.dtype for h in heads)
    return tuned(kernel, kind, dtypes, shape, head.hidden.device, run, interpreting())


def _float32_dot_precision() -> str:
    """``tl.dot`` on float32 operands follows PyTorch's matmul setting (exact by default)."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def upcast(dtype: torch.dtype) -> bool:
    """The interpreter multiplies 16-bit floats wrongly; it gets float32 operands."""
    return interpreting() and dtype != torch.float32


def vocab_split(n: int, vocab: int, cfg: TileConfig, tiles: KernelTiles) -> tuple[int, int, int]:
    """``(token blocks, splits, tiles per split)`` for a forward over the vocabulary in
    ``tiles``; every split holds at least one vocabulary tile."""
    n_blocks = triton.cdiv(n, tiles.block_n)
    v_tiles = triton.cdiv(vocab, tiles.block_v)
    wanted = max(1, min(v_tiles, triton.cdiv(cfg.target_programs, n_blocks)))
    per_split = triton.cdiv(v_tiles, wanted)
    return n_blocks, triton.cdiv(v_tiles, per_split), per_split


def grad_buffers(head: Head, need: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """float32 gradient buffers of hidden, weight, bias (None where not needed)."""
    f32 = torch.float32
    dh = torch.zeros_like(head.hidden, dtype=f32) if need[0] else None
    dw = torch.zeros_like(head.weight, dtype=f32) if need[1] else None
    db = torch.zeros_like(head.bias, dtype=f32) if need[2] and head.bias is not None else None
    return dh, dw, db


def cast_grads(
    grads: tuple[Tensor | None, ...], head: Head, keep_float16: bool = False
) -> tuple[Tensor | None, ...]:
    """The float32 buffers in the inputs' dtypes; with ``keep_float16``, those of float16
    inputs stay float32 (gradients a GradScaler's scale multiplies later must not
    underflow float16 first; autograd casts them once scaled)."""
    likes = (head.hidden, head.weight, head.bias)

    def cast(g: Tensor | None, like: Tensor | None) -> Tensor | None:
        if g is None or (keep_float16 and like.dtype == torch.float16):
            return g
        return g.to(like.dtype)

    return tuple(cast(g, like) for g, like in zip(grads, likes))
