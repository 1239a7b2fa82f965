"""``@triton.jit`` building blocks shared by every kernel.

A *head* is ``(hidden [N, H], weight [V, H], bias [V] or absent)``. Its logits go through
the transform of :class:`lmloss.stats.transform.LogitTransform`, in this order:

    a = (hidden @ weight.T + bias) * scale;  c = softcap * tanh(a / softcap);  z = c / T

A tile is ``BLOCK_N`` rows × ``BLOCK_V`` vocabulary entries, accumulated in float32 over
``BLOCK_H`` wide chunks of the hidden size whatever the input dtype. Out-of-range
vocabulary entries come back as ``-inf`` (they vanish from every softmax).

``PRECISION`` is ``tl.dot``'s ``input_precision`` for float32 operands: ``"tf32"`` when
PyTorch allows TF32 matmuls (``torch.backends.cuda.matmul.allow_tf32``), ``"ieee"`` (exact
float32, as PyTorch's default) otherwise; 16-bit operands ignore it.

``UPCAST`` converts the operands to float32 before ``tl.dot``: Triton's interpreter
multiplies bfloat16 as raw 16-bit integers (3.9), so it is set under the interpreter only;
the products of bf16 or fp16 numbers are exact in float32, so this changes nothing but
the order of the sums.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """``tanh`` from one exponential of a non-positive number: no overflow, odd by design."""
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def grouped_tile(N, V, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, GROUP_N: tl.constexpr):
    """``(token block, vocabulary block)`` of this program in a 1-D grid, walked in groups
    of ``GROUP_N`` token blocks (Triton's matmul swizzle): programs running together touch
    a few token blocks × a few vocabulary blocks, so fewer of them add to the same rows of
    the hidden or weight gradient at once, and their operand tiles stay in L2."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, BLOCK_N)
    v_blocks = tl.cdiv(V, BLOCK_V)
    per_group = GROUP_N * v_blocks
    first_n = (pid // per_group) * GROUP_N
    group_size = tl.minimum(n_blocks - first_n, GROUP_N)
    return first_n + (pid % per_group) % group_size, (pid % per_group) // group_size


@triton.jit
def logit_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    rows,
    cols,
    N,
    V,
    H,
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
    """Transformed logits ``z`` of rows × cols in float32; ``-inf`` where ``cols >= V``.

    ``hidden`` and ``weight`` are contiguous (row stride ``H``)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    row_ok = rows < N
    col_ok = cols < V
    # 64-bit offsets: V·H passes 2**31 for a 256k vocabulary at H = 8192.
    row_base = rows.to(tl.int64) * H
    col_base = cols.to(tl.int64) * H
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < H
        x = tl.load(
            h_ptr + row_base[:, None] + hs[None, :], mask=row_ok[:, None] & h_ok[None, :], other=0.0
        )
        w = tl.load(
            w_ptr + col_base[:, None] + hs[None, :], mask=col_ok[:, None] & h_ok[None, :], other=0.0
        )
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * scale
    if SOFTCAP:
        acc = softcap * tanh(acc / softcap)
    z = acc * inv_temp
    return tl.where(col_ok[None, :], z, float("-inf"))


@triton.jit
def forward_rows(N, BLOCK_N: tl.constexpr):
    """``(rows, row_ok, split, splits)`` of a forward program (grid: token blocks ×
    vocabulary splits)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, rows < N, tl.program_id(1), tl.num_programs(1)


@triton.jit
def store_split(out_ptr, k, value, rows, row_ok, split, splits, N):
    """``out[k, split, rows] = value`` for a float32 ``[K, splits, N]`` output."""
    tl.store(out_ptr + (k * splits + split) * N + rows, value, mask=row_ok)


@triton.jit
def online_rescale(m, z):
    """One tile of an online log-sum-exp: ``(m_new, rescale, e)`` with ``m_new`` the
    running row maximum, ``rescale = e^(m − m_new)`` for the sums so far and
    ``e = e^(z − m_new)`` for this tile's."""
    m_new = tl.maximum(m, tl.max(z, 1))
    # A tile past the vocabulary leaves m at -inf: shift by 0 instead of -inf - -inf.
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, tl.exp(m - shift), tl.exp(z - shift[:, None])


@triton.jit
def raw_grad(dz, z, scale, softcap, inv_temp, SOFTCAP: tl.constexpr):
    """Gradient w.r.t. the raw head outputs from the gradient w.r.t. the logits ``z``.

    With ``u = tanh(a / softcap) = z · T / softcap``: ``dz/draw = scale (1 - u²) / T``
    (``scale / T`` without a soft cap). ``z`` must be finite (0 outside the vocabulary)."""
    if SOFTCAP:
        u = z / (inv_temp * softcap)
        dz = dz * (1.0 - u * u)
    return dz * (scale * inv_temp)


@triton.jit
def keep_tile(dz, upstream, skip_below, FILTER: tl.constexpr):
    """False when the gradient filter is on and every ``|dz|`` of the tile is at most
    ``skip_below`` times its row's upstream magnitude (Cut Cross-Entropy's skipping of
    blocks under the output precision, taken before the upstream scaling: a mean over
    N rows scales every ``dz`` by 1/N, which must not decide what is skipped)."""
    if FILTER:
        over = tl.abs(dz) - skip_below * upstream[:, None]
        return tl.max(tl.max(over, 1), 0) > 0
    else:
        return True


@triton.jit
def add_into(ptr, value, mask, ATOMIC: tl.constexpr):
    """``*ptr += value``: a relaxed atomic add when other programs add to the same
    entries (an acquire-release add, Triton's default, fences every add on Hopper),
    a plain read-modify-write when this program owns them (deterministic sweeps)."""
    if ATOMIC:
        tl.atomic_add(ptr, value, mask=mask, sem="relaxed")
    else:
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + value, mask=mask)


@triton.jit
def operand_scale(da, SCALE_DA: tl.constexpr):
    """A power of two that lifts the tile's largest ``|da|`` to about 2^14 before ``da``
    is rounded to float16 (whose normal range starts at 2^-14): small gradients, a mean
    over many rows or a loss before a GradScaler's scale, keep their 11 bits. The matmul
    results are divided by it in float32. 1 for other dtypes."""
    if SCALE_DA:
        amax = tl.max(tl.max(tl.abs(da), 1), 0)
        exponent = tl.where(amax > 0, tl.ceil(tl.log2(tl.maximum(amax, 1e-30))), 0.0)
        return tl.exp2(14.0 - exponent)
    else:
        return 1.0


@triton.jit
def add_head_grads(
    da, h_ptr, w_ptr, dh_ptr, dw_ptr, db_ptr, rows, cols, N, V, H,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_H: tl.constexpr,
    ATOMIC: tl.constexpr, SCALE_DA: tl.constexpr,
):  # fmt: skip
    """Accumulate one tile's ``da`` (gradient w.r.t. raw outputs, float32, zero outside
    the valid rows × cols) into float32 buffers: ``dh += da @ W``, ``dw += daᵀ @ h``,
    ``db += Σ_rows da`` (:func:`add_into`).

    ``da`` enters the matmuls in the inputs' dtype, as the PyTorch engine does (float16
    after :func:`operand_scale`)."""
    row_ok = rows < N
    col_ok = cols < V
    row_base = rows.to(tl.int64) * H
    col_base = cols.to(tl.int64) * H
    if NEED_DB:
        add_into(db_ptr + cols, tl.sum(da, 0), col_ok, ATOMIC)
    if NEED_DH or NEED_DW:
        da_scale = operand_scale(da, SCALE_DA)
        da_in = (da * da_scale).to(h_ptr.dtype.element_ty)
        if UPCAST:
            da_in = da_in.to(tl.float32)
        unscale = 1.0 / da_scale
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            h_ok = hs < H
            if NEED_DH:
                w = tl.load(
                    w_ptr + col_base[:, None] + hs[None, :],
                    mask=col_ok[:, None] & h_ok[None, :],
                    other=0.0,
                )
                if UPCAST:
                    w = w.to(tl.float32)
                dh = tl.dot(da_in, w, input_precision=PRECISION) * unscale
                add_into(
                    dh_ptr + row_base[:, None] + hs[None, :],
                    dh,
                    row_ok[:, None] & h_ok[None, :],
                    ATOMIC,
                )
            if NEED_DW:
                x = tl.load(
                    h_ptr + row_base[:, None] + hs[None, :],
                    mask=row_ok[:, None] & h_ok[None, :],
                    other=0.0,
                )
                if UPCAST:
                    x = x.to(tl.float32)
                dw = tl.dot(tl.trans(da_in), x, input_precision=PRECISION) * unscale
                add_into(
                    dw_ptr + col_base[:, None] + hs[None, :],
                    dw,
                    col_ok[:, None] & h_ok[None, :],
                    ATOMIC,
                )


@triton.jit
def add_logit_grads(
    dz, z, upstream, h_ptr, w_ptr, dh_ptr, dw_ptr, db_ptr, rows, cols, N, V, H,
    scale, softcap, inv_temp, skip_below,
    SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    FILTER: tl.constexpr, BLOCK_H: tl.constexpr, ATOMIC: tl.constexpr, SCALE_DA: tl.constexpr,
):  # fmt: skip
    """A tile's logit gradient ``dz`` (0 outside the valid rows × cols) into its head's
    gradients: the filter (``upstream``: each row's upstream magnitude), the chain rule
    through the transform, the two matmuls."""
    if keep_tile(dz, upstream, skip_below, FILTER):
        da = raw_grad(dz, z, scale, softcap, inv_temp, SOFTCAP)
        add_head_grads(
            da, h_ptr, w_ptr, dh_ptr, dw_ptr, db_ptr, rows, cols, N, V, H,
            NEED_DH, NEED_DW, NEED_DB, UPCAST, PRECISION, BLOCK_H, ATOMIC, SCALE_DA,
        )  # fmt: skip


@triton.jit
def sweep_order(
    N, V, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, GROUP_N: tl.constexpr,
    SWEEP: tl.constexpr,
):  # fmt: skip
    """``(first token block, first vocabulary block, steps)`` of this program.

    ``SWEEP`` 0: one tile per program (:func:`grouped_tile`), gradients added atomically;
    1: the program owns a token block and walks every vocabulary block (the hidden
    gradient, without atomics); 2: it owns a vocabulary block and walks every token block
    (the weight and bias gradients). Step ``i`` visits the token block
    ``first_n + i·[SWEEP = 2]`` and the vocabulary block ``first_v + i·[SWEEP = 1]``."""
    if SWEEP == 0:
        pid_n, pid_v = grouped_tile(N, V, BLOCK_N, BLOCK_V, GROUP_N)
        return pid_n, pid_v, 1
    elif SWEEP == 1:
        return tl.program_id(0), 0, tl.cdiv(V, BLOCK_V)
    else:
        return 0, tl.program_id(0), tl.cdiv(N, BLOCK_N)
