"""The per-token statistics the engine can compute, each a small local definition.

A statistic is read off *moments*: running sums over vocabulary tiles, kept in an online
(rescaled) form so the full row of logits is never needed at once. With ``m`` the running
maximum of the logits ``z`` and ``e = exp(z - m)``:

======== ======================= ===========================================
moment   running value           rescale when ``m`` grows by ``d``
======== ======================= ===========================================
``s``    Σ e                     × exp(-d)
``ez``   Σ e·z                   × exp(-d)
``s2``   Σ e²                    × exp(-2d)
``zsum`` Σ z                     none
``zy``   z of the target token   none
``et``   Σ e·t_v  (a [D] vector) × exp(-d)
======== ======================= ===========================================

``et`` exists only when a table ``t`` of ``[V, D]`` vectors is given (``expect=`` in
:func:`lmloss.token_stats`); it is the only moment that reads the table, and
``expectation`` (in ``TABLE_STATISTICS``) the only statistic built on it.

A statistic names the moments it needs, how to finalize its value from them, and — if
differentiable — its gradient w.r.t. one tile of logits given the upstream gradient ``g``.
With ``p = softmax(z)``:

* ``logp = z_y - lse``;          d/dz_v = 1[v = y] - p_v
* ``lse = m + log s``;           d/dz_v = p_v
* ``entropy = lse - E_p[z]``;    d/dz_v = p_v (E_p[z] - z_v)
* ``sum_sq_probs = log Σ p²``;   d/dz_v = 2 (q_v - p_v), q = softmax(2z)
* ``mean_logit = Σ z / V``;      d/dz_v = 1 / V
* ``is_argmax = [z_y = max z]``; no gradient
* ``expectation = E_p[t] = Σ_v p_v t_v`` (a [D] vector per token, for a frozen table t);
  d/dz_v = p_v (t_v − E_p[t]), so g·d/dz_v = p_v (⟨g, t_v⟩ − ⟨g, E_p[t]⟩) for an upstream
  g of shape [D]. The table gets no gradient.

Adding a statistic means adding one :class:`Statistic` (and a moment if a new running sum
is needed) to this file; the engine, the reference path and the API pick it up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a·b per row, without a temporary tile (einsum lowers it to a batched dot)."""
    return torch.einsum("nv,nv->n", a, b)


@dataclass(frozen=True)
class Moment:
    """A running per-token sum over vocabulary tiles."""

    name: str
    # (previous value, tile logits z, tile e = exp(z - m_new), rescale r = exp(m_old - m_new))
    # and, when ``uses_table``, the tile's rows of the ``expect`` table [vocab-slice, D]
    update: Callable[..., Tensor]
    uses_table: bool = False

    def step(self, acc: Tensor, z: Tensor, e: Tensor, r: Tensor, table: Tensor | None) -> Tensor:
        return self.update(acc, z, e, r, table) if self.uses_table else self.update(acc, z, e, r)


def _table_update(acc: Tensor, z: Tensor, e: Tensor, r: Tensor, table: Tensor) -> Tensor:
    """Σ e·t_v: the accumulator starts as the engine's [n] zeros and becomes [n, D]."""
    return acc.reshape(acc.shape[0], -1) * r[:, None] + e @ table.to(e.dtype)


MOMENTS: dict[str, Moment] = {
    m.name: m
    for m in (
        Moment("s", lambda acc, z, e, r: acc * r + e.sum(1)),
        Moment("ez", lambda acc, z, e, r: acc * r + _row_dot(e, z)),
        Moment("s2", lambda acc, z, e, r: acc * r * r + _row_dot(e, e)),
        Moment("zsum", lambda acc, z, e, r: acc + z.sum(1)),
        Moment("et", _table_update, uses_table=True),
    )
}


@dataclass(frozen=True)
class Final:
    """Per-token quantities known once every tile was seen (saved for the backward)."""

    m: Tensor  # max logit
    lse: Tensor
    zy: Tensor  # target logit
    moments: dict[str, Tensor]
    vocab: int


