"""The final model of a run, in the layouts other tools load.

* ``run_dir/model/``: a Hugging Face model folder (safetensors, config naming its
  architecture, tokenizer) that ``AutoModelForCausalLM.from_pretrained`` loads; for LoRA
  runs the adapters merged into the base weights (``output.merge_lora = true``).
* ``run_dir/adapter/`` (LoRA runs): the adapters in PEFT's format, loadable with
  ``PeftModel.from_pretrained(base, run_dir / "adapter")``, and the base model's name in
  ``lmloss_base_model.txt``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from lmloss.train import model_loading

BASE_NAME_FILE = "lmloss_base_model.txt"


def export_run_model(
    model: torch.nn.Module,
    tokenizer,
    run_dir: Path,
    *,
    peft: torch.nn.Module | None,
    base_name: str,
    merge_lora: bool,
) -> list[Path]:
    """Write the final model (and adapters) under ``run_dir``; returns the folders written."""
    written = []
    if peft is not None:
        adapter = run_dir / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        peft.save_pretrained(adapter)
        (adapter / BASE_NAME_FILE).write_text(base_name + "\n")
        tokenizer.save_pretrained(adapter)
        written.append(adapter)
        if not merge_lora:
            return written
        # merged on a copy: the trained model keeps its adapters (the caller may go on)
        model = copy.deepcopy(peft).merge_and_unload()
    path = run_dir / "model"
    path.mkdir(parents=True, exist_ok=True)
    model_loading.save_model(model, path)
    tokenizer.save_pretrained(path)
    return [*written, path]
