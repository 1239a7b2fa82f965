"""``benchmarks/gpu_check.sh --dry-run``: every step of the first-GPU check runs on the CPU
(kernels under Triton's interpreter, one kernel compiled for sm_90) and passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
STEPS = ("versions", "compile", "parity", "offsets", "determinism", "timing")


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMLOSS_", "TRITON_"))}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        env={**env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    rows = report["rows"]
    assert {row["step"] for row in rows} == set(STEPS)
    assert not [row for row in rows if row["ok"] is False]
    checked = {row["step"] for row in rows if row["ok"] is True}
    assert checked == {"compile", "parity", "offsets", "determinism"}
    parity = [row["check"] for row in rows if row["step"] == "parity"]
    for name in ("logp", "sum_sq_probs", "is_argmax", "forward_kl", "tvd", "d t_weight"):
        assert any(f" {name}," in check for check in parity), name
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("| step | check |") and "Step times:" in table
