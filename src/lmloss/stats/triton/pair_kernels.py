"""Kernels of two models: per-token sums of a divergence term and its logit gradients.

With ``a = z_s - lse_s`` and ``b = z_t - lse_t`` the student's and teacher's
log-probabilities of one vocabulary entry (``p = e^a``, ``q = e^b``), a term ``f(a, b)``
(:mod:`lmloss.stats.divergence_terms`) gives per token ``D = Σ_v f`` and, through
``a_v = z_v - lse``, the logit gradients

    ∂D/∂z_s,u = ∂f/∂a_u - p_u G_s,   ∂D/∂z_t,u = ∂f/∂b_u - q_u G_t,   G = Σ_v ∂f/∂(a or b)

Forward, grid ``(token blocks, vocabulary splits)``: :func:`pair_moments_kernel` walks both
heads once for their log-sum-exps and the cross moments that give both KLs in closed form
(with ``G_s = −1``, ``G_t = KL + 1`` for the forward KL and the mirror for the reverse);
the other terms then take a second sweep, :func:`pair_sums_kernel` (``Σ f``, ``G_s``,
``G_t`` per split, summed on the host). Gradient (:func:`pair_grad_kernel`), one program
per ``(token block, vocabulary block)`` (or per owner, deterministic): recompute both
tiles, form both logit gradients for the upstream gradient ``g`` of each token,
accumulate each head's gradients.

A ``-inf`` logit (a masked vocabulary entry) is probability 0, as on the PyTorch engine
(:class:`lmloss.stats.divergence_terms.Pair`): log-probabilities are floored at
:data:`LOG_FLOOR` (the float32 floor; the kernels compute in float32), and so are the
logits the moments multiply by a weight, so that ``0 · (-inf)`` and ``-inf - (-inf)`` never
make a NaN. A term is then finite, and what masking with a -1e9 logit gives.

Terms (``TERM``): 0 forward KL ``q (b - a)``; 1 reverse KL ``p (a - b)``; 2 generalized
JSD with mixture ``m = (1-β) p + β q`` (0 < β < 1; the host maps β = 0 and 1 to the two
KLs, as TRL does); 3 total variation ``|p - q| / 2``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmloss.stats.divergence_terms import log_floor
from lmloss.stats.triton.tiles import (
    add_logit_grads,
    forward_rows,
    logit_tile,
    online_rescale,
    store_split,
    sweep_order,
)

FORWARD_KL, REVERSE_KL, JSD, TVD = 0, 1, 2, 3
LOG_FLOOR = tl.constexpr(log_floor(torch.float32))


@triton.jit
def pair_term(a, b, p, q, log_1m_beta, log_beta, beta, TERM: tl.constexpr):
    """``(f, ∂f/∂a, ∂f/∂b)`` elementwise."""
    if TERM == 0:
        f = q * (b - a)
        da = -q
        db = q * (b - a + 1.0)
    elif TERM == 1:
        f = p * (a - b)
        da = p * (a - b + 1.0)
        db = -p
    elif TERM == 2:
        x = a + log_1m_beta
        y = b + log_beta
        hi = tl.maximum(x, y)
        log_m = hi + tl.log(tl.exp(x - hi) + tl.exp(y - hi))
        # d(log m)/da = (1-β) p / m: the mixture's derivative cancels the "+1" terms.
        da = (1.0 - beta) * p * (a - log_m)
        db = beta * q * (b - log_m)
        f = da + db
    else:
        diff = p - q
        sign = tl.where(diff > 0, 0.5, tl.where(diff < 0, -0.5, 0.0))
        f = 0.5 * tl.abs(diff)
        da = sign * p
        db = -sign * q
    return f, da, db


@triton.jit
def log_probs(z, lse, ok):
    """``(max(z - lse, LOG_FLOOR), e^that)``, 0 and 0 outside ``ok``."""
    a = tl.where(ok, tl.maximum(z - lse[:, None], LOG_FLOOR), 0.0)
    return a, tl.where(ok, tl.exp(a), 0.0)


@triton.jit
def pair_tile(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, rows, cols, lse_s, lse_t,
    N, V, H_S, H_T,
    scale_s, softcap_s, inv_temp_s, scale_t, softcap_t, inv_temp_t,
    HAS_BIAS_S: tl.constexpr, SOFTCAP_S: tl.constexpr, UPCAST_S: tl.constexpr,
    HAS_BIAS_T: tl.constexpr, SOFTCAP_T: tl.constexpr, UPCAST_T: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Both models' logits on one tile (0 outside the valid rows × cols), their
    log-probabilities and probabilities: ``(z_s, z_t, a, p, b, q)``."""
    ok = (rows < N)[:, None] & (cols < V)[None, :]
    z_s = logit_tile(
        hs_ptr, ws_ptr, bs_ptr, rows, cols, N, V, H_S, scale_s, softcap_s, inv_temp_s,
        HAS_BIAS_S, SOFTCAP_S, UPCAST_S, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H,
    )  # fmt: skip
    z_t = logit_tile(
        ht_ptr, wt_ptr, bt_ptr, rows, cols, N, V, H_T, scale_t, softcap_t, inv_temp_t,
        HAS_BIAS_T, SOFTCAP_T, UPCAST_T, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H,
    )  # fmt: skip
    a, p = log_probs(z_s, lse_s, ok)
    b, q = log_probs(z_t, lse_t, ok)
    return tl.where(ok, z_s, 0.0), tl.where(ok, z_t, 0.0), a, p, b, q


