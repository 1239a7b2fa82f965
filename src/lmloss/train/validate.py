"""Every check of a run that needs no model weights, done in seconds before anything loads.

``lmloss validate RECIPE`` runs them and says what it found; ``lmloss train`` runs the same
checks before it loads the model (so a bad row, reward function or resume path is found
before minutes of loading). Checked:

* the recipe's keys and values (while parsing, :mod:`lmloss.train.recipe`);
* every data row (``data.path`` and ``data.eval_path``): readable, a known format, the
  values of its columns (:mod:`lmloss.train.formats`), and the format the objective needs;
* reward functions: importable (the current folder is on the import path) and callable
  with the documented signature;
* the resume target, the eval task, the model and teacher names (bundled, a local model
  folder, or a Hub id already in the local cache), precomputed files.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmloss._checks import require_choice
from lmloss.train import formats, loggers, tasks
from lmloss.train.config import Recipe
from lmloss.train.data import load_rows, read_hub_dataset, rename_columns
from lmloss.train.files import read_rows
from lmloss.train.hub import hub_offline, is_hub_id
from lmloss.train.model import BUNDLED_MODELS


@dataclass
class Table:
    """Checked rows in their format's shape, and where each came from."""

    rows: list[dict]
    positions: list[int]
    source: str
    format: str


@dataclass
class Report:
    table: Table
    eval_table: Table | None = None
    lines: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def read_table(
    recipe: Recipe, run_dir: Path, path: str | None = None, *, write_task: bool = True
) -> Table:
    """The rows of ``path`` (default: the training data) checked for the recipe's objective
    (a built-in task's rows are also written to the run directory unless ``write_task`` is
    false)."""
    config = recipe.data
    if path is None and config.task is not None:
        if write_task:
            rows, source = load_rows(config, run_dir, recipe.train.seed)
        else:
            rows = tasks.generate(config.task, config.task_size, seed=recipe.train.seed)
            source = f"task {config.task}"
        positions = list(range(1, len(rows) + 1))
    elif path is None and not Path(config.path).exists() and is_hub_id(config.path):
        rows = read_hub_dataset(config.path)
        source, positions = f"hub:{config.path}", list(range(1, len(rows) + 1))
    else:
        source = str(path or config.path)
        rows, positions = read_rows(Path(source))
    rows = rename_columns(rows, config.columns, source)
    rows, fmt = formats.normalize(rows, positions, source, config.format)
    if config.unpair:
        if fmt != "preference":
            raise ValueError(f"{source}: data.unpair = true needs paired rows, got {fmt} rows")
        rows, positions = formats.unpair(rows, positions)
        fmt = "unpaired"
    formats.check_objective(fmt, recipe.entry, rows, source, config.unpair)
    return Table(rows, positions, source, fmt)


# --------------------------------------------------------------------------- the rest


def resolve_model(name: str, where: str = "model.name") -> str:
    """A loadable location of ``name``: a bundled name, a local folder, the snapshot of a Hub
    id in the local cache, or (online) the Hub id itself, fetched when the model loads."""
    if name in BUNDLED_MODELS:
        from lmloss.models import smollm2_path

        smollm2_path()  # the package is installed
        return name
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{where} {name!r} is a folder without config.json (not a model)")
        return name
    if is_hub_id(name) and not path.exists():
        from huggingface_hub import constants, try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        if isinstance(found, str):
            return str(Path(found).parent)
        if not hub_offline():
            return name
        raise ValueError(
            f"{where} {name!r}: the Hub model is not in the Hub cache {constants.HF_HUB_CACHE} "
            "and the Hub is offline; run once online to cache it, or give a local path"
        )
    raise ValueError(
        f"{where} {name!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}), a local "
        "model directory nor a Hugging Face Hub id (owner/name)"
    )


