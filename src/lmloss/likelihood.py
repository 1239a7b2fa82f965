"""Front door of the likelihood (SFT) family: per-token losses, from statistics or fused.

Two entry points, one definition of each loss (``lmloss.objectives.likelihood``):

* :func:`likelihood_loss` — from per-token statistics you already have (e.g. from
  :func:`lmloss.token_stats` or :func:`lmloss.token_stats_from_logits`).
* :func:`fused_likelihood_loss` — from hidden states and the LM-head weight. The loss is a
  sum of per-token terms with coefficients known in advance, so the engine computes the
  gradients w.r.t. hidden, weight and bias during the forward pass
  (:func:`lmloss.stats.single_model.eager_token_loss`): one pass over the vocabulary, no
  ``[N, V]`` logits, 6·N·H·V FLOPs as for a plain forward + backward.

An objective's spec (``lmloss.spec(name).inputs``) names its inputs: engine statistics
(``logps``, ``lse``, ``mean_logit``, ``expectation``, ...) and per-token side inputs derived
on the fused path (``target_embedding``); its hyper-parameters are ``spec.hyper``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from lmloss import _checks, registry
from lmloss.head import Head, door_head
from lmloss.objectives import reduce
from lmloss.objectives.binding import ObjectiveArgumentError, bind, positional_tensors, renamed
from lmloss.objectives.likelihood.reweight import sequence_factors
from lmloss.objectives.reduce import (
    check_reduction,
    check_token_weights,
    token_coefficients,
)
from lmloss.objectives.signatures import FRONT_DOOR_NAMES
from lmloss.output import LossOutput
from lmloss.stats import token_stats
from lmloss.stats.api import check_head, check_targets
from lmloss.stats.chunking import plan_chunks
from lmloss.stats.single_model import compute_dtype, eager_token_loss
from lmloss.stats.statistics import ALL_STATISTICS, TABLE_STATISTICS

Tensor = torch.Tensor

FAMILY = "likelihood"

# Side inputs the fused path derives per token from the targets and the embedding table.
_DERIVED: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "target_embedding": lambda table, targets: table.index_select(0, targets),
}


_HEAD = ("hidden", "weight", "targets", "bias")
# The door's per-keyword form of the head (``head=`` replaces them).
_HEAD_KEYWORDS = ("weight", "bias", "softcap", "logit_scale")
# front-door keyword -> the objective's parameter name
_PARAMETER = {door: param for param, door in FRONT_DOOR_NAMES.items()}


def _parameters(entry: registry.Entry) -> tuple[str, ...]:
    """The objective's per-token inputs, by its own parameter names (``logp``, ``lse``, ...)."""
    return tuple(_PARAMETER.get(k, k) for k in entry.spec.inputs)


def _bind(name: str, kwargs: dict) -> tuple[registry.Entry, dict, dict]:
    """The objective, the per-token inputs it takes and the hyper-parameters given.

    Any engine statistic may be passed (``**stats.asdict()`` works for every objective);
    those the objective does not take are ignored.
    """
    entry = registry.get(name, family=FAMILY)
    ignored = (set(ALL_STATISTICS) | set(_DERIVED)) - set(entry.spec.takes)
    given = {k: v for k, v in kwargs.items() if k not in ignored}
    tensors, hyper = bind(entry.spec, given, require=())
    return entry, tensors, hyper


def _check_token_input(name: str, value: object, like: Tensor) -> Tensor:
    """A statistic shaped like ``logp``; a vector input shaped ``logp.shape + (D,)``."""
    tensor = _checks.require_floating(name, value)
    vector = name in TABLE_STATISTICS or name in _DERIVED
    if (
        tuple(tensor.shape[: like.dim()]) != tuple(like.shape)
        or tensor.dim() != like.dim() + vector
    ):
        want = f"{tuple(like.shape)} + (D,)" if vector else f"{tuple(like.shape)}"
        raise ValueError(
            f"{name} must have shape {want} (matching logp), got {tuple(tensor.shape)}"
        )
    return tensor.to(compute_dtype(tensor.dtype))


