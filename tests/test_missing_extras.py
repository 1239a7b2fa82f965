"""A feature used without its extra says so in one line naming the extra, not a traceback
from deep inside transformers. Run in a subprocess where the extras' packages cannot be
imported (a meta-path hook refuses them), as in an environment with torch only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = """
import sys
BLOCKED = {"transformers", "safetensors", "matplotlib", "datasets", "peft", "trl"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_commands_name_the_extra(tmp_path):
    done = _run(tmp_path, "-m", "lmloss", "train", "examples/dpo.toml")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "lmloss: error: lmloss train needs the 'hf' extra (no module 'safetensors'): in the "
        "lmloss clone, pip install -e '.[hf]' (or a wheel built there, with [hf])"
    ]


@pytest.mark.parametrize(("module", "extra"), [("lmloss.hf", "hf"), ("lmloss.trl", "trl")])
def test_importing_an_integration_names_the_extra(tmp_path, module, extra):
    done = _run(tmp_path, "-c", f"import {module}")
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1
    assert last.startswith(f"lmloss._extras.MissingExtraError: {module} needs the {extra!r} extra")
    assert "Traceback" in done.stderr and len(done.stderr.splitlines()) < 8  # short


def test_the_engine_and_the_losses_need_no_extra(tmp_path):
    code = "import torch, lmloss; print(lmloss.loss('ce', logps=-torch.rand(3)).loss.item() > 0)"
    done = _run(tmp_path, "-c", code)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
