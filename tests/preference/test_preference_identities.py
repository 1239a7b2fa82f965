"""Degenerate identities of the catalog, and the options (WPO, LD-DPO, LCPO, HyPO)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from preference_testkit import COUPLED, HYPER, PAIRWISE, case, group

import lmloss


def dpo(kw, **hyper):
    return lmloss.preference_loss("dpo", **kw, **hyper)


def close(a, b):
    torch.testing.assert_close(a.per_example, b.per_example, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name,hyper",
    [
        ("rdpo", {"eps": 0.0}),
        ("cdpo", {"eps": 0.0}),
        ("dpo", {"divergence": "reverse_kl"}),
        ("rpo", {"nll_weight": 0.0}),
        ("rpo_liu", {"eta": 0.0}),
        ("rso_sigmoid", {}),
        ("tdpo1", {"alpha": 0.0}),
        ("tdpo2", {"alpha": 0.0}),
    ],
)
def test_reduces_to_dpo(name, hyper):
    kw = case(name, seed=11)
    out = lmloss.preference_loss(name, **kw, beta=0.3, **hyper)
    close(out, dpo(case("dpo", seed=11), beta=0.3))


def test_osp_strength_one_is_dpo():
    kw = case("osp", seed=2)
    kw["strength"] = torch.ones_like(kw["strength"])
    close(lmloss.preference_loss("osp", **kw), dpo(case("dpo", seed=2)))


def test_sparsepo_all_ones_is_tdpo1():
    kw = case("tdpo1", seed=4)
    ones = torch.ones_like(kw["chosen_logps"])
    masks = {
        f"{s}{w}": ones for s in ("chosen_", "rejected_") for w in ("reward_weights", "kl_weights")
    }
    close(
        lmloss.preference_loss("sparsepo", **kw, **masks),
        lmloss.preference_loss("tdpo1", **case("tdpo1", seed=4)),
    )


def test_aot_with_one_pair_is_dpo():
    kw = case("aot", batch=1, seed=6)
    close(lmloss.preference_loss("aot", **kw), dpo(case("dpo", batch=1, seed=6)))


def test_lipo_with_two_items_is_weighted_dpo():
    kw = case("lipo", list_size=2, seed=8)
    kw["scores"] = torch.tensor(
        [[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0]], dtype=torch.float64
    )
    out = lmloss.preference_loss("lipo", **kw, beta=0.2)
    pairs = {}
    for k in ("logps", "mask", "ref_logps"):
        first, second = kw[k][:, 0], kw[k][:, 1]
        better = (kw["scores"][:, 0] >= kw["scores"][:, 1])[:, None]
        pairs[k.replace("logps", "chosen_logps").replace("mask", "chosen_mask")] = torch.where(
            better, first, second
        )
        pairs[k.replace("logps", "rejected_logps").replace("mask", "rejected_mask")] = torch.where(
            better, second, first
        )
    base = dpo(pairs, beta=0.2).per_example
    gain = (2 ** kw["scores"][:, 0] - 2 ** kw["scores"][:, 1]).abs()
    weight = gain * (1 - 1 / torch.log2(torch.tensor(3.0, dtype=torch.float64)))
    torch.testing.assert_close(out.per_example, weight * base)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("name", PAIRWISE)
def test_ld_alpha_one_and_lcpo_zero_noise_are_the_base_loss(name):
    kw, hyper = case(name, seed=13), HYPER.get(name, {})
    base = lmloss.preference_loss(name, **kw, **hyper)
    close(lmloss.preference_loss(name, **case(name, seed=13), ld_alpha=1.0, **hyper), base)
    if name not in COUPLED:
        close(lmloss.lcpo(name, noise=0.0, **case(name, seed=13), **hyper), base)


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo"])
def test_ld_alpha_formula(name):
    kw = case(name, seed=14, length=8)
    alpha = 0.3
    out = lmloss.preference_loss(name, **kw, ld_alpha=alpha, beta=0.5)

    def weights(m, other):
        shared = torch.minimum(m.sum(-1), other.sum(-1))
        position = torch.cumsum(m.double(), -1)
        return m * torch.where(position <= shared[:, None], 1.0, alpha)

    mw, ml = kw["chosen_mask"], kw["rejected_mask"]
    ww, wl = weights(mw, ml), weights(ml, mw)
    lw, ll = (kw["chosen_logps"] * ww).sum(-1), (kw["rejected_logps"] * wl).sum(-1)
    rw, rl = (kw["ref_chosen_logps"] * ww).sum(-1), (kw["ref_rejected_logps"] * wl).sum(-1)
    nw, nl = mw.sum(-1), ml.sum(-1)
    want = {
        "dpo": lambda: -F.logsigmoid(0.5 * ((lw - rw) - (ll - rl))),
        "ipo": lambda: ((lw - rw) / nw - (ll - rl) / nl - 1.0) ** 2,
        "simpo": lambda: -F.logsigmoid(0.5 * lw / nw - 0.5 * ll / nl - 1.0),
    }[name]()
    torch.testing.assert_close(out.per_example, want)


def test_ld_alpha_zero_ignores_the_tail():
    kw = case("dpo", seed=15, length=8)
    longer = kw["chosen_mask"].sum(-1) > kw["rejected_mask"].sum(-1)
    base = dpo(kw, ld_alpha=0.0)
    # change a chosen token past the shared length: the loss must not move
    kw2 = case("dpo", seed=15, length=8)
    row = int(longer.nonzero()[0])
    last = int(kw2["chosen_mask"][row].nonzero().max())
    kw2["chosen_logps"][row, last] -= 5.0
    close(dpo(kw2, ld_alpha=0.0), base)


def test_wpo_weights():
    kw = case("dpo", seed=16)
    g = torch.Generator().manual_seed(1)
    for side in ("chosen_", "rejected_"):  # log Σ p² ≤ log p_max: any value in (−4, −0.05)
        kw[f"{side}sum_sq_probs"] = -0.05 - 4 * torch.rand(
            kw[f"{side}logps"].shape, generator=g, dtype=torch.float64
        )
    out = lmloss.preference_loss("dpo", **kw, wpo=True)

    def w(side):
        m = kw[f"{side}mask"].double()
        return torch.exp(((kw[f"{side}logps"] - kw[f"{side}sum_sq_probs"]) * m).sum(-1) / m.sum(-1))

    base = dpo(case("dpo", seed=16)).per_example
    torch.testing.assert_close(out.per_example, base * w("chosen_") * w("rejected_"))


def test_wpo_weights_carry_no_gradient():
    kw = case("dpo", seed=17)
    for side in ("chosen_", "rejected_"):
        kw[f"{side}sum_sq_probs"] = (kw[f"{side}logps"] - 0.3).requires_grad_()
        kw[f"{side}logps"].requires_grad_()
    lmloss.preference_loss("dpo", **kw, wpo=True).loss.backward()
    assert kw["chosen_sum_sq_probs"].grad is None
    assert kw["chosen_logps"].grad is not None


def test_lcpo_formula_and_gradient_direction():
    kw = case("ipo", seed=18)
    noise = 0.2
    kept = lmloss.preference_loss("ipo", **case("ipo", seed=18)).per_example
    swapped = case("ipo", seed=18)
    for a, b in (("chosen_logps", "rejected_logps"), ("chosen_mask", "rejected_mask")):
        swapped[a], swapped[b] = swapped[b], swapped[a]
    swapped["ref_chosen_logps"], swapped["ref_rejected_logps"] = (
        swapped["ref_rejected_logps"],
        swapped["ref_chosen_logps"],
    )
    flipped = lmloss.preference_loss("ipo", **swapped).per_example
    p = torch.exp(-kept) / (torch.exp(-kept) + torch.exp(-flipped))
    q = (1 - noise) * p / ((1 - noise) * p + noise * (1 - p))
    out = lmloss.lcpo("ipo", noise=noise, **kw)
    torch.testing.assert_close(out.per_example, q * kept + (1 - q) * flipped)
    torch.testing.assert_close(out.metrics["lcpo/label_confidence"], q.mean())


def test_hypo_term():
    kw = case("dpo", seed=19)
    g = torch.Generator().manual_seed(3)
    online = group("online_", (4, 2, 5), g, torch.float64)
    policy = online["online_logps"].clone().requires_grad_()
    online["online_logps"] = policy
    out = lmloss.preference_loss("dpo", **kw, hypo_weight=0.5, **online)
    m = online["online_mask"].double()
    k = ((policy - online["ref_online_logps"]) * m).sum(-1)  # [B, K]
    base = dpo(case("dpo", seed=19)).per_example
    torch.testing.assert_close(out.per_example, base + 0.5 * k.mean(1))
    out.loss.backward()
    # score-function gradient: d/dlogp_t of mean_b,k [0.5 * k_bk * logπ(y_bk)] / B
    want = 0.5 * (k.detach() / 2)[..., None] * m / 4
    torch.testing.assert_close(policy.grad, want)
    zero = lmloss.preference_loss(
        "dpo", **case("dpo", seed=19), hypo_weight=0.0, **group("online_", (4, 5), g, torch.float64)
    )
    close(zero, base_output := dpo(case("dpo", seed=19)))
    assert base_output.loss.item() == zero.loss.item()


@pytest.mark.parametrize("option", [{"wpo": True}, {"ld_alpha": 0.5}, {"hypo_weight": 0.1}])
def test_options_refuse_non_pairwise(option):
    with pytest.raises(ValueError, match="applies to pairwise objectives"):
        lmloss.preference_loss("npo", **case("npo"), **option)


@pytest.mark.parametrize("name", sorted(COUPLED))
def test_per_pair_options_refuse_sorted_objectives(name):
    with pytest.raises(ValueError, match="sorts the batch"):
        lmloss.lcpo(name, noise=0.1, **case(name))
    with pytest.raises(ValueError, match="sorts the batch"):
        lmloss.preference_loss(name, **case(name), wpo=True)


def test_tdpo2_stops_the_chosen_kl_gradient():
    for name, expect_grad in (("tdpo1", True), ("tdpo2", False)):
        kw = case(name, seed=20)
        kw["chosen_kl"].requires_grad_()
        kw["rejected_kl"].requires_grad_()
        lmloss.preference_loss(name, **kw).loss.backward()
        chosen_grad = kw["chosen_kl"].grad
        assert (chosen_grad is not None and bool(chosen_grad.abs().sum() > 0)) == expect_grad
        assert kw["rejected_kl"].grad.abs().sum() > 0


def test_summed_reference_is_used_as_given():
    kw = case("dpo", seed=21)
    summed = dict(kw)
    for side in ("chosen_", "rejected_"):
        summed[f"ref_{side}logps"] = (kw[f"ref_{side}logps"] * kw[f"{side}mask"]).sum(-1)
    close(dpo(summed), dpo(case("dpo", seed=21)))


def test_kto_reference_point_is_detached_and_clamped():
    kw = case("kto", seed=22)
    kw["kl_logps"] = kw["ref_kl_logps"] - 1.0  # negative KL estimate: z0 clamps to 0
    kw["kl_logps"].requires_grad_()
    kw["logps"].requires_grad_()
    out = lmloss.preference_loss("kto", **kw)
    assert out.metrics["kl"].item() == 0.0
    out.loss.backward()
    assert kw["kl_logps"].grad is None or kw["kl_logps"].grad.abs().sum() == 0


def test_masked_positions_are_ignored():
    kw = case("dpo", seed=23)
    noisy = case("dpo", seed=23)
    for side in ("chosen_", "rejected_"):
        outside = ~noisy[f"{side}mask"]
        noisy[f"{side}logps"] = noisy[f"{side}logps"].masked_fill(outside, 123.0)
        noisy[f"ref_{side}logps"] = noisy[f"ref_{side}logps"].masked_fill(outside, float("-inf"))
    close(dpo(noisy), dpo(kw))


def test_low_precision_inputs_accumulate_in_float32():
    kw = case("dpo", seed=24, dtype=torch.bfloat16)
    out = dpo(kw)
    assert out.loss.dtype == torch.float32
