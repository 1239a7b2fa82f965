"""Reading a recipe: TOML files or bundled recipes, ``--set`` overrides, checks, the key list.

Unknown sections and keys are rejected with a "did you mean" hint; values of the wrong type
or out of range are rejected with the key's full name.

Example::

    [model]
    name = "smollm2"
    [data]
    path = "pairs.jsonl"
    [objective]
    name = "dpo"
    beta = 0.1
    [train]
    max_steps = 100
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from lmloss import registry
from lmloss.objectives.binding import ObjectiveArgumentError, check_hyper
from lmloss.train import objective_options, objective_sum
from lmloss.train.config import SECTIONS, Recipe
from lmloss.train.device import check_device_spec
from lmloss.train.objective_values import check_objective_values


def _hint(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """``value`` if it fits the annotation ``hint`` (ints accepted for floats)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(t for t in options if t is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:  # tuple[X, ...]: a TOML array of X
        item = typing.get_args(hint)[0]
        if item is str and isinstance(value, str):  # one name for a list of names
            value = [] if value == "none" else [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list of {item.__name__}, got {value!r}")
        return tuple(_check_type(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise TypeError(f"{where} must be a table of strings, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise TypeError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _section(cls: type, name: str, values: Any) -> Any:
    if not isinstance(values, dict):
        raise TypeError(f"[{name}] must be a table, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown key {name}.{key}{_hint(key, fields)}")
        where = f"{name}.{key}"
        value = _check_type(where, value, hints[key])
        choices = fields[key].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
        kwargs[key] = value
    missing = [
        k
        for k, f in fields.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and k not in kwargs
    ]
    if missing:
        raise ValueError(f"[{name}] needs {', '.join(f'{name}.{k}' for k in missing)}")
    return cls(**kwargs)


# hyper-parameters the loop sets itself, per step
TRAINER_OWNED = {
    "num_items": "the trainer passes the optimizer step's global token count",
}


def _check_hyper(entry: registry.Entry, key: str, where: str) -> None:
    """``key`` is a hyper-parameter of ``entry`` the recipe may set (the objectives' one
    unknown-argument check, :func:`lmloss.objectives.binding.check_hyper`)."""
    if key in TRAINER_OWNED:
        raise ValueError(f"{where} is set by the trainer: {TRAINER_OWNED[key]}")
    try:
        check_hyper(entry.spec, {key: None})
    except ObjectiveArgumentError as error:
        raise ValueError(f"unknown key {where}: {error}") from None


def _objective(values: Any) -> dict[str, Any]:
    """``[objective]``: the name, its hyper-parameters, front-door options and added terms."""
    if not isinstance(values, dict) or "name" not in values:
        raise ValueError("[objective] needs name = '<objective>' (see `lmloss list`)")
    values = dict(values)
    name = values.pop("name")
    if not isinstance(name, str):
        raise TypeError(f"objective.name must be a string, got {name!r}")
    entry = registry.get(name)  # unknown names: ValueError with "did you mean"
    terms = objective_sum.parse(entry, values.pop("add"), _check_hyper) if "add" in values else ()
    options = {k: values.pop(k) for k in list(values) if k in objective_options.options_of(entry)}
    for key in values:
        _check_hyper(entry, key, f"objective.{key}")
    if terms and "hypo_weight" in options:
        raise ValueError("objective.hypo_weight does not combine with [[objective.add]] yet")
    return {
        "objective": entry.name,
        "hyper": values,
        "options": objective_options.check(entry, options),
        "terms": terms,
    }


def parse(data: dict[str, Any], source: str = "<dict>") -> Recipe:
    """A checked :class:`Recipe` from nested dicts (a parsed TOML document)."""
    for section in data:
        if section not in SECTIONS:
            raise ValueError(f"unknown section [{section}]{_hint(section, SECTIONS)}")
    if "model" not in data:
        raise ValueError("the recipe needs a [model] section with name = ...")
    objective = _objective(data.get("objective"))
    if isinstance(data.get("online"), dict):  # an [online] section turns online sampling on
        data = {**data, "online": {"enabled": True, **data["online"]}}
    kwargs = {
        section: _section(cls, section, data[section])
        for section, cls in SECTIONS.items()
        if cls is not dict and section in data
    }
    recipe = Recipe(**objective, source=source, **kwargs)
    validate(recipe)
    return recipe


def _positive(where: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{where} must be {'>= 0' if zero_ok else '> 0'}, got {value}")


SEED_LIMIT = 2**32  # seeds are combined with counters inside a 64-bit generator seed


def _non_finite(where: str, value: Any) -> str | None:
    """The full name of the first NaN or infinity in ``value`` (lists and tables walked)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        value = {f"[{k!r}]": v for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        value = {f"[{i}]": v for i, v in enumerate(value)}
    else:
        return None
    return next(filter(None, (_non_finite(where + k, v) for k, v in value.items())), None)


def _check_finite(recipe: Recipe) -> None:
    """Every float of the recipe, objective hyper-parameters included, must be finite."""
    values = [(f"objective.{k}", v) for k, v in {**recipe.hyper, **recipe.options}.items()]
    for i, term in enumerate(recipe.terms):
        values += [(f"objective.add[{i}].{k}", v) for k, v in term.hyper.items()]
    for section, cls in SECTIONS.items():
        if cls is not dict:
            config = getattr(recipe, section)
            values += [
                (f"{section}.{f.name}", getattr(config, f.name)) for f in dataclasses.fields(config)
            ]
    for where, value in values:
        bad = _non_finite(where, value)
        if bad:
            raise ValueError(f"{bad} must be a finite number, got {value!r}")


FLOAT32_MAX = 3.4028234663852886e38


def _check_late_refusals(recipe: Recipe) -> None:
    """Keys whose bad values used to pass ``lmloss validate`` and stop ``train`` later
    (after the model loaded), with a traceback for ``lr``."""
    t = recipe.train
    if not recipe.output.dir.strip():
        raise ValueError("output.dir must name a folder, got '' (use '.' for this folder)")
    if t.memory_budget is not None:
        _positive("train.memory_budget", t.memory_budget)
    # AdamW's first step is lr / (1 - betas[0]), converted to float32
    if max(t.lr / (1 - t.betas[0]), t.lr * t.weight_decay) > FLOAT32_MAX:
        raise ValueError(
            f"train.lr = {t.lr:g} overflows AdamW's first step (lr / (1 - betas[0]) and "
            "lr * weight_decay must stay below float32's 3.4e38)"
        )


def validate(recipe: Recipe) -> None:
    """Ranges and cross-section consistency (types were checked while parsing)."""
    _check_finite(recipe)
    check_objective_values(recipe.objective, recipe.entry.hyper, recipe.hyper)
    t, d, p, e = recipe.train, recipe.data, recipe.policy, recipe.eval
    for where, value in [
        ("lora.alpha", recipe.lora.alpha),
        ("train.adam_eps", t.adam_eps),
        ("train.dist_timeout", t.dist_timeout),
        ("distill.temperature", recipe.distill.temperature),
    ]:
        _positive(where, value)
    _positive("train.max_skips", t.max_skips, zero_ok=True)
    if not 0 <= recipe.lora.dropout < 1:
        raise ValueError(f"lora.dropout must be in [0, 1), got {recipe.lora.dropout}")
    for where, seed in [("train.seed", t.seed), ("eval.seed", e.seed)]:
        if not 0 <= seed < SEED_LIMIT:
            raise ValueError(f"{where} must be in [0, 2**32), got {seed}")
    for where, value in [
        ("train.max_steps", t.max_steps),
        ("train.batch_size", t.batch_size),
        ("train.grad_accum", t.grad_accum),
        ("train.lr", t.lr),
        ("data.max_length", d.max_length),
        ("data.max_prompt_length", d.max_prompt_length),
        ("data.task_size", d.task_size),
        ("policy.group_size", p.group_size),
        ("policy.max_new_tokens", p.max_new_tokens),
        ("policy.temperature", p.temperature),
        ("preference.samples", recipe.preference.samples),
        ("preference.max_new_tokens", recipe.preference.max_new_tokens),
        ("preference.temperature", recipe.preference.temperature),
        ("eval.size", e.size),
        ("eval.batch_size", e.batch_size),
        ("eval.max_new_tokens", e.max_new_tokens),
        ("output.log_every", recipe.output.log_every),
        ("lora.r", recipe.lora.r),
    ]:
        _positive(where, value)
    for where, value in [
        ("train.warmup_steps", t.warmup_steps),
        ("train.weight_decay", t.weight_decay),
        ("train.max_grad_norm", t.max_grad_norm),
        ("train.threads", t.threads),
        ("eval.every", e.every),
        ("eval.every_size", e.every_size),
        ("output.save_every", recipe.output.save_every),
        ("output.keep", recipe.output.keep),
        ("policy.top_k", p.top_k),
    ]:
        _positive(where, value, zero_ok=True)
    if t.epochs is not None:
        _positive("train.epochs", t.epochs)
    if d.packing and recipe.entry.family != "likelihood":
        raise ValueError(
            f"data.packing = true is for likelihood objectives (SFT); {recipe.objective!r} is "
            f"a {recipe.entry.family} objective"
        )
    if not 0 < p.top_p <= 1:
        raise ValueError(f"policy.top_p must be in (0, 1], got {p.top_p}")
    if not 0 <= t.decay_fraction <= 1 or not 0 <= t.min_lr_ratio <= 1:
        raise ValueError("train.decay_fraction and train.min_lr_ratio must be in [0, 1]")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ValueError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
    if d.max_prompt_length >= d.max_length:
        raise ValueError(
            f"data.max_prompt_length ({d.max_prompt_length}) must be below data.max_length "
            f"({d.max_length}): a completion needs room"
        )
    if (d.path is None) == (d.task is None):
        raise ValueError("give exactly one of data.path (a local file) or data.task")
    if p.verifier is not None and p.verifier not in p.rewards:
        raise ValueError(
            f"policy.verifier {p.verifier!r} must be one of policy.rewards {list(p.rewards)}"
        )
    check_device_spec(t.device)
    _check_sampled_answers(recipe)
    _check_token_weights(recipe)
    if recipe.reference.kind == "adapters_off" and not recipe.lora.enabled:
        raise ValueError("reference.kind = 'adapters_off' needs lora.enabled = true")
    if recipe.entry.family == "policy":
        _check_judge("policy", p.rewards, p.reward_weights, p.reward_model)
    _check_online(recipe)
    _check_reward_model(recipe)
    _check_policy_loop(recipe)
    _check_moving_reference(recipe)
    _check_online_distill(recipe)
    _check_late_refusals(recipe)  # after betas: it divides by 1 - betas[0]


def _check_reward_model(recipe: Recipe) -> None:
    """Classify objectives train as reward models: only the pairwise ones can."""
    from lmloss.classify import PAIRWISE_SCORE_OBJECTIVES

    if recipe.entry.family == "classify" and recipe.objective not in PAIRWISE_SCORE_OBJECTIVES:
        raise ValueError(
            f"lmloss train trains classify objectives as reward models on preference pairs "
            f"({', '.join(PAIRWISE_SCORE_OBJECTIVES)}); {recipe.objective!r} is a loss over "
            "generic logits (use lmloss.classification_loss)"
        )


def _check_judge(
    section: str, rewards: tuple[str, ...], weights: tuple[float, ...], model: str | None
) -> None:
    """Weights match the reward functions, and something grades the samples."""
    if weights and len(weights) != len(rewards):
        raise ValueError(
            f"{section}.reward_weights has {len(weights)} entries for {len(rewards)} "
            f"{section}.rewards"
        )
    if not rewards and model is None:
        raise ValueError(
            f"{section}.rewards is empty and {section}.reward_model is not set: online "
            "training needs a reward function or a reward model"
        )


def _check_online(recipe: Recipe) -> None:
    """[online]: a pairwise preference objective, a judge, sampling settings in range."""
    online = recipe.online
    if not online.enabled:
        return
    entry = recipe.entry
    if entry.family != "preference" or entry.spec.kind != "Pairs":
        raise ValueError(
            f"[online] trains pairwise preference objectives (dpo, ipo, simpo, sppo_hard, ...); "
            f"{entry.name!r} is a {entry.family} objective with {entry.spec.kind} inputs"
        )
    if entry.spec.extra_inputs:
        raise ValueError(
            f"[online]: {entry.name!r} needs per-pair data ({', '.join(entry.spec.extra_inputs)}) "
            "that sampled pairs do not have"
        )
    if recipe.reference.kind == "precomputed":
        raise ValueError(
            "[online]: reference.kind = 'precomputed' cannot score completions sampled during "
            "training; use 'copy' (or 'auto')"
        )
    if recipe.data.eval_path is not None:
        raise ValueError(
            "[online]: data.eval_path (a held-out loss of fixed rows) does not apply to sampled "
            "pairs; use eval.task for a held-out metric"
        )
    if online.samples < 2:
        raise ValueError(
            f"online.samples must be >= 2 (a pair is the best and worst sample), got "
            f"{online.samples}"
        )
    _positive("online.max_new_tokens", online.max_new_tokens)
    _positive("online.temperature", online.temperature)
    _positive("online.top_k", online.top_k, zero_ok=True)
    if not 0 < online.top_p <= 1:
        raise ValueError(f"online.top_p must be in (0, 1], got {online.top_p}")
    _check_judge("online", online.rewards, online.reward_weights, online.reward_model)


def _check_sampled_answers(recipe: Recipe) -> None:
    """D2O's reference samples and HyPO's on-policy samples are scored by a reference model."""
    asked = [
        what
        for what, on in [
            (f"{recipe.objective!r}'s reference samples", recipe.entry.spec.samples),
            ("objective.hypo_weight's on-policy samples", "hypo_weight" in recipe.options),
        ]
        if on
    ]
    if asked and recipe.reference.kind in ("none", "precomputed"):
        raise ValueError(
            f"{' and '.join(asked)} need a reference model to draw and score them: "
            f"reference.kind = {recipe.reference.kind!r} gives none (use 'auto')"
        )


def _check_token_weights(recipe: Recipe) -> None:
    if "token_weights" in recipe.options and recipe.data.packing:
        raise ValueError(
            "objective.token_weights does not combine with data.packing = true (the weights "
            "belong to rows, packing merges them)"
        )


def _in_range(where: str, value: float, low: float, high: float, text: str) -> None:
    if not low <= value <= high:
        raise ValueError(f"{where} must be in {text}, got {value}")


def _check_policy_loop(recipe: Recipe) -> None:
    """[policy] rollout reuse, batch filters and token weights (docs/policy.md)."""
    p, grad_accum = recipe.policy, recipe.train.grad_accum
    _positive("policy.num_iterations", p.num_iterations)
    _positive("policy.max_num_gen_batches", p.max_num_gen_batches)
    _positive("policy.steps_per_generation", p.steps_per_generation, zero_ok=True)
    if p.steps_per_generation % grad_accum:
        raise ValueError(
            f"policy.steps_per_generation ({p.steps_per_generation}) must be a multiple of "
            f"train.grad_accum ({grad_accum}): each optimizer step takes grad_accum micro-batches"
        )
    _in_range(
        "policy.overlong_buffer", p.overlong_buffer, 0, p.max_new_tokens, "[0, max_new_tokens]"
    )
    _positive("policy.overlong_penalty", p.overlong_penalty, zero_ok=True)
    _positive("policy.tis_cap", p.tis_cap, zero_ok=True)
    if not 0 < p.top_entropy_quantile <= 1:
        raise ValueError(
            f"policy.top_entropy_quantile must be in (0, 1], got {p.top_entropy_quantile}"
        )
    if not 0 < p.proxy_min_p < 1:
        raise ValueError(f"policy.proxy_min_p must be in (0, 1), got {p.proxy_min_p}")


def _check_moving_reference(recipe: Recipe) -> None:
    r = recipe.reference
    _positive("reference.sync_steps", r.sync_steps, zero_ok=True)
    if not 0 < r.sync_alpha <= 1:
        raise ValueError(f"reference.sync_alpha must be in (0, 1], got {r.sync_alpha}")
    if r.sync_steps == 0:
        return
    if r.kind in ("none", "precomputed", "adapters_off") or (
        r.kind == "auto" and recipe.lora.enabled
    ):
        raise ValueError(
            "reference.sync_steps moves a reference model: it needs a frozen copy "
            f"(reference.kind = 'copy'{', with LoRA too' if recipe.lora.enabled else ''}), "
            f"not {r.kind!r}"
        )


def _check_online_distill(recipe: Recipe) -> None:
    d = recipe.distill
    _in_range("distill.lmbda", d.lmbda, 0.0, 1.0, "[0, 1]")
    _positive("distill.max_new_tokens", d.max_new_tokens)
    if (d.lmbda > 0 or d.seq_kd) and d.teacher is None:
        raise ValueError(
            "distill.lmbda and distill.seq_kd sample completions for the teacher to score: "
            "they need distill.teacher (a model), not a top-k file"
        )


# --------------------------------------------------------------------------- loading


BUNDLED = "lmloss.train.recipes"


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped inside the package (``main`` is the main job)."""
    files = resources.files(BUNDLED).iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def read_toml(spec: str) -> tuple[dict[str, Any], str]:
    """Parse a recipe file, or a bundled recipe by name; returns (data, source)."""
    path = Path(spec)
    if path.is_file():
        with path.open("rb") as f:
            return tomllib.load(f), str(path)
    if spec in bundled_recipes():
        text = resources.files(BUNDLED).joinpath(f"{spec}.toml").read_text()
        return tomllib.loads(text), f"bundled:{spec}"
    raise ValueError(
        f"recipe {spec!r} is neither a file nor a bundled recipe"
        f"{_hint(spec, bundled_recipes())} (bundled: {', '.join(bundled_recipes())})"
    )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``section.key=value`` strings (value in TOML syntax; bare words are strings)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ValueError(f"[{section}] is not a table")
        data[section][name] = value
    return data


def load(spec: str | None, overrides: list[str] = (), warn=None) -> Recipe:
    """The recipe from a file or bundled name (or only overrides), with ``--set`` applied.

    When ``--set objective.name=X`` changes the objective, the file's hyper-parameters that
    X does not take are dropped and those it takes are kept, each with a warning."""
    data, source = ({}, "<flags>") if spec is None else read_toml(spec)
    changed = apply_overrides(data, list(overrides))
    _steps_over_epochs(changed, overrides, warn)
    before = (data.get("objective") or {}).get("name")
    after = (changed.get("objective") or {}).get("name")
    if before is not None and isinstance(after, str) and after != before:
        changed["objective"] = _switch_objective(data["objective"], changed["objective"], warn)
    return parse(changed, source)


def _steps_over_epochs(data: dict, overrides, warn) -> None:
    """``--set train.max_steps=N`` on a recipe that sets ``train.epochs`` (which would win):
    the command line means N steps, so the file's epochs are dropped, with a warning."""
    keys = {item.partition("=")[0].strip() for item in overrides}
    train = data.get("train")
    if "train.max_steps" not in keys or "train.epochs" in keys:
        return  # both on the command line: epochs decide, as in a recipe file
    if not isinstance(train, dict) or "epochs" not in train:
        return
    import warnings

    warn = warn or (lambda text: warnings.warn(text, UserWarning, stacklevel=4))
    warn(
        f"--set train.max_steps={train['max_steps']} replaces the recipe's train.epochs = "
        f"{train.pop('epochs')} (epochs would otherwise decide the number of steps)"
    )


def _switch_objective(old: dict, new: dict, warn) -> dict:
    """``new`` without the hyper-parameters of the recipe's objective that ``new`` lacks."""
    import warnings

    warn = warn or (lambda text: warnings.warn(text, UserWarning, stacklevel=3))
    entry = registry.get(new["name"])
    out = dict(new)
    for key, value in old.items():
        if key == "name" or key == "add" or new.get(key) is not value:
            continue  # set by --set, or added terms: checked as usual
        if objective_options.applies(entry, key):
            warn(f"objective {entry.name!r} keeps the option {key} = {value!r} from the recipe")
        elif key in entry.hyper:
            warn(
                f"objective {entry.name!r} keeps {key} = {value!r} from the recipe (written for "
                f"{old['name']!r}; {entry.name}'s default is {entry.hyper[key]!r})"
            )
        else:
            warn(
                f"objective {entry.name!r} takes no {key!r}: dropped {key} = {value!r} "
                f"(written for {old['name']!r})"
            )
            del out[key]
    return out


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return f"list of {typing.get_args(hint)[0].__name__}"
    if origin is dict:
        return "table"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(t) for t in typing.get_args(hint))
    return "none" if hint is type(None) else hint.__name__


def reference_text() -> str:
    """Every section and key with type, default and documentation (``lmloss train --help``)."""
    lines = []
    for section, cls in SECTIONS.items():
        if cls is dict:
            lines.append("[objective]  the objective, by registry name, and its hyper-parameters")
            lines.append("  name (str, required): see `lmloss list`; `lmloss describe NAME`")
            lines.append("  <hyper-parameter> = value: any of the objective's hyper-parameters")
            lines.append(
                "  [[objective.add]] name, weight, <hyper-parameter>s: a weighted term added "
                "to the loss (logged as loss/<name>)"
            )
            lines.append("  options of a family's front door:")
            lines.extend(objective_options.reference_lines())
            continue
        lines.append(f"[{section}]  {cls.__doc__.split('] ', 1)[1]}")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "required"
            kind = _type_name(hints[f.name])
            lines.append(f"  {f.name} ({kind}, {default}): {f.metadata['doc']}")
    return "\n".join(lines)
