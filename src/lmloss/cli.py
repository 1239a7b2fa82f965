"""The ``lmloss`` command line: ``train``, ``validate``, ``eval``, ``plot``, ``precompute``,
``list``, ``describe``. (The engine demo on SmolLM2 is ``python benchmarks/demo.py``.)"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from lmloss import registry
from lmloss._extras import MissingExtraError, is_missing_dependency, missing_extra


def _list(args: argparse.Namespace) -> int:
    for family in [args.family] if args.family else registry.families():
        names = registry.list_objectives(family)
        if not names:
            continue
        print(f"{family}:")
        for name in names:
            entry = registry.get(name)
            hyper = ", ".join(f"{k}={v!r}" for k, v in entry.hyper.items())
            print(f"  {name:<16} {entry.spec.paper}" + (f"  [{hyper}]" if hyper else ""))
    return 0


def _describe(args: argparse.Namespace) -> int:
    entry = registry.get(args.name)
    print(entry.spec.summary())
    print()
    print(entry.formula)
    from lmloss.train.formats import objective_columns

    print()
    print(f"data columns (lmloss train): {objective_columns(entry)}")
    return 0


def _command_line() -> str:
    return "lmloss " + " ".join(sys.argv[1:])


def _train(args: argparse.Namespace) -> int:
    from lmloss.train import load_recipe
    from lmloss.train import report as run_report
    from lmloss.train.distributed import World
    from lmloss.train.loop import train
    from lmloss.train.signals import sigterm_interrupts

    overrides = list(args.set)
    if args.output:
        overrides.append(f"output.dir={json.dumps(args.output)}")
    recipe = load_recipe(args.recipe, overrides, warn=_warn)
    with sigterm_interrupts():  # the loop saves on SIGTERM; the set-up just stops
        summary = train(recipe, resume=args.resume, overwrite=args.overwrite)
    if World.from_env().is_main:  # under torchrun, one report from rank 0
        print(run_report.write(summary, _command_line()))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from lmloss.train import load_recipe
    from lmloss.train.validate import check

    overrides = list(args.set)
    if args.output:
        overrides.append(f"output.dir={json.dumps(args.output)}")
    recipe = load_recipe(args.recipe, overrides, warn=_warn)
    print(f"recipe: {recipe.source}: objective {recipe.objective!r} ({recipe.entry.family})")
    for line in check(recipe, resume=args.resume).lines:
        print(line)
    print("ok: no problem found (the checks that need the model's weights run at train time)")
    return 0


def _warn(text: str) -> None:
    print(f"lmloss: warning: {text}", file=sys.stderr)


def _precompute(args: argparse.Namespace) -> int:
    from lmloss.train import load_recipe
    from lmloss.train.precompute import precompute

    precompute(load_recipe(args.recipe, list(args.set)))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from lmloss.train.cli_eval import evaluate_command

    return evaluate_command(args)


def _plot(args: argparse.Namespace) -> int:
    from lmloss.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


RECIPE_CAN_RUN = """\
What a recipe can run: a recipe is code, not just settings. Treat one from elsewhere like a
script before you train with it.
  policy.rewards = ["module:function"] imports that module (under `python -m lmloss` and
    torchrun also from the current directory) and calls it on every batch of completions;
  model.trust_remote_code = true runs the Python files shipped in the model directory
    (Hugging Face's remote code), as does a teacher model's directory."""


def _add_training_commands(sub) -> None:
    from lmloss.train.recipe import bundled_recipes, reference_text

    recipes = ", ".join(bundled_recipes())
    p = sub.add_parser(
        "train",
        help="train a causal LM with any objective (recipe keys: lmloss train --help)",
        description="Train a causal LM with any registered objective, as a TOML recipe says.\n"
        "It runs on train.device (auto: the GPU when CUDA is available) in train.precision "
        "(auto: bf16 where native, else fp32) with train.threads CPU threads (0: the usable "
        "cores); model.name and data.path may be Hugging Face Hub ids (the local cache is "
        "used offline).",
        epilog=f"Bundled recipes: {recipes} (`lmloss train main` is the main job).\n\n"
        f"{RECIPE_CAN_RUN}\n\n"
        "Recipe keys, as [section] key (type, default): meaning\n" + reference_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", nargs="?", help=f"TOML file or bundled recipe name ({recipes})")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe key (TOML value), e.g. --set train.max_steps=10",
    )
    p.add_argument("--output", help="run directory (same as --set output.dir=...)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's newest verified checkpoint"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the previous run's outputs in the run directory first "
        "(a used directory is refused otherwise)",
    )
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "validate",
        help="check a recipe, its data rows, rewards and names without loading the model",
        description="Every check of `lmloss train` that needs no model weights, in seconds: "
        "recipe keys and values, every data row, the columns the objective needs, reward "
        "functions, the resume target, the eval task and the model name.",
    )
    p.add_argument("recipe", nargs="?", help=f"TOML file or bundled recipe name ({recipes})")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--output", help="run directory (same as --set output.dir=...)")
    p.add_argument("--resume", action="store_true", help="also check the checkpoint to resume")
    p.set_defaults(run=_validate)

    p = sub.add_parser(
        "eval",
        help="held-out accuracy of a model or a run on a verifiable task, or of a reward "
        "model on held-out preference pairs",
    )
    p.add_argument("model", help="run directory, model directory or 'smollm2'")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="built-in task, e.g. arithmetic")
    what.add_argument(
        "--pairs",
        metavar="FILE",
        help="reward models: prompt/chosen/rejected file; reports pairwise accuracy and margin",
    )
    p.add_argument("--size", type=int, default=100, help="held-out problems")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--max-new-tokens", type=int, help="default: the run's (else 32)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--system-prompt", default=None, help="default: the run's")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default: as the run)")
    p.set_defaults(run=_eval)

    p = sub.add_parser("plot", help="PNG curves of a run: loss, rewards, margins, KL, entropy, lr")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default run_dir/curves.png)")
    p.set_defaults(run=_plot)

    p = sub.add_parser(
        "precompute",
        help="reference log-probs (preference) or teacher top-k (distill) for a recipe",
    )
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(run=_precompute)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmloss", description="LM post-training objectives.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    p = sub.add_parser("list", help="every objective: family, paper, hyper-parameters")
    p.add_argument("--family", help="only this family's objectives (e.g. preference)")
    p.set_defaults(run=_list)
    p = sub.add_parser(
        "describe",
        help="what one objective needs (inputs, data columns, statistics, reference model, "
        "normalizer, hyper-parameters), its paper and its formula",
    )
    p.add_argument("name")
    p.set_defaults(run=_describe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lmloss.train.nonfinite import NonFiniteError
    from lmloss.train.rewards import RewardError
    from lmloss.train.signals import Interrupted

    try:
        return args.run(args)
    except (ValueError, TypeError, RewardError, NonFiniteError) as error:
        print(f"lmloss: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if not is_missing_dependency(error):
            raise
        if not isinstance(error, MissingExtraError):
            error = missing_extra(error, f"lmloss {args.command}", "hf")
        print(f"lmloss: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stopped:
        print(f"lmloss: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print(
            f"lmloss: interrupted ({args.command}) before a step boundary; the newest "
            "complete checkpoint, if any, is kept (continue with --resume)",
            file=sys.stderr,
        )
        return 128 + signal.SIGINT
