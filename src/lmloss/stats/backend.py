"""Which implementation runs the engine: PyTorch tiles or the Triton kernels.

``with lmloss.backend("torch"):`` picks it for the calls inside the block (this thread or
task only); elsewhere ``LMLOSS_BACKEND`` picks it:

* ``auto`` (default) — Triton for CUDA tensors when ``triton`` imports, PyTorch otherwise;
* ``torch`` — always PyTorch; ``triton`` is never imported;
* ``triton`` — always Triton; on CPU tensors this needs Triton's interpreter
  (``TRITON_INTERPRET=1``, set before ``triton`` is first imported: ``triton.jit`` reads it
  when a function is defined).

The Triton kernels cover the hot paths (:mod:`lmloss.stats.triton`): the statistics
``logp``, ``lse``, ``entropy``, ``mean_logit``, ``sum_sq_probs``, ``is_argmax`` of one head,
and the ``forward_kl``, ``reverse_kl``, ``jsd``, ``tvd`` terms between two heads, for
float32, bfloat16 and float16 inputs. Anything else (``expectation``, other
divergences, a teacher given as logits, float64) runs on the PyTorch engine whatever the
setting. Each ``route_*`` function returns None when the PyTorch engine should run.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

import torch

Tensor = torch.Tensor

BACKEND_VARIABLE = "LMLOSS_BACKEND"
BACKENDS = ("auto", "torch", "triton")
_TRUE = ("1", "true", "yes", "on", "y")


# the backend of the innermost ``with backend(...)`` block, None outside any
_CHOSEN: ContextVar[str | None] = ContextVar("lmloss_backend", default=None)


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the engine on ``name`` (``"auto"``, ``"torch"`` or ``"triton"``) for the calls made
    inside the block, whatever ``LMLOSS_BACKEND`` says; blocks nest, and other threads keep
    their own choice. The backward of a call follows the backend its forward used.

    Example:
        >>> import torch, lmloss
        >>> h, w, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, 3, 4])
        >>> with lmloss.backend("torch"):
        ...     stats = lmloss.token_stats(h, w, y)
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    token = _CHOSEN.set(name)
    try:
        yield
    finally:
        _CHOSEN.reset(token)


def _asked_by() -> str:
    """How the current backend was asked for, for messages."""
    chosen = _CHOSEN.get()
    return f"lmloss.backend({chosen!r})" if chosen else f"{BACKEND_VARIABLE}=triton"


def backend_setting() -> str:
    """The backend of the innermost :func:`backend` block, else the validated value of
    ``LMLOSS_BACKEND`` (``auto`` when unset)."""
    chosen = _CHOSEN.get()
    if chosen is not None:
        return chosen
    value = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"{BACKEND_VARIABLE} must be one of {', '.join(BACKENDS)}; "
            f"got {os.environ[BACKEND_VARIABLE]!r}"
        )
    return value


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


@functools.cache
def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(tensor: Tensor) -> bool:
    """Whether the engine runs on the Triton kernels for inputs living where ``tensor`` is."""
    setting = backend_setting()
    if setting == "torch":
        return False
    if setting == "auto":
        return tensor.is_cuda and _triton_imports()
    if not _triton_imports():
        raise ValueError(f"{_asked_by()} but the triton package cannot be imported")
    if not tensor.is_cuda:
        if not _interpreter_requested():
            raise ValueError(
                f"{_asked_by()} with tensors on {tensor.device.type} needs Triton's "
                "interpreter: set TRITON_INTERPRET=1 (before triton is first imported), "
                "use CUDA tensors, or choose the torch backend"
            )
        _require_interpreted_kernels()
    return True


def _require_interpreted_kernels() -> None:
    # triton.jit reads TRITON_INTERPRET when a kernel is defined, not when it runs.
    from lmloss.stats.triton.launch import interpreting

    if not interpreting():
        raise ValueError(
            "Triton compiles kernels for a GPU unless TRITON_INTERPRET=1 was set before "
            "`import triton` (and before lmloss first ran a kernel); set it at the start of "
            "the process to run the Triton backend on CPU tensors"
        )


def _kernel_dtype(*tensors: Tensor | None) -> bool:
    from lmloss.stats.triton.launch import KERNEL_DTYPES

    return all(t is None or t.dtype in KERNEL_DTYPES for t in tensors)


def _single_on_triton(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, names: tuple[str, ...], table
) -> bool:
    """Triton is selected and has kernels for these statistics and dtypes (no table)."""
    if not use_triton(hidden) or table is not None:
        return False
    from lmloss.stats.triton.single import KERNEL_STATISTICS

    return set(names) <= KERNEL_STATISTICS and _kernel_dtype(hidden, weight, bias)


def route_token_stats(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform,
    names: tuple[str, ...],
    table: Tensor | None,
) -> dict[str, Tensor] | None:
    """:func:`lmloss.stats.single_model.token_stats_autograd` on Triton, or None."""
    if not _single_on_triton(hidden, weight, bias, names, table):
        return None
    from lmloss.stats.triton import single

    return single.token_stats(hidden, weight, bias, targets, transform, names)


def route_token_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform,
    names: tuple[str, ...],
    token_loss,
    expect: Tensor | None,
) -> tuple[Tensor, dict[str, Tensor]] | None:
    """:func:`lmloss.stats.single_model.eager_token_loss` on Triton, or None."""
    if not _single_on_triton(hidden, weight, bias, names, expect):
        return None
    from lmloss.stats.triton import single

    return single.eager_token_loss(hidden, weight, bias, targets, transform, names, token_loss)


def _pair_supported(inputs: tuple, spec) -> bool:
    from lmloss.stats.triton import pair

    s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, t_logits, _ = inputs
    return (
        t_logits is None
        and set(spec.names) <= pair.KERNEL_TERMS
        and _kernel_dtype(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias)
    )


def route_pair_terms(inputs: tuple, spec) -> dict[str, Tensor] | None:
    """:func:`lmloss.stats.divergence.pair_terms_autograd` on Triton, or None."""
    if not use_triton(inputs[0]) or not _pair_supported(inputs, spec):
        return None
    from lmloss.stats.triton import pair

    return pair.pair_terms(inputs, spec)


def route_pair_loss(
    inputs: tuple, spec, block_loss, extra: Mapping[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]] | None:
    """:func:`lmloss.stats.divergence.eager_pair_loss` on Triton, or None."""
    if not use_triton(inputs[0]) or not _pair_supported(inputs, spec):
        return None
    from lmloss.stats.triton import pair

    return pair.eager_pair_loss(inputs, spec, block_loss, extra)
