"""Public entry points of the engine: ``token_stats`` and ``token_stats_from_logits``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch

from lmloss import _checks
from lmloss.stats.chunking import plan_chunks
from lmloss.stats.reference import stats_of_logits
from lmloss.stats.rows import scatter_rows, zeros_connected
from lmloss.stats.single_model import token_stats_autograd
from lmloss.stats.statistics import ALL_STATISTICS
from lmloss.stats.tiles import compute_dtype
from lmloss.stats.transform import LogitTransform

Tensor = torch.Tensor


@dataclass
class TokenStats:
    """Per-token statistics; a field is ``None`` unless it was asked for in ``want``.

    Every tensor has the shape of ``targets`` and the compute dtype (float32, or float64
    for float64 inputs). Positions whose target is ``ignore_index`` hold exact zeros and
    pass no gradient.

    Attributes:
        logp: log-probability of the target token.
        entropy: entropy of the predictive distribution.
        lse: log-sum-exp of the logits (the log partition function).
        sum_sq_probs: ``log Σ_v p_v²`` (the log collision probability).
        mean_logit: mean of the logits over the vocabulary.
        is_argmax: 1.0 where the target is a top-1 token (ties count), else 0; no gradient.
        expectation: ``Σ_v p_v t_v`` for the ``[V, D]`` table ``t`` passed as ``expect=``;
            shaped ``targets.shape + (D,)`` (the one vector statistic).
    """

    logp: Tensor | None = None
    entropy: Tensor | None = None
    lse: Tensor | None = None
    sum_sq_probs: Tensor | None = None
    mean_logit: Tensor | None = None
    is_argmax: Tensor | None = None
    expectation: Tensor | None = None

    def __getitem__(self, name: str) -> Tensor:
        value = getattr(self, name, None)
        if value is None:
            raise KeyError(f"statistic {name!r} was not computed; add it to want=")
        return value

    def asdict(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


assert {f.name for f in fields(TokenStats)} == set(ALL_STATISTICS), (
    "TokenStats must list every statistic"
)


def _parse_want(want: str | Iterable[str]) -> tuple[str, ...]:
    empty = "want must name at least one statistic from"
    return _checks.require_names("statistic in want", want, ALL_STATISTICS, empty)


def check_head(hidden: object, weight: object, bias: object) -> None:
    """``hidden`` ``[N, H]`` or ``[B, T, H]``, ``weight`` ``[V, H]`` of the same dtype,
    ``bias`` ``[V]`` or None: the head inputs every fused entry point takes."""
    hidden = _checks.require_floating("hidden", hidden)
    weight = _checks.require_floating("weight", weight)
    _checks.require_ndim("hidden", hidden, (2, 3))
    _checks.require_ndim("weight", weight, (2,))
    _checks.require_nonempty("hidden", hidden)
    _checks.require_nonempty("weight", weight)
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if bias is not None:
        _checks.require_floating("bias", bias)
        _checks.require_shape("bias", bias, (weight.shape[0],), "weight.shape[0]")


def check_targets(
    targets: object, leading: tuple[int, ...], vocab: int, ignore_index: int
) -> Tensor:
    """Token ids of any integer dtype, validated and returned as int64 (the index dtype)."""
    targets = _checks.require_integer("targets", targets).long()
    _checks.require_shape("targets", targets, leading, "the leading dimensions of hidden/logits")
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        example = int(targets[bad].flatten()[0])
        raise ValueError(
            f"targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}; "
            f"found {example}"
        )
    return targets


def _check_expect(expect: object, names: tuple[str, ...], vocab: int) -> Tensor | None:
    """The ``[V, D]`` table of the ``expectation`` statistic (detached), when it is wanted."""
    if "expectation" not in names:
        return None
    if expect is None:
        raise ValueError("the statistic 'expectation' needs expect= (a [V, D] table)")
    expect = _checks.require_floating("expect", expect)
    _checks.require_ndim("expect", expect, (2,))
    _checks.require_nonempty("expect", expect)
    if expect.shape[0] != vocab:
        raise ValueError(
            f"expect must have {vocab} rows (the vocabulary), got {tuple(expect.shape)}"
        )
    return expect.detach()


def _trailing(name: str, expect: Tensor | None) -> tuple[int, ...]:
    """Per-token shape of a statistic: () for all but the [D] ``expectation``."""
    return tuple(expect.shape[1:]) if name == "expectation" and expect is not None else ()


def token_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    want: str | Iterable[str] = ("logp",),
    memory_budget: int | None = None,
    expect: Tensor | None = None,
) -> TokenStats:
    """Per-token statistics of the LM head's predictive distribution, without the logits.

    The logits are ``z = (hidden @ weight.T + bias) * logit_scale``, then
    ``softcap * tanh(z / softcap)`` when ``softcap`` is given, then ``z / temperature`` — the
    order Hugging Face models apply them. The engine walks tiles of tokens × vocabulary
    with an online log-sum-exp, never holding an ``[N, V]`` tensor, accumulating in float32
    (float64 inputs stay float64). Gradients w.r.t. ``hidden``, ``weight`` and ``bias`` are
    exact; the backward recomputes each tile and skips statistics that received no gradient.

    Args:
        hidden: ``[N, H]`` or ``[B, T, H]`` final hidden states.
        weight: ``[V, H]`` LM-head weight.
        targets: ``[N]`` or ``[B, T]`` token ids in ``[0, V)`` or ``ignore_index``.
        bias: optional ``[V]`` head bias.
        ignore_index: targets with this value yield zeros and no gradient.
        temperature, softcap, logit_scale: the logit transform above.
        want: names of the statistics to compute: ``logp``, ``entropy``, ``lse``,
            ``sum_sq_probs``, ``mean_logit``, ``is_argmax``, ``expectation``.
        memory_budget: bytes for the logit tiles (default 128 MiB, or
            ``LMLOSS_MEMORY_BUDGET_MB``).
        expect: ``[V, D]`` table ``t`` for ``expectation = Σ_v p_v t_v`` (e.g. EMO's
            normalized embeddings); treated as a constant (no gradient).

    Returns:
        :class:`TokenStats` with the asked-for fields, each shaped like ``targets``.

    Example:
        >>> h, w = torch.randn(6, 8), torch.randn(50, 8)
        >>> y = torch.tensor([1, 2, 3, -100, 4, 5])
        >>> s = token_stats(h, w, y, want=("logp", "entropy"))
        >>> ref = torch.log_softmax(h @ w.T, -1)[torch.arange(6), y.clamp(min=0)]
        >>> bool(torch.allclose(s.logp[y != -100], ref[y != -100], atol=1e-5))
        True
    """
    check_head(hidden, weight, bias)
    names = _parse_want(want)
    transform = LogitTransform(logit_scale=logit_scale, softcap=softcap, temperature=temperature)
    leading = tuple(hidden.shape[:-1])
    targets = check_targets(targets, leading, weight.shape[0], ignore_index)
    table = _check_expect(expect, names, weight.shape[0])

    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    rows = (flat_targets != ignore_index).nonzero().squeeze(1)
    if rows.numel() == 0:
        dtype = compute_dtype(hidden.dtype)
        shapes = {name: (*leading, *_trailing(name, table)) for name in names}
        return TokenStats(**zeros_connected(shapes, dtype, hidden, weight, bias))
    plan = plan_chunks(
        rows.numel(), weight.shape[0], compute_dtype(hidden.dtype).itemsize, memory_budget
    )
    values = token_stats_autograd(
        flat_hidden.index_select(0, rows),
        weight,
        bias,
        flat_targets[rows],
        transform,
        names,
        plan,
        table,
    )
    return TokenStats(**scatter_rows(values, rows, leading))


def token_stats_from_logits(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    want: str | Iterable[str] = ("logp",),
    expect: Tensor | None = None,
) -> TokenStats:
    """The statistics of :func:`token_stats` from raw logits ``hidden @ weight.T + bias``.

    ``logits`` is ``[N, V]`` or ``[B, T, V]``; the same scale, soft cap and temperature are
    applied. This path materializes the full distribution and is the engine's test oracle.
    """
    logits = _checks.require_floating("logits", logits)
    _checks.require_ndim("logits", logits, (2, 3))
    _checks.require_nonempty("logits", logits)
    names = _parse_want(want)
    transform = LogitTransform(logit_scale=logit_scale, softcap=softcap, temperature=temperature)
    leading = tuple(logits.shape[:-1])
    targets = check_targets(targets, leading, logits.shape[-1], ignore_index)
    table = _check_expect(expect, names, logits.shape[-1])
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    rows = (flat_targets != ignore_index).nonzero().squeeze(1)
    if rows.numel() == 0:
        shapes = {name: (*leading, *_trailing(name, table)) for name in names}
        return TokenStats(**zeros_connected(shapes, compute_dtype(logits.dtype), logits))
    z = transform.apply(flat_logits.index_select(0, rows).to(compute_dtype(logits.dtype)))
    values = stats_of_logits(z, flat_targets[rows], names, table)
    return TokenStats(**scatter_rows(values, rows, leading))
