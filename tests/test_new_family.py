"""A new family is one package plus its declaration: measured by adding one.

The test writes a single file, ``lmloss/objectives/toy/__init__.py`` (in a temporary
directory added to the objectives' package path): a ``Family`` declaration, one objective
and the family's door. Nothing else in lmloss is edited, and ``lmloss.loss``, the registry,
``lmloss.spec``, ``lmloss list`` and the one argument check all know the family.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

import lmloss
import lmloss.objectives
from lmloss import registry

TOY_PACKAGE = '''
"""A toy family: squared error of scores, to show what a family declares."""

from lmloss.objectives.binding import bind
from lmloss.objectives.signatures import positional
from lmloss.objectives.spec import Family, objective
from lmloss.output import LossOutput
from lmloss import registry


@objective("toy_mse", family="toy", paper="a test", aliases=("toy_l2",))
def toy_mse(scores, targets, *, scale=1.0):
    """scale · (scores − targets)²."""
    return scale * (scores - targets) ** 2


def toy_loss(name, **arguments):
    entry = registry.get(name, family="toy")
    inputs, hyper = bind(entry.spec, arguments)
    per_example = entry(inputs["scores"], inputs["targets"], **hyper)
    return LossOutput(loss=per_example.mean(), per_example=per_example)


def _read_signature(spec, fn, extra):
    return {
        "kind": "scores",
        "inputs": positional(fn, with_default=False),
        "optional_inputs": (),
        "normalizer": "example",
    }


FAMILY = Family(
    name="toy", read_signature=_read_signature, plain="lmloss.objectives.toy:toy_loss"
)
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(TOY_PACKAGE))
    monkeypatch.setattr(lmloss.objectives, "__path__", [*lmloss.objectives.__path__, str(tmp_path)])
    registry._families.cache_clear()
    registry._table.cache_clear()
    yield list(tmp_path.rglob("*.py"))
    monkeypatch.undo()
    registry._families.cache_clear()
    registry._table.cache_clear()


def test_a_new_family_is_one_package(toy_family):
    assert [p.name for p in toy_family] == ["__init__.py"]  # the one file written
    assert "toy" in registry.families()
    assert lmloss.list_objectives("toy") == ["toy_mse"]
    spec = lmloss.spec("toy_l2")
    assert (spec.family, spec.inputs, spec.hyper_defaults) == (
        "toy",
        ("scores", "targets"),
        {"scale": 1.0},
    )
    scores, targets = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 2.0, 1.0])
    out = lmloss.loss("toy_mse", scores=scores, targets=targets, scale=0.5)
    torch.testing.assert_close(out.loss, (0.5 * (scores - targets) ** 2).mean())
    with pytest.raises(TypeError, match=r"toy objective 'toy_mse'.*'scal' \(did you mean 'scale'"):
        lmloss.loss("toy_mse", scores=scores, targets=targets, scal=2.0)
    with pytest.raises(ValueError, match="no fused form"):
        lmloss.fused_loss("toy_mse", scores=scores, targets=targets)


def test_an_objective_of_an_undeclared_family_is_refused(tmp_path, monkeypatch, toy_family):
    package = tmp_path / "stray"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from lmloss.objectives.spec import objective\n"
        "@objective('stray', family='nowhere', paper='-')\n"
        "def stray(x):\n    return x\n"
    )
    registry._table.cache_clear()
    with pytest.raises(ValueError, match="unknown family 'nowhere'"):
        registry.list_objectives()
