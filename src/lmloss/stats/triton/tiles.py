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
def raw_grad(dz, z, scale, softcap, inv_temp, SOFTCAP: tl.constexpr):
    """Gradient w.r.t. the raw head outputs from the gradient w.r.t. the logits ``z``.

    With ``u = tanh(a / softcap) = z · T / softcap``: ``dz/draw = scale (1 - u²) / T``
    (``scale / T`` without a soft cap). ``z`` must be finite (0 outside the vocabulary)."""
    if SOFTCAP:
        u = z / (inv_temp * softcap)
        dz = dz * (1.0 - u * u)
    return dz * (scale * inv_temp)


@triton.jit
def keep_tile(da, skip_below, FILTER: tl.constexpr):
    """False when the gradient filter is on and every ``|da|`` of the tile is below
    ``skip_below`` (Cut Cross-Entropy's skipping of blocks under the output precision)."""
    if FILTER:
        return tl.max(tl.max(tl.abs(da), 1), 0) >= skip_below
    else:
        return True


@triton.jit
def add_head_grads(
    da,
    h_ptr,
    w_ptr,
    dh_ptr,
    dw_ptr,
    db_ptr,
    rows,
    cols,
    N,
    V,
    H,
    NEED_DH: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Accumulate one tile's ``da`` (gradient w.r.t. raw outputs, float32, zero outside
    the valid rows × cols) into float32 buffers: ``dh += da @ W``, ``dw += daᵀ @ h``,
    ``db += Σ_rows da``, with atomic adds (other token blocks add to the same ``dw``).

    ``da`` enters the matmuls in the inputs' dtype, as the PyTorch engine does."""
    row_ok = rows < N
    col_ok = cols < V
    row_base = rows.to(tl.int64) * H
    col_base = cols.to(tl.int64) * H
    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(da, 0), mask=col_ok)
    if NEED_DH or NEED_DW:
        da_in = da.to(h_ptr.dtype.element_ty)
        if UPCAST:
            da_in = da_in.to(tl.float32)
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
                dh = tl.dot(da_in, w, input_precision=PRECISION)
                tl.atomic_add(
                    dh_ptr + row_base[:, None] + hs[None, :],
                    dh,
                    mask=row_ok[:, None] & h_ok[None, :],
                )
            if NEED_DW:
                x = tl.load(
                    h_ptr + row_base[:, None] + hs[None, :],
                    mask=row_ok[:, None] & h_ok[None, :],
                    other=0.0,
                )
                if UPCAST:
                    x = x.to(tl.float32)
                dw = tl.dot(tl.trans(da_in), x, input_precision=PRECISION)
                tl.atomic_add(
                    dw_ptr + col_base[:, None] + hs[None, :],
                    dw,
                    mask=col_ok[:, None] & h_ok[None, :],
                )


@triton.jit
def add_logit_grads(
    dz, z, h_ptr, w_ptr, dh_ptr, dw_ptr, db_ptr, rows, cols, N, V, H,
    scale, softcap, inv_temp, skip_below,
    SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    FILTER: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """A tile's logit gradient ``dz`` (0 outside the valid rows × cols) into its head's
    gradients: the chain rule through the transform, the filter, the two matmuls."""
    da = raw_grad(dz, z, scale, softcap, inv_temp, SOFTCAP)
    if keep_tile(da, skip_below, FILTER):
        add_head_grads(
            da, h_ptr, w_ptr, dh_ptr, dw_ptr, db_ptr, rows, cols, N, V, H,
            NEED_DH, NEED_DW, NEED_DB, UPCAST, PRECISION, BLOCK_H,
        )  # fmt: skip
