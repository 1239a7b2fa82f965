"""The ``lmloss`` command line: ``list``, ``describe``, ``demo``."""

from __future__ import annotations

import argparse
import json
import sys

from lmloss import registry
from lmloss.objectives.spec import FAMILIES


def _list(args: argparse.Namespace) -> int:
    for family in [args.family] if args.family else FAMILIES:
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
    info = registry.describe(args.name)
    formula = info.pop("formula")
    print(json.dumps(info, indent=2, default=repr))
    print()
    print(formula)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lmloss.demo import main as demo_main

    return demo_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmloss", description="LM post-training objectives.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every objective: family, paper, hyper-parameters")
    p.add_argument("--family", choices=FAMILIES)
    p.set_defaults(run=_list)
    p = sub.add_parser("describe", help="formula, paper and hyper-parameters of one objective")
    p.add_argument("name")
    p.set_defaults(run=_describe)
    p = sub.add_parser("demo", help="the engine on the bundled SmolLM2 model", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"lmloss: error: {error}", file=sys.stderr)
        return 2
