"""``docs/objectives.md``, written from the registry: the reference page of every objective.

Everything on the page is read from what the objectives declare: the spec (family, paper,
inputs, hyper-parameters and defaults, reference model, normalizer, TRL's name), the data
columns ``lmloss train`` reads (:func:`lmloss.train.formats.objective_columns`) and the
docstring: its text before ``Args:`` is the formula, and a paragraph that starts with
"Differs" or "Differences" is a declared difference from the authors.
``python -m lmloss.catalog > docs/objectives.md`` rewrites the page; a test keeps it current.
"""

from __future__ import annotations

import re

from lmloss import registry
from lmloss.train.formats import objective_columns

HEADER = """\
# Objectives

Every objective lmloss registers, by family. Generated from the registry by
`python -m lmloss.catalog > docs/objectives.md` (do not edit by hand; a test compares).
Call any of them with `lmloss.loss(name, **inputs)` (per-token statistics or logits) or
`lmloss.fused_loss(name, **inputs)` (hidden states and LM heads, no logits); `lmloss
describe NAME` prints the same facts.
"""

_SECTIONS = re.compile(r"^(Args|Returns|References|Example|Examples|Raises|Note):", re.M)


def _formula(docstring: str) -> str:
    """The docstring's text before its first section (``Args:``, ``Returns:`` ...)."""
    match = _SECTIONS.search(docstring)
    return (docstring[: match.start()] if match else docstring).strip()


def _differences(docstring: str) -> list[str]:
    paragraphs = (" ".join(p.split()) for p in docstring.split("\n\n"))
    return [p for p in paragraphs if p.startswith(("Differs", "Differences"))]


def _objective(name: str) -> str:
    entry = registry.get(name)
    spec = entry.spec

    def listed(values) -> str:
        return ", ".join(f"`{v}`" for v in values) or "-"

    lines = [
        f"### `{name}`",
        "",
        f"{spec.paper}",
        "",
        f"- inputs: {listed(spec.inputs)}; optional: {listed(spec.optional_inputs)}",
        f"- data columns (`lmloss train`): {objective_columns(entry)}",
        f"- reference model: {spec.reference}; normalizer: {spec.normalizer}"
        + (" (batch-coupled)" if spec.batch_coupled else ""),
        f"- TRL: {f'`{spec.trl}`' if spec.trl else '-'}",
    ]
    if spec.aliases:
        lines.append(f"- aliases: {listed(spec.aliases)}")
    hyper = ", ".join(f"`{k}={v!r}`" for k, v in spec.hyper) or "none"
    lines.append(f"- hyper-parameters (defaults): {hyper}")
    lines += [f"- differs from the authors: {text}" for text in _differences(entry.formula)]
    lines += ["", "```text", _formula(entry.formula), "```", ""]
    return "\n".join(lines)


def objectives_markdown() -> str:
    """The whole page."""
    parts = [HEADER]
    for family in registry.families():
        names = registry.list_objectives(family)
        parts.append(f"## {family}\n\n" + " · ".join(f"[`{n}`](#{n})" for n in names) + "\n")
        parts += [_objective(name) for name in names]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(objectives_markdown(), end="")
