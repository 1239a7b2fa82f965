"""``LMLOSS_BACKEND`` picks the engine's backend; the Triton kernels equal the PyTorch ones.

The kernel parity tests live in ``triton_interpreter_cases.py`` and run here in a fresh
process under Triton's interpreter (``TRITON_INTERPRET=1`` must precede ``import triton``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import lmloss
from lmloss.stats import backend

pytest.importorskip("triton")

CASES = Path(__file__).with_name("triton_interpreter_cases.py")


def _env(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LMLOSS_BACKEND", "TRITON_INTERPRET")}
    return {**env, **settings}


def test_triton_kernels_match_torch_under_the_interpreter():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(CASES),
            "-o",
            "addopts=",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        env=_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


def _head():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(6, 8, generator=g), torch.randn(11, 8, generator=g)
    return hidden, weight, torch.tensor([1, 2, 3, -100, 4, 5])


# ------------------------------------------------------------------ selection


def test_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LMLOSS_BACKEND", "cuda")
    hidden, weight, targets = _head()
    with pytest.raises(ValueError, match=r"LMLOSS_BACKEND must be one of auto, torch, triton"):
        lmloss.token_stats(hidden, weight, targets)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("LMLOSS_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, targets = _head()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        lmloss.linear_cross_entropy(hidden, weight, targets)


def test_auto_picks_triton_for_cuda_tensors_only(monkeypatch):
    monkeypatch.delenv("LMLOSS_BACKEND", raising=False)
    assert backend.backend_setting() == "auto"
    cuda_tensor = types.SimpleNamespace(is_cuda=True)  # no GPU here: the decision alone
    assert not backend.use_triton(torch.zeros(1))
    monkeypatch.setattr(backend, "_triton_imports", lambda: True)
    assert backend.use_triton(cuda_tensor)
    monkeypatch.setattr(backend, "_triton_imports", lambda: False)
    assert not backend.use_triton(cuda_tensor)
    monkeypatch.setenv("LMLOSS_BACKEND", "triton")
    with pytest.raises(ValueError, match="cannot be imported"):
        backend.use_triton(cuda_tensor)


def test_torch_and_cpu_auto_never_import_triton():
    script = """
import os, sys, torch, lmloss
for setting in ("torch", "auto"):
    os.environ["LMLOSS_BACKEND"] = setting
    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    y = torch.tensor([1, 2, 3, -100, 4, 5])
    lmloss.token_stats(h, w, y, want=("logp", "entropy")).logp.sum().backward()
    lmloss.linear_cross_entropy(h, w, y).backward()
    teacher = {"teacher_hidden": h.detach(), "teacher_weight": w.detach()}
    lmloss.fused_divergence_loss("jsd", h, w, **teacher).loss.backward()
    assert "triton" not in sys.modules, (setting, [m for m in sys.modules if "triton" in m])
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
