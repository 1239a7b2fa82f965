"""Kernels of one model: the online log-sum-exp with its moments, and the logit gradient.

Forward (:func:`moments_kernel`), grid ``(token blocks, vocabulary splits)``: each program
walks its share of the vocabulary tiles keeping, per token, the running maximum ``m`` and
the rescaled sums ``s = Σ e^(z-m)``, ``ez = Σ e^(z-m) z``, ``s2 = Σ e^(2(z-m))``,
``zsum = Σ z`` and the target logit ``z_y``; the host merges the splits (:mod:`.single`).
Splitting the vocabulary keeps the GPU busy when there are few token blocks.

Gradient (:func:`logit_grad_kernel`), one program per ``(token block, vocabulary block)``
(:func:`.tiles.grouped_tile` orders them): each
program recomputes its tile and forms the logit gradient of the per-token statistics from
four per-token coefficients,

    dz_v = c_y · 1[v = y] + p_v (c_p + c_pz · z_v) + c_1 + c_q q_v,
    p = softmax(z),  q = softmax(2z)

which covers ``logp`` (``c_y = g``, ``c_p = -g``), ``lse`` (``c_p = g``), ``entropy``
(``c_p = g E_p[z]``, ``c_pz = -g``), ``mean_logit`` (``c_1 = g / V``) and
``sum_sq_probs`` (``c_q = 2g``, ``c_p = -2g``; ``q`` only when ``HAS_Q``) and any sum of
them. It then accumulates the head gradients (:func:`.tiles.add_head_grads`). With
``skip_below > 0`` a tile whose ``|dz|`` stays below ``skip_below`` times each row's
upstream magnitude ``Σ |g|`` adds nothing (Cut Cross-Entropy's gradient filter). Under
``torch.use_deterministic_algorithms(True)`` the gradients come from two sweeps without
atomics (:func:`.tiles.sweep_order`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from lmloss.stats.triton.tiles import (
    add_logit_grads,
    forward_rows,
    logit_tile,
    online_rescale,
    store_split,
    sweep_order,
)


@triton.jit
def moments_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    out_ptr,
    N,
    V,
    H,
    tiles_per_split,
    scale,
    softcap,
    inv_temp,
    HAS_BIAS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Writes ``out[k, split, row]`` for k = m, s, ez, zsum, zy, s2 (float32 ``[6, S, N]``)."""
    rows, row_ok, split, splits = forward_rows(N, BLOCK_N)
    y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    ez = tl.zeros((BLOCK_N,), tl.float32)
    zsum = tl.zeros((BLOCK_N,), tl.float32)
    zy = tl.zeros((BLOCK_N,), tl.float32)
    s2 = tl.zeros((BLOCK_N,), tl.float32)
    for t in range(0, tiles_per_split):
        cols = (split * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        z = logit_tile(
            h_ptr, w_ptr, b_ptr, rows, cols, N, V, H, scale, softcap, inv_temp,
            HAS_BIAS, SOFTCAP, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H,
        )  # fmt: skip
        col_ok = (cols < V)[None, :]
        m_new, rescale, e = online_rescale(m, z)
        z0 = tl.where(col_ok, z, 0.0)
        s = s * rescale + tl.sum(e, 1)
        ez = ez * rescale + tl.sum(e * z0, 1)
        s2 = s2 * rescale * rescale + tl.sum(e * e, 1)
        zsum += tl.sum(z0, 1)
        zy += tl.sum(tl.where(cols[None, :] == y[:, None], z0, 0.0), 1)
        m = m_new
    values = (m, s, ez, zsum, zy, s2)
    for k in tl.static_range(6):
        store_split(out_ptr, k, values[k], rows, row_ok, split, splits, N)


@triton.jit
def logit_grad_kernel(
    h_ptr, w_ptr, b_ptr, y_ptr, lse_ptr, coef_ptr, dh_ptr, dw_ptr, db_ptr,
    N, V, H, scale, softcap, inv_temp, skip_below,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, NEED_DH: tl.constexpr, NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr, FILTER: tl.constexpr, HAS_Q: tl.constexpr,
    SWEEP: tl.constexpr, SCALE_DA: tl.constexpr, GROUP_N: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Adds tiles' shares to the float32 gradients; ``coef`` is ``[7, N]``:
    ``c_y, c_p, c_pz, c_1, c_q``, ``log Σ e^(2z)`` (the last two read only with
    ``HAS_Q``) and the upstream magnitude the filter compares with, per token (zero rows
    contribute nothing). ``SWEEP``: see :func:`.tiles.sweep_order`."""
    first_n, first_v, steps = sweep_order(N, V, BLOCK_N, BLOCK_V, GROUP_N, SWEEP)
    for i in range(0, steps):
        rows = (first_n + i * (SWEEP == 2)) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = (first_v + i * (SWEEP == 1)) * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok = rows < N
        ok = row_ok[:, None] & (cols < V)[None, :]
        z = logit_tile(
            h_ptr, w_ptr, b_ptr, rows, cols, N, V, H, scale, softcap, inv_temp,
            HAS_BIAS, SOFTCAP, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H,
        )  # fmt: skip
        y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        c_y = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
        c_p = tl.load(coef_ptr + N + rows, mask=row_ok, other=0.0)
        c_pz = tl.load(coef_ptr + 2 * N + rows, mask=row_ok, other=0.0)
        c_1 = tl.load(coef_ptr + 3 * N + rows, mask=row_ok, other=0.0)
        upstream = tl.load(coef_ptr + 6 * N + rows, mask=row_ok, other=0.0)
        z0 = tl.where(ok, z, 0.0)
        p = tl.where(ok, tl.exp(z0 - lse[:, None]), 0.0)
        dz = p * (c_p[:, None] + c_pz[:, None] * z0) + c_1[:, None]
        dz += tl.where(cols[None, :] == y[:, None], c_y[:, None], 0.0)
        if HAS_Q:
            c_q = tl.load(coef_ptr + 4 * N + rows, mask=row_ok, other=0.0)
            lse2 = tl.load(coef_ptr + 5 * N + rows, mask=row_ok, other=0.0)
            dz += c_q[:, None] * tl.exp(2.0 * z0 - lse2[:, None])
        dz = tl.where(ok, dz, 0.0)
        add_logit_grads(
            dz, z0, upstream, h_ptr, w_ptr, dh_ptr, dw_ptr, db_ptr, rows, cols, N, V, H,
            scale, softcap, inv_temp, skip_below, SOFTCAP, UPCAST, PRECISION,
            NEED_DH, NEED_DW, NEED_DB, FILTER, BLOCK_H, SWEEP == 0, SCALE_DA,
        )  # fmt: skip
