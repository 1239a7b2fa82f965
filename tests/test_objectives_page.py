"""docs/objectives.md is the registry, written out: regenerate it when an objective changes
(``python -m lmloss.catalog > docs/objectives.md``)."""

from __future__ import annotations

from pathlib import Path

import lmloss
from lmloss.catalog import objectives_markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "objectives.md"


def test_the_page_is_current():
    assert PAGE.read_text() == objectives_markdown(), (
        "docs/objectives.md is stale: python -m lmloss.catalog > docs/objectives.md"
    )


def test_every_objective_has_its_facts():
    page = objectives_markdown()
    for name in lmloss.list_objectives():
        section = page.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        spec = lmloss.spec(name)
        assert spec.paper in section and f"reference model: {spec.reference}" in section
        for key, default in spec.hyper:
            assert f"`{key}={default!r}`" in section
    dpo = page.split("### `dpo`\n", 1)[1].split("\n### ", 1)[0]
    assert 'TRL: `DPOTrainer(loss_type="sigmoid")`' in dpo
    assert "prompt + chosen + rejected" in dpo  # the data columns lmloss train reads
    sppo = page.split("### `sppo_hard`\n", 1)[1].split("\n### ", 1)[0]
    assert "differs from the authors: Differs from the authors' code" in sppo
