"""Log-probability inputs above 0 are refused by name (with a rounding tolerance).

A probability or a logit passed where a log-probability is expected used to give a finite,
wrong loss. The check lives where each family's inputs are checked (the preference input
kinds, the policy rollouts), so every door of those families has it.
"""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss._checks import LOGPROB_TOLERANCE, require_log_probabilities

B, T = 3, 4


def _logps(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(B, T, generator=g, dtype=torch.float64) - 0.1


def _pairs(**override):
    mask = torch.ones(B, T, dtype=torch.bool)
    inputs = {
        "chosen_logps": _logps(0),
        "rejected_logps": _logps(1),
        "chosen_mask": mask,
        "rejected_mask": mask,
        "ref_chosen_logps": _logps(2),
        "ref_rejected_logps": _logps(3),
    }
    return {**inputs, **override}


def _rollouts(**override):
    inputs = {
        "logps": _logps(0),
        "old_logps": _logps(1),
        "ref_logps": _logps(2),
        "mask": torch.ones(B, T, dtype=torch.bool),
        "advantages": torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64),
    }
    return {**inputs, **override}


def _one_above(seed: int, by: float) -> torch.Tensor:
    values = _logps(seed)
    values[1, 2] = by
    return values


@pytest.mark.parametrize(
    "name", ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
)
def test_preference_log_probabilities_above_zero_are_refused(name):
    bad = _one_above(5, 0.3)
    message = rf"{name} must hold log-probabilities.*0\.3 at index \(1, 2\)"
    with pytest.raises(ValueError, match=message):
        lmloss.loss("dpo", **_pairs(**{name: bad}))


@pytest.mark.parametrize("objective", ["ce", "focal"])
def test_likelihood_log_probabilities_above_zero_are_refused_where_trained(objective):
    bad = _one_above(5, 0.3)
    with pytest.raises(ValueError, match=r"^logps must hold log-probabilities.*\(1, 2\)"):
        lmloss.loss(objective, logps=bad)
    mask = torch.ones_like(bad, dtype=torch.bool)
    mask[1, 2] = False  # padding may hold anything
    lmloss.loss(objective, logps=bad, mask=mask)


@pytest.mark.parametrize("name", ["logps", "old_logps", "ref_logps"])
def test_policy_log_probabilities_above_zero_are_refused(name):
    bad = _one_above(5, 0.3)
    with pytest.raises(ValueError, match=rf"^{name} must hold log-probabilities"):
        lmloss.loss("grpo", beta=0.04, **_rollouts(**{name: bad}))


def test_unpaired_inputs_and_the_fused_policy_door_share_the_check():
    mask = torch.ones(B, T, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^ref_logps must hold log-probabilities"):
        lmloss.loss(
            "kto",
            logps=_logps(0),
            mask=mask,
            ref_logps=_one_above(1, 2.0),
            desirable=torch.tensor([True, False, True]),
        )
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(B, T, 4, generator=g), torch.randn(7, 4, generator=g)
    with pytest.raises(ValueError, match=r"^old_logps must hold log-probabilities"):
        lmloss.fused_policy_loss(
            "grpo",
            hidden=hidden,
            weight=weight,
            targets=torch.randint(0, 7, (B, T), generator=g),
            old_logps=_one_above(1, 2.0).float(),
            advantages=torch.tensor([1.0, -1.0, 0.5]),
        )


def test_rounding_above_zero_and_padding_pass():
    """Values within the tolerance, and anything at masked positions, are accepted; the
    loss equals the loss with those values at 0 (so nothing is clamped)."""
    tiny = _logps(0)
    tiny[0, 0] = 0.9 * LOGPROB_TOLERANCE
    padded = tiny.clone()
    padded[2, 3] = 50.0  # padding: not a completion token
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 3] = False
    out = lmloss.loss("dpo", **_pairs(chosen_logps=padded, chosen_mask=mask))
    zeroed = tiny.clone()
    zeroed[2, 3] = 0.0
    same = lmloss.loss("dpo", **_pairs(chosen_logps=zeroed, chosen_mask=mask))
    torch.testing.assert_close(out.loss, same.loss, rtol=0, atol=0)
    lmloss.loss("grpo", **_rollouts(logps=tiny))


def test_a_summed_reference_may_gather_each_tokens_rounding():
    """A per-sequence reference ``[B]`` sums T tokens: T times the per-token tolerance."""
    summed = _logps(2).sum(-1)
    summed[0] = (T - 0.5) * LOGPROB_TOLERANCE
    lmloss.loss("dpo", **_pairs(ref_chosen_logps=summed))
    summed[0] = (T + 0.5) * LOGPROB_TOLERANCE
    with pytest.raises(ValueError, match=r"ref_chosen_logps .* at index \(0,\)"):
        lmloss.loss("dpo", **_pairs(ref_chosen_logps=summed))


def test_off_cpu_the_check_does_not_synchronize(monkeypatch):
    """On an accelerator the check is ``torch._assert_async`` (no host sync): its condition
    is False exactly when a value is above the tolerance. (Observed on a CPU tensor by
    pretending its device is not the CPU.)"""
    seen = []
    monkeypatch.setattr(torch, "_assert_async", lambda cond, msg: seen.append((bool(cond), msg)))

    class Elsewhere(torch.Tensor):
        @property
        def device(self):
            return torch.device("meta")

    good = _logps(0).as_subclass(Elsewhere)
    bad = _one_above(0, 1.0).as_subclass(Elsewhere)
    require_log_probabilities("x", good)
    require_log_probabilities("x", bad)
    assert [ok for ok, _ in seen] == [True, False]
    assert seen[1][1].startswith("x must hold log-probabilities")
