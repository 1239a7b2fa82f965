"""Where an objective differs from its authors' code, the authors' form is an option: each
option here is checked against the authors' formula written out plainly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import lmloss
from preference.preference_testkit import case

G = torch.Generator().manual_seed(7)


def _sum(kw, key, prefix):
    return (kw[f"{prefix}{key}"] * kw[f"{prefix}mask"]).sum(-1)


def _logratios(kw):
    """log π_θ(y)/π_ref(y) of the chosen and the rejected completions (token sums)."""
    out = []
    for p in ("chosen_", "rejected_"):
        ref = kw[f"ref_{p}logps"]
        ref_sum = ref if ref.dim() == 1 else (ref * kw[f"{p}mask"]).sum(-1)
        out.append(_sum(kw, "logps", p) - ref_sum)
    return out


def test_sppo_hard_authors_form_averages_the_two_squares():
    kw, beta = case("sppo_hard", seed=5), 0.2
    chosen, rejected = _logratios(kw)
    # uclaml/SPPO with hard win probabilities 1 and 0: ((Δ_w − 1/2β)² + (Δ_l + 1/2β)²) / 2
    authors = (((chosen - 0.5 / beta) ** 2 + (rejected + 0.5 / beta) ** 2) / 2).mean()
    ours = lmloss.preference_loss("sppo_hard", **kw, beta=beta).loss
    halved = lmloss.preference_loss("sppo_hard", **kw, beta=beta, average_sides=True).loss
    torch.testing.assert_close(halved, authors)
    torch.testing.assert_close(ours, 2 * authors)


def test_wpo_clamp_is_the_authors_capped_pair_weight():
    kw, beta = case("dpo", seed=6), 0.1
    for p in ("chosen_", "rejected_"):
        # log Σ_v p_v² ≤ 0; small values make some pair weights exceed 1, so the cap bites
        kw[f"{p}sum_sq_probs"] = -6.0 * torch.rand(kw[f"{p}logps"].shape, generator=G).double()
    chosen, rejected = _logratios(kw)
    dpo = -F.logsigmoid(beta * (chosen - rejected))

    def mean_aligned(p):
        aligned = kw[f"{p}logps"] - kw[f"{p}sum_sq_probs"]
        return (aligned * kw[f"{p}mask"]).sum(-1) / kw[f"{p}mask"].sum(-1)

    # wzhouad/WPO: weight = clamp(exp(mean_w + mean_l), max=1), loss = mean(weight · dpo)
    raw = torch.exp(mean_aligned("chosen_") + mean_aligned("rejected_"))
    assert bool((raw > 1).any()) and bool((raw < 1).any())
    authors = (raw.clamp(max=1) * dpo).mean()
    clamped = lmloss.preference_loss("dpo", **kw, beta=beta, wpo=True, wpo_clamp=True).loss
    unclamped = lmloss.preference_loss("dpo", **kw, beta=beta, wpo=True).loss
    torch.testing.assert_close(clamped, authors)
    torch.testing.assert_close(unclamped, (raw * dpo).mean())


def test_rpo_liu_sft_term_sums_by_default_and_averages_on_request():
    kw, beta, eta = case("rpo_liu", seed=8), 0.1, 0.7
    chosen, rejected = _logratios(kw)
    dpo = -F.logsigmoid(beta * (chosen - rejected))
    summed = _sum(kw, "logps", "chosen_")
    mean = summed / kw["chosen_mask"].sum(-1)
    plain = lmloss.preference_loss("rpo_liu", **kw, beta=beta, eta=eta).loss
    averaged = lmloss.preference_loss("rpo_liu", **kw, beta=beta, eta=eta, sft_mean=True).loss
    torch.testing.assert_close(plain, (dpo - eta * beta * summed).mean())
    torch.testing.assert_close(averaged, (dpo - eta * beta * mean).mean())


def test_gtpo_group_sum_is_the_authors_sum_over_a_group():
    group, rows, steps = 4, 8, 5
    logps = -torch.rand(rows, steps, generator=G, dtype=torch.float64)
    kw = {
        "logps": logps,
        "mask": torch.ones(rows, steps),
        "advantages": torch.randn(rows, generator=G, dtype=torch.float64),
        "entropy": 0.5 * torch.rand(rows, steps, generator=G, dtype=torch.float64),
        "token_ids": torch.randint(0, 3, (rows, steps), generator=G),
        "group_size": group,
    }
    mean = lmloss.policy_loss("gtpo", **kw)
    summed = lmloss.policy_loss("gtpo", **kw, group_sum=True)
    torch.testing.assert_close(summed.loss, group * mean.loss)
    torch.testing.assert_close(summed.per_example, group * mean.per_example)


def test_differences_from_the_authors_are_declared():
    for name in ("sppo_hard", "gtpo", "dco"):
        assert (
            "Differs from" in lmloss.describe(name)["formula"]
            or "Differences to" in (lmloss.describe(name)["formula"])
        )
    for name in ("bdkd", "osp", "sparsepo"):
        assert "lmloss's own reading" in lmloss.describe(name)["formula"]
