"""``lmloss eval``: the held-out metric of a run, a model directory or the bundled model
(``--task``), or the pairwise accuracy of a reward model on held-out pairs (``--pairs``).

For a run directory the run's own settings are the defaults (chat template, system
prompt, generation budget, bf16 autocast), so the numbers match the run's "after" column.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from lmloss.train.config import DataConfig
from lmloss.train.data import Encoder
from lmloss.train.device import resolve
from lmloss.train.evaluate import evaluate_pairs, evaluate_task
from lmloss.train.model_loading import load_pretrained, load_trained
from lmloss.train.reward_model import RewardModel


def _run_recipe(model: str) -> dict:
    path = Path(model) / "recipe.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _model_folder(model: str) -> str | Path:
    """A run directory's ``model/``, else ``model`` itself (a folder or a Hub id)."""
    inside = Path(model) / "model"
    return inside if inside.is_dir() else model


def evaluate_command(args: argparse.Namespace) -> int:
    recipe = _run_recipe(args.model)
    data = recipe.get("data", {})
    keep = {k: data[k] for k in ("chat_template", "system_prompt") if k in data}
    config = dataclasses.replace(DataConfig(), **keep)
    if args.system_prompt is not None:
        config = dataclasses.replace(config, system_prompt=args.system_prompt)
    evaluation = recipe.get("eval", {})
    max_new_tokens = args.max_new_tokens or evaluation.get("max_new_tokens", 32)
    precision = "bf16" if args.bf16 else recipe.get("train", {}).get("precision", "auto")
    # the device of this machine (the run's may be elsewhere), the run's precision
    compute = resolve("auto", precision, 0)
    torch.set_num_threads(compute.threads)

    if args.pairs is not None:
        limits = {k: data[k] for k in ("max_length", "max_prompt_length") if k in data}
        judge = RewardModel(
            str(_model_folder(args.model)),
            data=dataclasses.replace(config, **limits),
            device=compute.device,
            autocast=compute.autocast,
            where="lmloss eval MODEL",
        )
        print(json.dumps(evaluate_pairs(judge, Path(args.pairs), args.batch_size), indent=2))
        return 0
    if Path(args.model).is_dir():
        model, tokenizer = load_trained(args.model)
    else:
        model, tokenizer = load_pretrained(args.model)
    model.to(compute.device).eval()
    result = evaluate_task(
        model,
        tokenizer,
        Encoder(tokenizer, config),
        args.task,
        size=args.size,
        seed=args.seed,
        max_new_tokens=max_new_tokens,
        batch_size=args.batch_size,
        autocast=compute.autocast(),
    )
    print(json.dumps(result, indent=2))
    return 0
