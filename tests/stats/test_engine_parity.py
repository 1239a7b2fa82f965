"""The tiled engine against plain PyTorch on materialized logits: values and gradients."""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss.stats import STATISTICS

ALL = tuple(STATISTICS)
DIFFERENTIABLE = tuple(n for n, s in STATISTICS.items() if s.add_grad is not None)
# 3 tokens × 7 vocab entries per tile: N=29 and V=53 are multiples of neither.
TINY_BUDGET = 3 * 7 * 8 * 4


def plain_stats(hidden, weight, bias, targets, *, scale=1.0, softcap=None, temperature=1.0):
    """Independent formulas on the full logits, written without the library."""
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    z = z * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    valid = targets != -100
    safe = targets.clamp(min=0)
    log_p = z - torch.logsumexp(z, -1, keepdim=True)
    p = log_p.exp()
    out = {
        "logp": log_p.gather(-1, safe[..., None]).squeeze(-1),
        "lse": torch.logsumexp(z, -1),
        "entropy": -(p * log_p).sum(-1),
        "sum_sq_probs": torch.log((p * p).sum(-1)),
        "mean_logit": z.mean(-1),
        "is_argmax": (z.gather(-1, safe[..., None]).squeeze(-1) == z.max(-1).values).to(z.dtype),
    }
    return {k: torch.where(valid, v, torch.zeros_like(v)) for k, v in out.items()}


def make(n=29, h=6, v=53, dtype=torch.float64, bias=True, seed=0, shape=None):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*(shape or (n,)), h, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(0, v, shape or (n,), generator=g)
    targets.view(-1)[::5] = -100
    return hidden, weight, b, targets


def grads_of(stats: dict, params, seed=1):
    g = torch.Generator().manual_seed(seed)
    total = sum(
        (torch.randn(stats[n].shape, generator=g, dtype=stats[n].dtype) * stats[n]).sum()
        for n in DIFFERENTIABLE
    )
    return torch.autograd.grad(total, [p for p in params if p is not None])


TRANSFORMS = [
    {},
    {"temperature": 0.7},
    {"softcap": 2.5},
    {"logit_scale": 1.7, "softcap": 4.0, "temperature": 1.3},
]