def _reduce(
    per_token: Tensor,
    mask: Tensor,
    weights: Tensor | None,
    reduction: str,
    num_items: float | Tensor | None,
    reweight: str | None,
    reweight_temperature: float,
) -> tuple[Tensor, Tensor]:
    """Coefficients ``c`` (no gradient) and the scalar ``Σ c·ℓ``."""
    coef = token_coefficients(mask, weights, reduction=reduction, num_items=num_items)
    if reweight is not None:
        factors = sequence_factors(
            per_token, mask, weights, reweight, temperature=reweight_temperature
        )
        coef = coef * factors[:, None]
    return coef, (coef * per_token).sum()


def likelihood_loss(
    name: str,
    *,
    logps: Tensor | None = None,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    aggregation: str | None = None,
    num_items: float | Tensor | None = None,
    reweight: str | None = None,
    reweight_temperature: float = 1.0,
    **inputs_and_hyper,
) -> LossOutput:
    """A likelihood objective from per-token statistics.

    Args:
        name: registry name (``lmloss.list_objectives("likelihood")``): ``ce``,
            ``label_smoothing``, ``z_loss``, ``dco``, ``comp_sum``, ``focal``, ``emo``.
        logps: ``[N]`` or ``[B, T]`` log-probability of each target (formerly ``logp=``,
            deprecated).
        mask: 0/1 or bool, shaped like ``logps``: the tokens to train on (default: all).
        weights: optional per-token weights ≥ 0 (token-weighted cross-entropy, FAIT-style):
            the token mean becomes ``Σ w·ℓ / Σ w``.
        aggregation: ``token_mean`` (default), ``sequence_mean`` (``[B, T]`` only), ``sum``
            or ``none`` (loss is the sum; ``per_example`` holds the per-token losses).
            Formerly ``reduction=`` (deprecated).
        num_items: replaces the local count of a mean by a global one (tokens for
            ``token_mean``, sequences for ``sequence_mean``) — the gradient-accumulation
            and data-parallel correct normalizer.
        reweight: ``None`` or a dynamic loss-based sample reweighting strategy
            (``linupper``, ``quadratic``, ``extremes``; ``[B, T]`` only).
        reweight_temperature: the strategy's softmax temperature r.
        **inputs_and_hyper: the other statistics or inputs the objective needs (``lse``,
            ``mean_logit``, ``expectation``, ``target_embedding``, ...) and its
            hyper-parameters (``eps``, ``z_weight``, ``n``, ``tau``, ``gamma``).

    Returns:
        :class:`LossOutput` with the scalar loss, the per-token losses (zeros at masked
        positions) and ``metrics["num_tokens"]``.
    """
    where = "likelihood_loss"
    logps = renamed(inputs_and_hyper, "logp", "logps", logps, where)
    reduction = renamed(inputs_and_hyper, "reduction", "aggregation", aggregation, where)
    reduction = reduction or "token_mean"
    entry, tensors, hyper = _bind(name, inputs_and_hyper)
    logp = _checks.require_floating("logps", logps)
    _checks.require_nonempty("logps", logp)
    logp = logp.to(compute_dtype(logp.dtype))
    given = {"logp": logp, **{_PARAMETER.get(k, k): v for k, v in tensors.items()}}
    parameters = _parameters(entry)
    missing = [k for k in parameters if given.get(k) is None]
    if missing:
        raise ObjectiveArgumentError(
            f"likelihood objective {entry.name!r} needs {missing}; pass them as keyword arguments"
        )
    values = {k: logp if k == "logp" else _check_token_input(k, given[k], logp) for k in parameters}
    check_reduction(reduction, num_items, logp.dim())
    mask = torch.ones_like(logp) if mask is None else reduce.as_mask("mask", mask, logp, "logp")
    weights = None if weights is None else check_token_weights(weights, logp)
    _checks.require_log_probabilities("logps", torch.where(mask > 0, logp, 0.0))

    per_token = torch.where(mask > 0, entry(**values, **hyper), torch.zeros_like(logp))
    _, loss = _reduce(
        per_token, mask, weights, reduction, num_items, reweight, reweight_temperature
    )
    return LossOutput(loss=loss, per_example=per_token, metrics={"num_tokens": mask.sum().detach()})


