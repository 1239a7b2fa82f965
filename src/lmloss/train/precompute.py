"""``lmloss precompute recipe.toml``: what a run can read instead of running a second model.

* preference: the reference log-probs of every completion token (the model as loaded,
  before training), written next to the data (or to ``reference.path``); train with
  ``reference.kind = "precomputed"``.
* distill: the teacher's top-k log-probs at every trained position (``distill.top_k``),
  written to ``distill.topk_file``; train with ``distill.teacher`` unset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lmloss.train.config import Recipe
from lmloss.train.loop import Trainer


def precompute(recipe: Recipe, echo=print) -> Path:
    # the trainer's set-up loads model, data and teacher; no reference model is needed here
    needs_file = dataclasses.replace(recipe.reference, kind="none")
    topk = recipe.distill.topk_file
    distill = dataclasses.replace(recipe.distill, topk_file=None)
    trainer = Trainer(
        dataclasses.replace(recipe, reference=needs_file, distill=distill), owner=False, echo=echo
    )
    if trainer.mode.family == "distill":
        if topk is None:
            raise ValueError("lmloss precompute for distillation writes distill.topk_file: set it")
        path = Path(topk)
    else:
        path = trainer.reference_path()
    trainer.model.eval()
    with torch.no_grad():
        what = trainer.mode.precompute(trainer.examples, path)
    echo(f"wrote {what} to {path}")
    return path
