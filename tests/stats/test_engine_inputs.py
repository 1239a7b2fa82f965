"""Bad input to the engine fails early with a message naming the argument."""

from __future__ import annotations

import pytest
import torch

import lmloss


@pytest.fixture
def ok():
    return torch.randn(4, 3), torch.randn(10, 3), torch.tensor([1, 2, -100, 9])


def test_three_dimensional_input(ok):
    _, w, _ = ok
    targets = torch.randint(0, 10, (2, 5))
    stats = lmloss.token_stats(torch.randn(2, 5, 3), w, targets)
    assert stats.logp.shape == (2, 5)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda h, w, y: (h, w[:, :2], y), ValueError, "weight must be"),
        (lambda h, w, y: (h, w, y[:3]), ValueError, "targets must have shape"),
        (
            lambda h, w, y: (h, w, torch.tensor([1, 2, 3, 10])),
            ValueError,
            r"targets must lie in \[0, 10\)",
        ),
        (lambda h, w, y: (h, w, torch.tensor([1, 2, 3, -1])), ValueError, "targets must lie"),
        (lambda h, w, y: (h.long(), w, y), TypeError, "hidden must be a floating-point"),
        (lambda h, w, y: (h, w.int(), y), TypeError, "weight must be a floating-point"),
        (lambda h, w, y: (h, w, y.float()), TypeError, "targets must be an integer"),
        (lambda h, w, y: (h, w.double(), y), TypeError, "weight dtype"),
        (lambda h, w, y: (h[:0], w, y[:0]), ValueError, "hidden is empty"),
        (lambda h, w, y: (h[0], w, y[0]), ValueError, "hidden must be 2-D or 3-D"),
        (lambda h, w, y: ([[1.0]], w, y), TypeError, "hidden must be a torch.Tensor"),
    ],
)
def test_bad_tensors(ok, change, error, match):
    h, w, y = change(*ok)
    with pytest.raises(error, match=match):
        lmloss.token_stats(h, w, y)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"softcap": 0.0}, "softcap must be > 0"),
        ({"want": ("logp", "entropyy")}, "did you mean 'entropy'"),
        ({"want": ()}, "want must name"),
        ({"bias": torch.zeros(9)}, "bias must have shape"),
        ({"memory_budget": -5}, "memory_budget must be > 0"),
    ],
)
def test_bad_options(ok, kwargs, match):
    h, w, y = ok
    with pytest.raises(ValueError, match=match):
        lmloss.token_stats(h, w, y, **kwargs)


def test_from_logits_checks_its_inputs():
    with pytest.raises(ValueError, match="targets must have shape"):
        lmloss.token_stats_from_logits(torch.randn(4, 10), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        lmloss.token_stats_from_logits(
            torch.randn(4, 10), torch.zeros(4, dtype=torch.long), temperature=0
        )


def test_memory_budget_environment_variable(ok, monkeypatch):
    h, w, y = ok
    monkeypatch.setenv("LMLOSS_MEMORY_BUDGET_MB", "lots")
    with pytest.raises(ValueError, match="LMLOSS_MEMORY_BUDGET_MB must be a number"):
        lmloss.token_stats(h, w, y)
    monkeypatch.setenv("LMLOSS_MEMORY_BUDGET_MB", "0.001")
    tiny = lmloss.token_stats(h, w, y)
    monkeypatch.delenv("LMLOSS_MEMORY_BUDGET_MB")
    torch.testing.assert_close(tiny.logp, lmloss.token_stats(h, w, y).logp)