@dataclass(frozen=True)
class Tile:
    """One [tokens, vocab-slice] tile of logits in the compute dtype, with its softmax."""

    z: Tensor
    p: Tensor  # softmax(z) restricted to the tile, using the final lse
    final: Final  # rows restricted to the tile's tokens
    target_col: Tensor  # column of the target in this tile, -1 where it lies outside
    scratch: Tensor  # a free buffer of z's shape for temporaries
    table: Tensor | None = None  # the tile's rows of the ``expect`` table, when one is given


@dataclass(frozen=True)
class Statistic:
    name: str
    moments: tuple[str, ...]
    value: Callable[[Final], Tensor]
    # add the gradient contribution g * d(stat)/dz to ``dz`` in place; None: not differentiable
    add_grad: Callable[[Tensor, Tile, Tensor], None] | None = None


def _add_logp_grad(dz: Tensor, tile: Tile, g: Tensor) -> None:
    dz.addcmul_(tile.p, g[:, None], value=-1.0)
    # Rows whose target lies outside the tile add 0 (no data-dependent shapes: compilable).
    inside = tile.target_col >= 0
    dz.scatter_add_(1, tile.target_col.clamp(min=0)[:, None], torch.where(inside, g, 0.0)[:, None])


def _add_lse_grad(dz: Tensor, tile: Tile, g: Tensor) -> None:
    dz.addcmul_(tile.p, g[:, None])


def _expected_logit(final: Final) -> Tensor:
    return final.moments["ez"] / final.moments["s"]


def _add_entropy_grad(dz: Tensor, tile: Tile, g: Tensor) -> None:
    centered = torch.sub(_expected_logit(tile.final)[:, None], tile.z, out=tile.scratch)
    dz.addcmul_(tile.p, centered.mul_(g[:, None]))


def _log_sum_exp2(final: Final) -> Tensor:
    """log Σ exp(2z)."""
    return 2 * final.m + final.moments["s2"].log()


def _add_sum_sq_grad(dz: Tensor, tile: Tile, g: Tensor) -> None:
    q = torch.mul(tile.z, 2, out=tile.scratch).sub_(_log_sum_exp2(tile.final)[:, None]).exp_()
    dz.add_(q.sub_(tile.p).mul_(2 * g[:, None]))


def _add_mean_logit_grad(dz: Tensor, tile: Tile, g: Tensor) -> None:
    dz.add_((g / tile.final.vocab)[:, None])


def _expectation(final: Final) -> Tensor:
    return final.moments["et"] / final.moments["s"][:, None]


def _add_expectation_grad(dz: Tensor, tile: Tile, g: Tensor) -> None:
    projected = torch.mm(g, tile.table.to(g.dtype).T, out=tile.scratch)
    projected.sub_(torch.einsum("nd,nd->n", g, _expectation(tile.final))[:, None])
    dz.addcmul_(tile.p, projected)


STATISTICS: dict[str, Statistic] = {
    s.name: s
    for s in (
        Statistic("logp", ("s",), lambda f: f.zy - f.lse, _add_logp_grad),
        Statistic("lse", ("s",), lambda f: f.lse, _add_lse_grad),
        Statistic("entropy", ("s", "ez"), lambda f: f.lse - _expected_logit(f), _add_entropy_grad),
        Statistic(
            "sum_sq_probs", ("s", "s2"), lambda f: _log_sum_exp2(f) - 2 * f.lse, _add_sum_sq_grad
        ),
        Statistic(
            "mean_logit", ("zsum",), lambda f: f.moments["zsum"] / f.vocab, _add_mean_logit_grad
        ),
        Statistic("is_argmax", ("s",), lambda f: (f.zy >= f.m).to(f.m.dtype)),
    )
}

# Statistics that read a table passed by the caller (``expect=``); kept apart from the
# per-token scalars above, which need nothing but the logits.
TABLE_STATISTICS: dict[str, Statistic] = {
    "expectation": Statistic("expectation", ("s", "et"), _expectation, _add_expectation_grad),
}

ALL_STATISTICS: dict[str, Statistic] = {**STATISTICS, **TABLE_STATISTICS}


def moments_for(names: tuple[str, ...]) -> tuple[str, ...]:
    """The moments the statistics ``names`` need, always including ``s`` (for the lse)."""
    needed = {"s"}
    for name in names:
        needed.update(ALL_STATISTICS[name].moments)
    return tuple(sorted(needed))
