"""Argument checks shared by every layer.

Each helper raises a ``ValueError`` or ``TypeError`` whose message names the argument,
what it got and what was expected, so that bad input fails loudly before any math runs.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence

import torch


def require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_floating(name: str, value: object) -> torch.Tensor:
    tensor = require_tensor(name, value)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    return tensor


def require_integer(name: str, value: object) -> torch.Tensor:
    tensor = require_tensor(name, value)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {tensor.dtype}")
    return tensor


def require_ndim(name: str, tensor: torch.Tensor, allowed: Iterable[int]) -> None:
    allowed = tuple(allowed)
    if tensor.dim() not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name} must be {want}, got shape {tuple(tensor.shape)}")


def require_shape(name: str, tensor: torch.Tensor, shape: Sequence[int], like: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} (matching {like}), got {tuple(tensor.shape)}"
        )


def require_nonempty(name: str, tensor: torch.Tensor) -> None:
    if tensor.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(tensor.shape)}); expected at least one element"
        )


def require_finite(name: str, value: float) -> float:
    """A real number that is neither infinite nor NaN (logit transforms, scales)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def require_positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def require_in_range(
    name: str, value: float, low: float, high: float, *, low_open=False, high_open=False
) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value}")
    return float(value)


def require_choice(name: str, value: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown {name} {value!r}{hint} (choose from {', '.join(choices)})")
    return value


def require_names(
    what: str, names: str | Iterable[str], choices: Iterable[str], empty: str
) -> tuple[str, ...]:
    """One name or several, each among ``choices``, de-duplicated in order; ``empty`` opens
    the message when none is given."""
    choices = tuple(choices)
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ValueError(f"{empty} {sorted(choices)}")
    for name in names:
        require_choice(what, name, choices)
    return tuple(dict.fromkeys(names))


# How far above 0 a log-probability may lie before it is refused: the rounding of a
# log-softmax in float32 is ~1e-7 per token, and a bfloat16 value near 0 (a token of
# probability ~1) rounds by less than 4e-3 * |value|, so 1e-4 per token keeps every
# rounded log-probability and refuses a probability or a logit passed by mistake.
LOGPROB_TOLERANCE = 1e-4


def require_log_probabilities(name: str, tensor: torch.Tensor, tokens: int = 1) -> None:
    """Every value of ``tensor`` is a log-probability: at most ``LOGPROB_TOLERANCE`` per
    token above 0 (``tokens``: how many per-token values each one sums; masked positions
    must already be zero).

    On CPU a ``ValueError`` names the argument, the first bad index and its value. On an
    accelerator the check is ``torch._assert_async``, which does not wait for the device (a
    ``bool()`` here would cost a host sync per call); a bad value stops the process at the
    device's next synchronization with the same message.
    """
    limit = LOGPROB_TOLERANCE * tokens
    expected = f"{name} must hold log-probabilities (<= 0; up to {limit:g} above for rounding)"
    above = tensor.detach() > limit
    if tensor.device.type != "cpu":
        torch._assert_async(~above.any(), expected)
        return
    if bool(above.any()):
        index = tuple(above.nonzero()[0].tolist())
        value = tensor[index].item()
        raise ValueError(
            f"{expected}, got {value:g} at index {index}: a probability or a logit is not a "
            "log-probability"
        )