@pytest.mark.parametrize("kwargs", TRANSFORMS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_engine_matches_plain_formulas(kwargs, dtype, tol):
    hidden, weight, bias, targets = make(dtype=dtype)
    fused = lmloss.token_stats(
        hidden, weight, targets, bias, want=ALL, memory_budget=TINY_BUDGET, **kwargs
    )
    scale = kwargs.get("logit_scale", 1.0)
    plain = plain_stats(
        hidden,
        weight,
        bias,
        targets,
        scale=scale,
        softcap=kwargs.get("softcap"),
        temperature=kwargs.get("temperature", 1.0),
    )
    for name in ALL:
        torch.testing.assert_close(fused[name], plain[name], atol=tol, rtol=tol, msg=name)
    for a, b in zip(
        grads_of(fused.asdict(), (hidden, weight, bias)), grads_of(plain, (hidden, weight, bias))
    ):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("kwargs", TRANSFORMS)
def test_engine_matches_from_logits_reference(kwargs):
    hidden, weight, bias, targets = make(shape=(3, 7))
    fused = lmloss.token_stats(
        hidden, weight, targets, bias, want=ALL, memory_budget=TINY_BUDGET, **kwargs
    )
    ref = lmloss.token_stats_from_logits(hidden @ weight.T + bias, targets, want=ALL, **kwargs)
    assert fused.logp.shape == targets.shape
    for name in ALL:
        torch.testing.assert_close(fused[name], ref[name], atol=1e-10, rtol=1e-10)
    for a, b in zip(
        grads_of(fused.asdict(), (hidden, weight, bias)),
        grads_of(ref.asdict(), (hidden, weight, bias)),
    ):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradcheck(name):
    hidden, weight, bias, targets = make(n=5, h=3, v=11)

    def fn(h, w, b):
        return lmloss.token_stats(
            h, w, targets, b, want=(name,), softcap=3.0, memory_budget=2 * 4 * 8 * 4
        )[name]

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_only_requested_statistics_are_returned():
    hidden, weight, _, targets = make()
    stats = lmloss.token_stats(hidden, weight, targets, want="entropy")
    assert stats.logp is None and stats.entropy is not None
    with pytest.raises(KeyError, match="want="):
        stats["logp"]


def test_unused_outputs_do_not_change_gradients():
    hidden, weight, bias, targets = make()
    both = lmloss.token_stats(hidden, weight, targets, bias, want=("logp", "entropy"))
    only = lmloss.token_stats(hidden, weight, targets, bias, want=("logp",))
    ga = torch.autograd.grad(both.logp.sum(), (hidden, weight, bias))
    gb = torch.autograd.grad(only.logp.sum(), (hidden, weight, bias))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_ignored_rows_give_exact_zeros_and_zero_gradients():
    hidden, weight, bias, targets = make(shape=(3, 4))
    targets[1] = -100
    stats = lmloss.token_stats(hidden, weight, targets, bias, want=("logp", "entropy", "lse"))
    for name in ("logp", "entropy", "lse"):
        assert torch.equal(stats[name][1], torch.zeros(4, dtype=torch.float64))
    (stats.logp.sum() + stats.entropy.sum()).backward()
    assert torch.equal(hidden.grad[1], torch.zeros_like(hidden.grad[1]))
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


def test_all_targets_ignored_is_zero_loss_with_zero_gradients():
    hidden, weight, bias, targets = make()
    targets[:] = -100
    stats = lmloss.token_stats(hidden, weight, targets, bias, want=("logp", "entropy"))
    loss = -stats.logp.sum() + stats.entropy.sum()
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(hidden.grad) == 0 and torch.count_nonzero(weight.grad) == 0


def test_custom_ignore_index():
    hidden, weight, bias, targets = make()
    targets[targets == -100] = 7
    custom = lmloss.token_stats(hidden, weight, targets, bias, ignore_index=7)
    assert torch.all(custom.logp[targets == 7] == 0)
    assert torch.all(custom.logp[targets != 7] < 0)


def test_extreme_logits_stay_finite():
    hidden, weight, bias, targets = make(dtype=torch.float32)
    with torch.no_grad():
        hidden.mul_(1e3)
        weight.mul_(10)
    stats = lmloss.token_stats(hidden, weight, targets, bias, want=ALL, memory_budget=TINY_BUDGET)
    logits = hidden @ weight.T + bias
    assert logits.abs().max() > 1e4
    for name in ALL:
        assert torch.isfinite(stats[name]).all(), name
    stats.logp.sum().backward()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    hidden, weight, _, targets = make(dtype=torch.float32, bias=False)
    low_h = hidden.detach().to(dtype).requires_grad_()
    low_w = weight.detach().to(dtype).requires_grad_()
    low = lmloss.token_stats(
        low_h, low_w, targets, want=("logp", "entropy"), memory_budget=TINY_BUDGET
    )
    assert low.logp.dtype == torch.float32
    ref = lmloss.token_stats(low_h.float(), low_w.float(), targets, want=("logp", "entropy"))
    torch.testing.assert_close(low.logp, ref.logp, atol=0.1, rtol=0.02)
    torch.testing.assert_close(low.entropy, ref.entropy, atol=0.1, rtol=0.02)
    low.logp.sum().backward()
    assert low_h.grad.dtype == dtype and low_w.grad.dtype == dtype
    ref_h = low_h.detach().float().requires_grad_()
    ref_w = low_w.detach().float().requires_grad_()
    lmloss.token_stats(ref_h, ref_w, targets).logp.sum().backward()
    torch.testing.assert_close(low_h.grad.float(), ref_h.grad, atol=0.1, rtol=0.05)
    torch.testing.assert_close(low_w.grad.float(), ref_w.grad, atol=0.1, rtol=0.05)


def test_memory_budget_does_not_change_results():
    hidden, weight, bias, targets = make()
    small = lmloss.token_stats(hidden, weight, targets, bias, want=ALL, memory_budget=TINY_BUDGET)
    large = lmloss.token_stats(hidden, weight, targets, bias, want=ALL, memory_budget=2**30)
    for name in ALL:
        torch.testing.assert_close(small[name], large[name], atol=1e-12, rtol=1e-12)