def _check_table(table: object, needed: bool, vocab: int, name: str) -> Tensor | None:
    if not needed:
        return None
    if table is None:
        raise ValueError(f"likelihood objective {name!r} needs embedding_table= (a [V, D] tensor)")
    table = _checks.require_floating("embedding_table", table)
    _checks.require_ndim("embedding_table", table, (2,))
    if table.shape[0] != vocab:
        raise ValueError(
            f"embedding_table must have {vocab} rows (the vocabulary), got {tuple(table.shape)}"
        )
    return table.detach()


@dataclass
class _Objective:
    """A likelihood objective bound to its hyper-parameters and its derived side inputs."""

    entry: registry.Entry
    input_names: tuple[str, ...]
    hyper: dict
    derived: dict[str, Tensor]  # per-token side inputs, indexed like the statistics

    def __call__(self, stats: dict[str, Tensor], rows: slice = slice(None)) -> Tensor:
        inputs = {k: stats[k] if k in stats else self.derived[k][rows] for k in self.input_names}
        return self.entry(**inputs, **self.hyper)


def _with_side_inputs(entry, hyper, targets, valid, table) -> _Objective:
    """Derive the side inputs (``target_embedding``) the objective takes, for every token."""
    names = _parameters(entry)
    safe_targets = torch.where(valid, targets, 0).reshape(-1)
    derived = {k: fn(table, safe_targets) for k, fn in _DERIVED.items() if k in names}
    return _Objective(entry, names, hyper, derived)


def _per_token_autograd(objective: _Objective, head: tuple, mask: Tensor, engine_kwargs) -> Tensor:
    """Per-token losses through ``token_stats`` (differentiable when grad mode is on)."""
    stats = token_stats(*head, **engine_kwargs).asdict()
    leading = mask.dim()
    flat = {k: v.reshape(-1, *v.shape[leading:]) for k, v in stats.items()}
    return torch.where(mask > 0, objective(flat).reshape(mask.shape), 0.0)


def _eager_loss(
    objective: _Objective, head: tuple, coef: Tensor, mask: Tensor, transform, engine_kwargs
) -> tuple[Tensor, Tensor]:
    """``Σ c·ℓ`` with gradients computed during the pass, and the detached per-token losses."""
    hidden, weight, targets, bias = head
    dtype = coef.dtype
    flat_mask = mask.reshape(-1)
    rows = flat_mask.nonzero().squeeze(1)
    if rows.numel() == 0:
        return _connected_zero(dtype, hidden, weight, bias), mask.new_zeros(mask.shape, dtype=dtype)
    coef_rows = coef.reshape(-1)[rows]
    on_rows = replace(objective, derived={k: v[rows] for k, v in objective.derived.items()})

    def token_loss(values: dict[str, Tensor], block: slice) -> Tensor:
        return (on_rows(values, block) * coef_rows[block]).sum()

    vocab = weight.shape[0]
    plan = plan_chunks(
        rows.numel(), vocab, dtype.itemsize, engine_kwargs["memory_budget"], whole_vocab=True
    )
    loss, values = eager_token_loss(
        hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows),
        weight,
        bias,
        targets.reshape(-1)[rows],
        transform,
        engine_kwargs["want"],
        token_loss,
        plan,
        engine_kwargs.get("expect"),
    )
    with torch.no_grad():
        per_token = flat_mask.new_zeros(flat_mask.shape).index_put((rows,), on_rows(values))
    return loss, per_token.reshape(mask.shape)


def _connected_zero(dtype: torch.dtype, *tensors: Tensor | None) -> Tensor:
    """A scalar 0 that still belongs to the graph of ``tensors`` (zero gradients)."""
    zero = tensors[0].new_zeros((), dtype=dtype)
    return zero + sum(t.reshape(-1)[:0].sum().to(dtype) for t in tensors if t is not None)