def current_folder_importable() -> None:
    """Reward functions are ``module:function`` from the current folder too (as
    ``python -m`` and torchrun put it on the path)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def check_reward(name: str, columns: set[str]) -> None:
    """The reward imports and can take ``completions=, prompts=, **columns``."""
    from lmloss.train.rewards import BUILTIN, resolve

    fn = resolve(name)
    if name in BUILTIN:
        return
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or C function: nothing to read
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    given = {"completions", "prompts", *columns}
    names = {p.name for p in parameters}
    if "completions" not in names and not takes_any:
        raise ValueError(
            f"reward {name!r} must take a 'completions' keyword: def {fn.__name__}"
            "(completions: list[str], prompts: list, **columns) -> list[float]"
        )
    required = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]
    missing = [n for n in required if n not in given]
    if missing:
        raise ValueError(
            f"reward {name!r} needs argument(s) {', '.join(map(repr, missing))}, which are "
            f"neither completions, prompts nor a data column ({', '.join(sorted(columns))})"
        )
    if not takes_any and not given <= names:
        extra = sorted(given - names)
        raise ValueError(
            f"reward {name!r} does not take the argument(s) {', '.join(map(repr, extra))} it "
            "is given (prompts and every data column): add **columns to its signature"
        )


def check_online_distill_rows(recipe: Recipe, table: Table) -> None:
    """Sampled completions (distill.lmbda, distill.seq_kd) continue a prompt: the rows must
    be prompt/completion rows whose prompt is not trained."""
    distill = recipe.distill
    if recipe.entry.family != "distill" or (distill.lmbda == 0 and not distill.seq_kd):
        return
    if table.format != "prompt_completion" or recipe.data.train_on == "all":
        raise ValueError(
            f"{table.source}: distill.lmbda / distill.seq_kd sample completions of prompts: "
            f"they need prompt/completion rows (got {table.format}) and data.train_on other "
            "than 'all'"
        )


def check_resume(run_dir: Path) -> str:
    from lmloss.train import checkpoint

    found = checkpoint.latest(run_dir / "checkpoints")
    if found is None:
        raise ValueError(
            f"--resume: no checkpoint in {run_dir / 'checkpoints'} (the run stopped before its "
            "first save); start over with --overwrite"
        )
    return f"resume: from {found.path}"


def check(
    recipe: Recipe, *, resume: bool = False, run_dir: Path | None = None, writes: bool = False
) -> Report:
    """Every weight-free check of ``recipe``; the first problem raises ValueError.
    ``writes``: the trainer's call, which may write a built-in task's rows to the run."""
    run_dir = Path(recipe.output.dir) if run_dir is None else run_dir
    table = read_table(recipe, run_dir, write_task=writes)
    report = Report(table)
    report.lines.append(
        f"data: {table.source}: {len(table.rows)} rows, format {table.format}, fit for "
        f"{recipe.entry.name!r}"
    )
    if recipe.data.eval_path is not None:
        report.eval_table = read_table(recipe, run_dir, recipe.data.eval_path)
        report.lines.append(f"eval data: {len(report.eval_table.rows)} rows")
    report.lines.append(f"model: {recipe.model.name} ({resolve_model(recipe.model.name)})")
    if recipe.distill.teacher is not None:
        resolve_model(recipe.distill.teacher, "distill.teacher")
        report.lines.append(f"teacher: {recipe.distill.teacher}")
    for name, value in [
        ("distill.topk_file", recipe.distill.topk_file),
        (
            "reference.path",
            recipe.reference.path if recipe.reference.kind == "precomputed" else None,
        ),
    ]:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{name} {value!r} does not exist (run `lmloss precompute` first)")
    if recipe.entry.family == "policy":
        current_folder_importable()
        columns = set(table.rows[0]) - {"prompt"}
        for reward in recipe.policy.rewards:
            check_reward(reward, columns)
        report.lines.append(f"rewards: {', '.join(recipe.policy.rewards)}")
    check_online_distill_rows(recipe, table)
    if recipe.eval.task is not None:
        require_choice("eval.task", recipe.eval.task, tasks.TASKS)
        report.lines.append(f"eval task: {recipe.eval.task}")
    names = loggers.backends(recipe.output)
    loggers.check_installed(names)
    report.lines.append(f"loggers: metrics.jsonl{''.join(', ' + n for n in names)}")
    if resume:
        report.lines.append(check_resume(run_dir))
    return report
