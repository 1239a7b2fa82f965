"""Shared pieces of the TRL tests: quiet float32 configs and run-to-run comparisons."""

from __future__ import annotations

import pytest
import torch

# Two SGD steps on the CPU in float32, every step logged, nothing saved.
QUIET = dict(
    max_steps=2, optim="sgd", lr_scheduler_type="constant", use_cpu=True, bf16=False,
    report_to=[], save_strategy="no", logging_steps=1, seed=0,
)  # fmt: skip


def config(config_class, tmp_path, **fields):
    return config_class(output_dir=str(tmp_path / "out"), **{**QUIET, **fields})


def logged_steps(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def assert_same_run(ours, theirs, keys=None, only=lambda name: True, tol=1e-5) -> None:
    """The same logged ``keys`` (default: all TRL logs) at every step, the same weights."""
    their_logs, our_logs = logged_steps(theirs), logged_steps(ours)
    assert len(our_logs) == QUIET["max_steps"]
    for theirs_step, ours_step in zip(their_logs, our_logs, strict=True):
        for key in keys or theirs_step:
            assert ours_step[key] == pytest.approx(theirs_step[key], rel=tol, abs=tol), key
    our_weights = dict(ours.model.named_parameters())
    for name, value in theirs.model.named_parameters():
        if only(name):
            torch.testing.assert_close(our_weights[name], value, atol=tol, rtol=tol, msg=name)
