"""Compiled per-tile kernels equal the eager ones; a failed compilation falls back to eager."""

from __future__ import annotations

import pytest
import torch

import lmloss
import lmloss.stats.torch_compile as torch_compile
from lmloss.stats.torch_compile import Fusable, compile_wanted

B, T, H, V = 2, 6, 8, 29


def _distill(mode, monkeypatch, **kw):
    monkeypatch.setenv(torch_compile.COMPILE_VARIABLE, mode)
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(B, T, H, generator=g), torch.randn(V, H, generator=g)]
    teacher = [torch.randn(B, T, H, generator=g), torch.randn(V, H, generator=g)]
    for x in (*student, *teacher):
        x.requires_grad_()
    out = lmloss.fused_divergence_loss(
        "jsd", *student, teacher_hidden=teacher[0], teacher_weight=teacher[1],
        teacher_requires_grad=True, beta=0.3, softcap=3.0, **kw,
    )  # fmt: skip
    return out.loss, *torch.autograd.grad(out.loss, [*student, *teacher])


def test_compiled_pair_kernel_equals_eager(monkeypatch):
    eager = _distill("0", monkeypatch)
    compiled = _distill("1", monkeypatch)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_compiled_statistics_kernel_equals_eager(monkeypatch):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :2] = -100
    results = []
    for mode in ("0", "1"):
        monkeypatch.setenv(torch_compile.COMPILE_VARIABLE, mode)
        loss = lmloss.linear_cross_entropy(hidden, weight, targets, softcap=3.0)
        results.append((loss, *torch.autograd.grad(loss, (hidden, weight))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_failed_compilation_warns_once_and_runs_eagerly(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    doubled = Fusable(lambda x: 2 * x)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        assert doubled(True, torch.ones(2)).tolist() == [2.0, 2.0]
    assert doubled(True, torch.ones(1)).tolist() == [2.0]  # no second attempt, no warning


def test_compile_only_for_large_calls_by_default(monkeypatch):
    monkeypatch.delenv(torch_compile.COMPILE_VARIABLE, raising=False)
    assert not compile_wanted(1024, 1024)
    assert compile_wanted(4096, 32000)
    monkeypatch.setenv(torch_compile.COMPILE_VARIABLE, "0")
    assert not compile_wanted(4096, 32000)
    monkeypatch.setenv(torch_compile.COMPILE_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match="LMLOSS_COMPILE must be auto, 1 or 0"):
        compile_wanted(1, 1)
