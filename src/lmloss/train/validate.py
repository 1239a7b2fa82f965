"""Every check of a run that needs no model weights, done in seconds before anything loads.

``lmloss validate RECIPE`` runs them and says what it found; ``lmloss train`` runs the same
checks before it loads the model (so a bad row, reward function or resume path is found
before minutes of loading). Checked:

* the recipe's keys and values (while parsing, :mod:`lmloss.train.recipe`), and the ranges
  of the objective's hyper-parameters, by the objective itself on a synthetic batch
  (:mod:`lmloss.train.objective_check`);
* every data row (``data.path`` and ``data.eval_path``): readable, a known format, the
  values of its columns (:mod:`lmloss.train.formats`), and the format the objective needs;
* reward functions: importable (the current folder is on the import path) and callable
  with the documented signature;
* the resume target, the eval task, the model and teacher names (bundled, a local model
  folder, or a Hub id already in the local cache), precomputed files;
* ``lmloss validate`` only: each prompt's length in tokens, with the model's tokenizer when
  it loads offline (:mod:`lmloss.train.prompt_lengths`).
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmloss._checks import require_choice
from lmloss.train import formats, health, loggers, objective_check, rundir, tasks
from lmloss.train.config import Recipe
from lmloss.train.data import load_rows, read_hub_dataset, rename_columns
from lmloss.train.files import read_rows
from lmloss.train.hub import is_hub_id, resolve_model
from lmloss.train.prompt_lengths import check_prompt_lengths


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
    formats.check_objective(
        fmt, recipe.entry, rows, source, config.unpair, online=recipe.online.enabled
    )
    check_recipe_columns(recipe, rows, positions, source)
    return Table(rows, positions, source, fmt)


def check_recipe_columns(recipe: Recipe, rows: list[dict], positions: list[int], source) -> None:
    """Columns the recipe's options and terms read: ``objective.token_weights``, and the
    demonstrations (``completion``) of likelihood terms added to a policy objective."""
    needed = {}
    if "token_weights" in recipe.options:
        needed[recipe.options["token_weights"]] = "objective.token_weights"
    if recipe.terms and recipe.entry.family == "policy":
        needed["completion"] = "[[objective.add]] (the demonstrations its terms train on)"
    for row, position in zip(rows, positions):
        for column, why in needed.items():
            if row.get(column) is None:
                raise formats.DataError(source, position, f"no column {column!r}, read by {why}")


def check_conversations(table: Table, train_on: str) -> None:
    """A ``messages`` row must have an assistant turn to train (unless every token trains)."""
    if train_on == "all" or table.format not in ("messages", "sharegpt"):
        return
    for row, line in zip(table.rows, table.positions):
        if not any(m["role"] == "assistant" for m in row["messages"]):
            raise formats.DataError(
                table.source,
                line,
                f"the conversation has no assistant turn to train on (data.train_on = "
                f"{train_on!r}; 'all' trains every token)",
            )


# --------------------------------------------------------------------------- the rest


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


def check_margins(table: Table) -> str:
    """Reward-model pairs: a ``margin`` column, when there is one, is a number in every row."""
    if "margin" not in table.rows[0]:
        return "reward model pairs: no margin column"
    for row, position in zip(table.rows, table.positions):
        value = row.get("margin")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(
                f"{table.source} row {position}: column 'margin' must be a number in every row "
                f"(the required score gap of the pair), got {value!r}"
            )
    return "reward model pairs: margin column"


def check_judge(section, where: str, table: Table) -> str:
    """The reward functions of ``[policy]`` / ``[online]`` import and fit the data columns;
    the reward model resolves (a folder holding a sequence classifier, or a Hub id).
    Returns the judge's parts, in words."""
    current_folder_importable()
    columns = set(table.rows[0]) - {"prompt"}
    for reward in section.rewards:
        check_reward(reward, columns)
    parts = list(section.rewards)
    if section.reward_model is not None:
        from lmloss.train.reward_model import is_reward_model

        found = resolve_model(section.reward_model, f"{where}.reward_model")
        if Path(found).is_dir() and not is_reward_model(found):
            raise ValueError(
                f"{where}.reward_model {section.reward_model!r} is not a sequence-classification "
                "model (its config.json names no ...ForSequenceClassification architecture); "
                "train one with objective bradley_terry"
            )
        parts.append(f"reward model {section.reward_model}")
    return ", ".join(parts)


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
    ``writes``: the trainer's call, which may write a built-in task's rows to the run (and
    tokenizes the prompts itself)."""
    run_dir = Path(recipe.output.dir) if run_dir is None else run_dir
    rundir.check_target(run_dir, resume=resume, overwrite=False)
    ranges = objective_check.check_recipe_ranges(recipe)
    table = read_table(recipe, run_dir, write_task=writes)
    check_conversations(table, recipe.data.train_on)
    report = Report(table)
    report.lines.append(
        f"data: {table.source}: {len(table.rows)} rows, format {table.format}, fit for "
        f"{recipe.entry.name!r}"
    )
    report.lines.append(ranges)
    if recipe.data.eval_path is not None:
        report.eval_table = read_table(recipe, run_dir, recipe.data.eval_path)
        report.lines.append(f"eval data: {len(report.eval_table.rows)} rows")
    report.lines.append(f"model: {recipe.model.name} ({resolve_model(recipe.model.name)})")
    if not writes:  # the trainer tokenizes every row itself, right after loading the model
        report.lines.append(check_prompt_lengths(recipe, table))
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
    if recipe.entry.family == "classify":
        report.lines.append(check_margins(table))
    if recipe.entry.family == "policy":
        judge = check_judge(recipe.policy, "policy", table)
        verifier = health.verifier_of(recipe) or "none (no reward-hacking check)"
        report.lines.append(f"rewards: {judge}; verifier: {verifier}")
    if recipe.online.enabled:
        report.lines.append(f"online rewards: {check_judge(recipe.online, 'online', table)}")
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
