"""Each preference objective against its formula, written out here independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from preference_testkit import ALL, HYPER, LISTS, NEGATIVES, UNPAIRED, case

import lmloss

ls = F.logsigmoid


def msum(x, m):
    return (x * m.to(x.dtype)).sum(-1)


def length(m):
    return m.to(torch.float64).sum(-1)


def pair_terms(kw):
    """Summed policy/ref log-probs, lengths and log-ratios of both sides."""
    t = {}
    for side, key in (("w", "chosen_"), ("l", "rejected_")):
        m = kw[f"{key}mask"]
        t[f"lp_{side}"] = msum(kw[f"{key}logps"], m)
        t[f"ref_{side}"] = msum(kw[f"ref_{key}logps"], m)
        t[f"n_{side}"] = length(m)
        t[f"d_{side}"] = t[f"lp_{side}"] - t[f"ref_{side}"]
    return t


def soft(x, p):
    return -p * ls(x) - (1 - p) * ls(-x)


def expected_pairwise(name, kw, beta, h):
    t = pair_terms(kw)
    dw, dl, x = t["d_w"], t["d_l"], beta * (t["d_w"] - t["d_l"])
    nw, nl = t["n_w"], t["n_l"]
    if name in ("dpo", "rso_sigmoid"):
        return -ls(x)
    if name == "cdpo":
        return soft(x, 1 - h["eps"])
    if name == "rdpo":
        e = h["eps"]
        return ((1 - e) * -ls(x) - e * -ls(-x)) / (1 - 2 * e)
    if name == "ipo":
        return (dw / nw - dl / nl - 1 / (2 * beta)) ** 2
    if name in ("hinge", "rso_hinge"):
        return torch.clamp(1 - x, min=0)
    if name == "rpo":
        return -ls(x) + h["nll_weight"] * -t["lp_w"] / nw
    if name == "rpo_liu":
        return -ls(x) - h["eta"] * beta * t["lp_w"]
    if name == "exo":
        e = h["eps"]
        return torch.sigmoid(x) * (ls(x) - math.log(1 - e)) + torch.sigmoid(-x) * (
            ls(-x) - math.log(e)
        )
    if name == "discopop":
        m = torch.sigmoid(x / h["tau"])
        return -ls(x) * (1 - m) + torch.exp(-x) * m
    if name == "ln_dpo":
        return -ls(beta * (dw / nw - dl / nl))
    if name == "osp":
        return soft(x, kw["strength"])
    if name == "nca":
        return -ls(beta * dw) - 0.5 * ls(-beta * dw) - 0.5 * ls(-beta * dl)
    if name == "bco":
        return -ls(beta * dw) - ls(-beta * dl)
    if name == "apo_zero":
        return 1 - torch.sigmoid(beta * dw) + torch.sigmoid(beta * dl)
    if name == "apo_down":
        return torch.sigmoid(beta * dw) + 1 - torch.sigmoid(beta * (dw - dl))
    if name == "sppo_hard":
        return (dw - 1 / (2 * beta)) ** 2 + (dl + 1 / (2 * beta)) ** 2
    if name == "aot":
        delta = (
            torch.sort(t["lp_w"] - t["lp_l"]).values - torch.sort(t["ref_w"] - t["ref_l"]).values
        )
        return soft(beta * delta, 1 - h["eps"])
    if name == "aot_unpaired":
        delta = torch.sort(dw).values - torch.sort(dl).values
        return soft(beta * delta, 1 - h["eps"])
    if name in ("tdpo1", "tdpo2", "sparsepo"):
        return expected_token_level(name, kw, beta, h)
    if name == "simpo":
        return -ls(beta * t["lp_w"] / nw - beta * t["lp_l"] / nl - h["gamma"])
    if name == "cpo":
        return -ls(beta * (t["lp_w"] - t["lp_l"])) + h["nll_weight"] * -t["lp_w"] / nw
    if name == "orpo":

        def log_odds(avg):
            p = torch.exp(avg)
            return torch.log(p / (1 - p))

        ratio = log_odds(t["lp_w"] / nw) - log_odds(t["lp_l"] / nl)
        return -t["lp_w"] / nw - h["lam"] * ls(ratio)
    raise AssertionError(name)


def expected_token_level(name, kw, beta, h):
    alpha = {"tdpo1": 1.0, "tdpo2": h.get("alpha", 0.5), "sparsepo": h.get("alpha", 1.0)}[name]
    parts = {}
    for side, key in (("w", "chosen_"), ("l", "rejected_")):
        m = kw[f"{key}mask"]
        ratio = kw[f"{key}logps"] - kw[f"ref_{key}logps"]
        reward_w = kw.get(f"{key}reward_weights", torch.ones_like(ratio))
        kl_w = kw.get(f"{key}kl_weights", torch.ones_like(ratio))
        parts[f"r_{side}"] = msum(reward_w * ratio, m)
        parts[f"kl_{side}"] = msum(kl_w * kw[f"{key}kl"], m)
    inner = parts["r_w"] - parts["r_l"] - alpha * (parts["kl_l"] - parts["kl_w"])
    return -ls(beta * inner)


def expected_unpaired(name, kw, beta, h):
    d = msum(kw["logps"], kw["mask"]) - msum(kw["ref_logps"], kw["mask"])
    good = kw["desirable"]
    if name == "apo_zero_unpaired":
        return torch.where(
            good,
            h["desirable_weight"] * (1 - torch.sigmoid(beta * d)),
            h["undesirable_weight"] * torch.sigmoid(beta * d),
        )
    kl = msum(kw["kl_logps"], kw["kl_mask"]) - msum(kw["ref_kl_logps"], kw["kl_mask"])
    z0 = torch.clamp(kl.mean(), min=0)
    return torch.where(
        good,
        h["desirable_weight"] * (1 - torch.sigmoid(beta * (d - z0))),
        h["undesirable_weight"] * (1 - torch.sigmoid(beta * (z0 - d))),
    )


def expected_negatives(name, kw, beta, h):
    d = msum(kw["logps"], kw["mask"]) - msum(kw["ref_logps"], kw["mask"])
    if name == "npo":
        return 2 / beta * torch.log1p(torch.exp(beta * d))
    samples = msum(kw["sample_logps"], kw["sample_mask"]) - msum(
        kw["ref_sample_logps"], kw["sample_mask"]
    )
    k = samples.shape[1]
    return -ls(beta / k * samples.sum(1) - h["alpha"] * d)


def expected_lipo(kw, beta):
    s = beta * (msum(kw["logps"], kw["mask"]) - msum(kw["ref_logps"], kw["mask"]))
    psi = kw["scores"]
    out = []
    for b in range(s.shape[0]):
        order = sorted(range(s.shape[1]), key=lambda i: -s[b, i].item())
        rank = {item: position + 1 for position, item in enumerate(order)}
        total = s.new_zeros(())
        for i in range(s.shape[1]):
            for j in range(s.shape[1]):
                if psi[b, i] > psi[b, j]:
                    gain = abs((2 ** psi[b, i] - 1) - (2 ** psi[b, j] - 1))
                    disc = abs(1 / math.log2(1 + rank[i]) - 1 / math.log2(1 + rank[j]))
                    total = total + gain * disc * torch.log1p(torch.exp(-(s[b, i] - s[b, j])))
        out.append(total)
    return torch.stack(out)


def expected(name, kw, h):
    beta = h.get("beta", lmloss.describe(name)["hyper"].get("beta", 1.0))
    if name in UNPAIRED:
        return expected_unpaired(name, kw, beta, h)
    if name in NEGATIVES:
        return expected_negatives(name, kw, beta, h)
    if name in LISTS:
        return expected_lipo(kw, beta)
    return expected_pairwise(name, kw, beta, h)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("beta", [None, 0.7])
def test_matches_formula(name, beta):
    kw = case(name, seed=sum(map(ord, name)))
    hyper = dict(HYPER.get(name, {}))
    if beta is not None and "beta" in lmloss.describe(name)["hyper"]:
        hyper["beta"] = beta
    out = lmloss.preference_loss(name, **kw, **hyper)
    want = expected(name, kw, hyper)
    torch.testing.assert_close(out.per_example, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss, want.mean(), rtol=1e-10, atol=1e-12)
    assert all(not v.requires_grad and v.dim() == 0 for v in out.metrics.values())


def test_every_objective_is_tested():
    names = set(lmloss.list_objectives(family="preference"))
    required = {"dpo", "cdpo", "rdpo", "ipo", "hinge", "rso_sigmoid", "rso_hinge", "rpo", "tdpo1"}
    required |= {"tdpo2", "sparsepo", "simpo", "cpo", "orpo", "kto", "bco", "nca", "apo_zero"}
    required |= {"apo_down", "sppo_hard", "aot", "aot_unpaired", "discopop", "exo", "ln_dpo"}
    required |= {"d2o", "npo", "lipo", "osp"}
    assert required <= names
    assert all(
        lmloss.describe(n)["family"] == "preference" and lmloss.describe(n)["paper"] for n in names
    )


def test_dpo_metrics():
    kw = case("dpo")
    out = lmloss.preference_loss("dpo", **kw, beta=0.5)
    t = pair_terms(kw)
    rw, rl = 0.5 * t["d_w"], 0.5 * t["d_l"]
    torch.testing.assert_close(out.metrics["rewards/chosen"], rw.mean())
    torch.testing.assert_close(out.metrics["rewards/margins"], (rw - rl).mean())
    torch.testing.assert_close(out.metrics["rewards/accuracies"], (rw > rl).double().mean())
    torch.testing.assert_close(out.metrics["logps/rejected"], t["lp_l"].mean())


# --------------------------------------------------------------------------- f-DPO


def f_prime(divergence, logratio, alpha):
    # the additive constants of TRL's forms (log u, not log u + 1; 1 − 1/u, not −1/u) cancel
    # in h except for per-token-averaged objectives (IPO, LN-DPO), so they are part of the spec
    u = torch.exp(logratio)
    return {
        "reverse_kl": torch.log(u),
        "forward_kl": 1 - 1 / u,
        "js": torch.log(2 * u / (1 + u)),
        "alpha": (1 - u ** (-alpha)) / alpha,
    }[divergence]


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js", "alpha"])
@pytest.mark.parametrize("name", ["dpo", "hinge", "ipo", "rdpo", "discopop"])
def test_f_divergence_margin(name, divergence):
    """Every margin objective with divergence= is the same formula on h = f′(u_w) − f′(u_l)."""
    kw = case(name, seed=3)
    t = pair_terms(kw)
    alpha, beta = 0.3, 0.4
    hw, hl = f_prime(divergence, t["d_w"], alpha), f_prime(divergence, t["d_l"], alpha)
    if name == "ipo":  # IPO averages the scores per token
        hw, hl = hw / t["n_w"], hl / t["n_l"]
    x = beta * (hw - hl)
    hyper = dict(HYPER.get(name, {}), beta=beta)
    want = {
        "dpo": lambda: -ls(x),
        "hinge": lambda: torch.clamp(1 - x, min=0),
        "ipo": lambda: (hw - hl - 1 / (2 * beta)) ** 2,
        "rdpo": lambda: ((1 - 0.2) * -ls(x) - 0.2 * -ls(-x)) / 0.6,
        "discopop": lambda: (
            -ls(x) * (1 - torch.sigmoid(x / 0.3)) + torch.exp(-x) * torch.sigmoid(x / 0.3)
        ),
    }[name]()
    out = lmloss.preference_loss(name, **kw, **hyper, divergence=divergence, alpha=alpha)
    torch.testing.assert_close(out.per_example, want)


@pytest.mark.parametrize("name", ["cdpo", "rpo", "rpo_liu", "osp", "exo", "ln_dpo", "lipo"])
def test_divergence_accepted_by_every_margin_objective(name):
    kw = case(name, seed=5)
    reverse = lmloss.preference_loss(name, **kw, divergence="reverse_kl")
    js = lmloss.preference_loss(name, **case(name, seed=5), divergence="js")
    assert not torch.allclose(reverse.per_example, js.per_example)


def test_alpha_divergence_limits():
    kw = case("dpo", seed=7)
    dpo = lmloss.preference_loss("dpo", **kw).per_example
    near_zero = lmloss.preference_loss("dpo", **kw, divergence="alpha", alpha=1e-7).per_example
    forward = lmloss.preference_loss("dpo", **kw, divergence="forward_kl").per_example
    near_one = lmloss.preference_loss("dpo", **kw, divergence="alpha", alpha=1 - 1e-7).per_example
    torch.testing.assert_close(near_zero, dpo, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(near_one, forward, rtol=1e-5, atol=1e-6)


def test_forward_kl_stays_finite_for_huge_log_ratios():
    kw = case("dpo", seed=1)
    kw["chosen_logps"] = kw["chosen_logps"] - 500.0  # log u ≈ −3000 per sequence
    out = lmloss.preference_loss("dpo", **kw, divergence="forward_kl")
    assert torch.isfinite(out.loss)