@triton.jit
def pair_sums_kernel(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr,
    lse_s_ptr, lse_t_ptr, out_ptr,
    N, V, H_S, H_T, tiles_per_split,
    scale_s, softcap_s, inv_temp_s, scale_t, softcap_t, inv_temp_t,
    log_1m_beta, log_beta, beta,
    TERM: tl.constexpr,
    HAS_BIAS_S: tl.constexpr, SOFTCAP_S: tl.constexpr, UPCAST_S: tl.constexpr,
    HAS_BIAS_T: tl.constexpr, SOFTCAP_T: tl.constexpr, UPCAST_T: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Writes ``out[k, split, row]`` for k = Σ f, G_s, G_t (float32 ``[3, S, N]``)."""
    rows, row_ok, split, splits = forward_rows(N, BLOCK_N)
    lse_s = tl.load(lse_s_ptr + rows, mask=row_ok, other=0.0)
    lse_t = tl.load(lse_t_ptr + rows, mask=row_ok, other=0.0)
    total = tl.zeros((BLOCK_N,), tl.float32)
    g_s = tl.zeros((BLOCK_N,), tl.float32)
    g_t = tl.zeros((BLOCK_N,), tl.float32)
    for t in range(0, tiles_per_split):
        cols = (split * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        ok = row_ok[:, None] & (cols < V)[None, :]
        _, _, a, p, b, q = pair_tile(
            hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, rows, cols, lse_s, lse_t,
            N, V, H_S, H_T, scale_s, softcap_s, inv_temp_s, scale_t, softcap_t, inv_temp_t,
            HAS_BIAS_S, SOFTCAP_S, UPCAST_S, HAS_BIAS_T, SOFTCAP_T, UPCAST_T, PRECISION,
            BLOCK_N, BLOCK_V, BLOCK_H,
        )  # fmt: skip
        f, da, db = pair_term(a, b, p, q, log_1m_beta, log_beta, beta, TERM)
        total += tl.sum(tl.where(ok, f, 0.0), 1)
        g_s += tl.sum(tl.where(ok, da, 0.0), 1)
        g_t += tl.sum(tl.where(ok, db, 0.0), 1)
    values = (total, g_s, g_t)
    for k in tl.static_range(3):
        store_split(out_ptr, k, values[k], rows, row_ok, split, splits, N)


@triton.jit
def online_start(BLOCK_N: tl.constexpr):
    """``(m, s, own, cross)`` of :func:`online_step` before the first tile."""
    zero = tl.zeros((BLOCK_N,), tl.float32)
    return tl.full((BLOCK_N,), float("-inf"), tl.float32), zero, zero, zero


@triton.jit
def online_step(z, z0, other0, m, s, own, cross):
    """One tile of the online sums ``Σ e^(z−m)``, ``Σ e^(z−m) z``, ``Σ e^(z−m) z_other``
    (``z0``/``other0``: the logits with 0 past the vocabulary, where ``z`` is ``-inf``)."""
    m_new, rescale, e = online_rescale(m, z)
    s = s * rescale + tl.sum(e, 1)
    own = own * rescale + tl.sum(e * z0, 1)
    cross = cross * rescale + tl.sum(e * other0, 1)
    return m_new, s, own, cross


@triton.jit
def pair_moments_kernel(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, out_ptr,
    N, V, H_S, H_T, tiles_per_split,
    scale_s, softcap_s, inv_temp_s, scale_t, softcap_t, inv_temp_t,
    HAS_BIAS_S: tl.constexpr, SOFTCAP_S: tl.constexpr, UPCAST_S: tl.constexpr,
    HAS_BIAS_T: tl.constexpr, SOFTCAP_T: tl.constexpr, UPCAST_T: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Both heads' online log-sum-exps and cross moments in one sweep: writes
    ``out[k, split, row]`` for k = m_s, Σ e^(z_s−m_s), Σ e^(z_s−m_s) z_s, Σ e^(z_s−m_s) z_t,
    then the same four with s and t swapped (float32 ``[8, S, N]``).

    ``lse`` of each head, ``E_p[z_s]``, ``E_p[z_t]``, ``E_q[z_t]`` and ``E_q[z_s]`` follow,
    hence both KLs in closed form: ``KL(q‖p) = E_q[z_t] − lse_t − E_q[z_s] + lse_s``."""
    rows, row_ok, split, splits = forward_rows(N, BLOCK_N)
    no_lse = tl.zeros((BLOCK_N,), tl.float32)
    m_s, s_s, own_s, cross_s = online_start(BLOCK_N)
    m_t, s_t, own_t, cross_t = online_start(BLOCK_N)
    for t in range(0, tiles_per_split):
        cols = (split * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = (cols < V)[None, :]
        # Only the logits are used: the log-probabilities pair_tile also forms are dropped.
        zs0, zt0, _, _, _, _ = pair_tile(
            hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, rows, cols, no_lse, no_lse,
            N, V, H_S, H_T, scale_s, softcap_s, inv_temp_s, scale_t, softcap_t, inv_temp_t,
            HAS_BIAS_S, SOFTCAP_S, UPCAST_S, HAS_BIAS_T, SOFTCAP_T, UPCAST_T, PRECISION,
            BLOCK_N, BLOCK_V, BLOCK_H,
        )  # fmt: skip
        z_s = tl.where(col_ok, zs0, float("-inf"))  # a -inf logit weighs 0 ...
        z_t = tl.where(col_ok, zt0, float("-inf"))
        zs0 = tl.maximum(zs0, LOG_FLOOR)  # ... and is a finite factor of the moments
        zt0 = tl.maximum(zt0, LOG_FLOOR)
        m_s, s_s, own_s, cross_s = online_step(z_s, zs0, zt0, m_s, s_s, own_s, cross_s)
        m_t, s_t, own_t, cross_t = online_step(z_t, zt0, zs0, m_t, s_t, own_t, cross_t)
    values = (m_s, s_s, own_s, cross_s, m_t, s_t, own_t, cross_t)
    for k in tl.static_range(8):
        store_split(out_ptr, k, values[k], rows, row_ok, split, splits, N)


@triton.jit
def pair_grad_kernel(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr,
    lse_s_ptr, lse_t_ptr, row_ptr,
    dhs_ptr, dws_ptr, dbs_ptr, dht_ptr, dwt_ptr, dbt_ptr,
    N, V, H_S, H_T,
    scale_s, softcap_s, inv_temp_s, scale_t, softcap_t, inv_temp_t,
    log_1m_beta, log_beta, beta, skip_below,
    TERM: tl.constexpr,
    HAS_BIAS_S: tl.constexpr, SOFTCAP_S: tl.constexpr, UPCAST_S: tl.constexpr,
    HAS_BIAS_T: tl.constexpr, SOFTCAP_T: tl.constexpr, UPCAST_T: tl.constexpr,
    PRECISION: tl.constexpr,
    NEED_DH_S: tl.constexpr, NEED_DW_S: tl.constexpr, NEED_DB_S: tl.constexpr,
    NEED_DH_T: tl.constexpr, NEED_DW_T: tl.constexpr, NEED_DB_T: tl.constexpr,
    FILTER: tl.constexpr, SWEEP: tl.constexpr,
    SCALE_DA_S: tl.constexpr, SCALE_DA_T: tl.constexpr, GROUP_N: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Adds tiles' shares to both heads' float32 gradients; ``row`` is ``[3, N]``: the
    upstream gradient ``g`` (the filter is relative to ``|g|``), ``G_s`` and ``G_t`` of
    each token. ``SWEEP``: see :func:`.tiles.sweep_order`."""
    NEED_S: tl.constexpr = NEED_DH_S or NEED_DW_S or NEED_DB_S
    NEED_T: tl.constexpr = NEED_DH_T or NEED_DW_T or NEED_DB_T
    ATOMIC: tl.constexpr = SWEEP == 0
    first_n, first_v, steps = sweep_order(N, V, BLOCK_N, BLOCK_V, GROUP_N, SWEEP)
    for i in range(0, steps):
        rows = (first_n + i * (SWEEP == 2)) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = (first_v + i * (SWEEP == 1)) * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok = rows < N
        ok = row_ok[:, None] & (cols < V)[None, :]
        lse_s = tl.load(lse_s_ptr + rows, mask=row_ok, other=0.0)
        lse_t = tl.load(lse_t_ptr + rows, mask=row_ok, other=0.0)
        g_row = tl.load(row_ptr + rows, mask=row_ok, other=0.0)
        g = g_row[:, None]
        upstream = tl.abs(g_row)
        sum_s = tl.load(row_ptr + N + rows, mask=row_ok, other=0.0)[:, None]
        sum_t = tl.load(row_ptr + 2 * N + rows, mask=row_ok, other=0.0)[:, None]
        z_s, z_t, a, p, b, q = pair_tile(
            hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, rows, cols, lse_s, lse_t,
            N, V, H_S, H_T, scale_s, softcap_s, inv_temp_s, scale_t, softcap_t, inv_temp_t,
            HAS_BIAS_S, SOFTCAP_S, UPCAST_S, HAS_BIAS_T, SOFTCAP_T, UPCAST_T, PRECISION,
            BLOCK_N, BLOCK_V, BLOCK_H,
        )  # fmt: skip
        _, da, db = pair_term(a, b, p, q, log_1m_beta, log_beta, beta, TERM)
        if NEED_S:
            add_logit_grads(
                tl.where(ok, g * (da - p * sum_s), 0.0), z_s, upstream,
                hs_ptr, ws_ptr, dhs_ptr, dws_ptr, dbs_ptr, rows, cols, N, V, H_S,
                scale_s, softcap_s, inv_temp_s, skip_below, SOFTCAP_S, UPCAST_S, PRECISION,
                NEED_DH_S, NEED_DW_S, NEED_DB_S, FILTER, BLOCK_H, ATOMIC, SCALE_DA_S,
            )  # fmt: skip
        if NEED_T:
            add_logit_grads(
                tl.where(ok, g * (db - q * sum_t), 0.0), z_t, upstream,
                ht_ptr, wt_ptr, dht_ptr, dwt_ptr, dbt_ptr, rows, cols, N, V, H_T,
                scale_t, softcap_t, inv_temp_t, skip_below, SOFTCAP_T, UPCAST_T, PRECISION,
                NEED_DH_T, NEED_DW_T, NEED_DB_T, FILTER, BLOCK_H, ATOMIC, SCALE_DA_T,
            )  # fmt: skip