def fused_likelihood_loss(
    name: str,
    *args: Tensor,
    hidden: Tensor | None = None,
    head: Head | None = None,
    targets: Tensor | None = None,
    weights: Tensor | None = None,
    aggregation: str | None = None,
    num_items: float | Tensor | None = None,
    reweight: str | None = None,
    reweight_temperature: float = 1.0,
    ignore_index: int = -100,
    temperature: float = 1.0,
    memory_budget: int | None = None,
    embedding_table: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    softcap: float | None = None,
    logit_scale: float | None = None,
    **hyper,
) -> LossOutput:
    """A likelihood objective straight from hidden states and the LM-head weight.

    Same objective, reductions and options as :func:`likelihood_loss`; the statistics
    come from the engine and the trained tokens are those whose target is not
    ``ignore_index``. Gradients w.r.t. ``hidden``, ``weight`` and ``bias`` are computed
    during this call (one pass over the vocabulary) and handed out by ``backward``; with
    ``reweight`` the per-sequence weights need the losses first, which costs one extra
    forward pass. With ``aggregation="none"`` the per-token losses are differentiable
    (they go through :func:`lmloss.token_stats`, whose backward recomputes the logits).

    Args:
        name: registry name, see :func:`likelihood_loss`.
        *args: deprecated: ``hidden, weight, targets, bias`` given by position.
        hidden: ``[N, H]`` or ``[B, T, H]`` final hidden states.
        head: the LM head, an :class:`lmloss.Head` (weight ``[V, H]``, optional bias, soft
            cap, logit scale); or by keyword: ``weight``, ``bias``, ``softcap``,
            ``logit_scale`` (as in :func:`lmloss.token_stats`); not both.
        targets: ``[N]`` or ``[B, T]`` next-token ids, ``ignore_index`` where not trained.
        weights, aggregation, num_items, reweight, reweight_temperature: see
            :func:`likelihood_loss`.
        ignore_index, temperature, memory_budget: see :func:`lmloss.token_stats`.
        embedding_table: ``[V, D]`` table for objectives that need expectations of
            embeddings (``emo``: the L2-normalized frozen embeddings).
        **hyper: the objective's hyper-parameters.

    Returns:
        :class:`LossOutput`; ``per_example`` holds the per-token losses (detached unless
        ``aggregation="none"``), zeros at ignored targets.
    """
    hidden, weight, targets, bias = positional_tensors(
        "fused_likelihood_loss", args, _HEAD, (hidden, weight, targets, bias)
    )
    head = door_head(
        "head", head, dict(zip(_HEAD_KEYWORDS, (weight, bias, softcap, logit_scale))), required=True
    )
    reduction = renamed(hyper, "reduction", "aggregation", aggregation, "fused_likelihood_loss")
    reduction = reduction or "token_mean"
    entry = registry.get(name, family=FAMILY)
    _, hyper = bind(entry.spec, hyper, require=())
    check_head(hidden, head.weight, head.bias)
    leading = tuple(hidden.shape[:-1])
    vocab = head.weight.shape[0]
    targets = check_targets(targets, leading, vocab, ignore_index)
    check_reduction(reduction, num_items, len(leading))
    valid = targets != ignore_index
    mask = valid.to(compute_dtype(hidden.dtype))
    token_weights = None if weights is None else check_token_weights(weights, mask)
    stats = entry.spec.stats
    uses_table = any(s in TABLE_STATISTICS for s in stats) or any(
        k in _DERIVED for k in entry.spec.inputs
    )
    table = _check_table(embedding_table, uses_table, vocab, entry.name)
    engine_kwargs = {
        "ignore_index": ignore_index,
        "temperature": temperature,
        **head.transform_kwargs(),
        "want": stats,
        "memory_budget": memory_budget,
        **({} if table is None else {"expect": table}),
    }
    objective = _with_side_inputs(entry, hyper, targets, valid, table)
    inputs = (hidden, head.weight, targets, head.bias)
    metrics = {"num_tokens": mask.sum()}

    if reduction == "none" or reweight is not None:
        with torch.set_grad_enabled(reduction == "none" and torch.is_grad_enabled()):
            per_token = _per_token_autograd(objective, inputs, mask, engine_kwargs)
        coef, loss = _reduce(
            per_token, mask, token_weights, reduction, num_items, reweight, reweight_temperature
        )
        if reduction == "none":
            return LossOutput(loss=loss, per_example=per_token, metrics=metrics)
    else:
        coef = token_coefficients(mask, token_weights, reduction=reduction, num_items=num_items)
    transform = head.transform(temperature)
    loss, per_token = _eager_loss(objective, inputs, coef, mask, transform, engine_kwargs)
    return LossOutput(loss=loss, per_example=per_token, metrics=metrics)
