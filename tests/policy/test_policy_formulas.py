"""Each policy objective against a plain formula written here (float64, values and grads)."""

from __future__ import annotations

import math

import pytest
import torch
from policy_testkit import GROUP, POLICY_NAMES, extra_inputs, make_case

import lmloss
from lmloss.policy import dynamic_sampling_mask, kl_in_reward

# ---------------------------------------------------------------- plain references


def rows(mask):
    return [mask[i].bool() for i in range(mask.shape[0])]


def reduce_ref(per_token, mask, how, num_items=None, max_tokens=None):
    """Explicit per-sequence loops."""
    per_seq = []
    for i, m in enumerate(rows(mask)):
        values = per_token[i][m]
        total = values.sum()
        if how == "seq_mean_token_mean":
            per_seq.append(total / max(int(m.sum()), 1))
        elif how in ("seq_mean_token_sum", "token_sum_norm"):
            per_seq.append(
                total / (max_tokens or mask.shape[1]) if how == "token_sum_norm" else total
            )
        else:
            per_seq.append(total)
    per_seq = torch.stack(per_seq)
    if how == "token_mean":
        return per_seq.sum() / (num_items or max(int(mask.sum()), 1))
    return per_seq.mean()


def ppo_token(ratio, adv, lo, hi, dual=None):
    out = -torch.min(ratio * adv, torch.clamp(ratio, 1 - lo, 1 + hi) * adv)
    if dual is not None:
        out = torch.where(adv < 0, torch.min(out, -dual * adv), out)
    return out


def seq_log_ratio(c, how):
    lr = (c.logps - c.old_logps) * c.mask
    total = lr.sum(1, keepdim=True)
    return total / c.mask.sum(1, keepdim=True) if how == "mean" else total


CLIP_FAMILY = {
    # name: (ratio kind, eps_low, eps_high, dual clip, aggregation)
    "ppo": ("token", 0.2, 0.2, None, "token_mean"),
    "grpo": ("token", 0.2, 0.2, None, "seq_mean_token_mean"),
    "dr_grpo": ("token", 0.2, 0.2, None, "token_sum_norm"),
    "dapo": ("token", 0.2, 0.28, None, "token_mean"),
    "bnpo": ("token", 0.2, 0.28, 10.0, "seq_mean_token_sum"),
    "gspo": ("mean", 3e-4, 4e-4, None, "seq_mean_token_mean"),
    "luspo": ("mean", 3e-4, 4e-4, None, "seq_mean_token_sum"),
    "rloo": ("sum", 0.2, 0.2, None, "seq_mean_token_mean"),
}


def ref_clip_family(name, c):
    kind, lo, hi, dual, agg = CLIP_FAMILY[name]
    lr = c.logps - c.old_logps if kind == "token" else seq_log_ratio(c, kind)
    ratio = torch.exp(lr).expand_as(c.logps)
    per_token = ppo_token(ratio, c.advantages[:, None], lo, hi, dual)
    return reduce_ref(per_token, c.mask, agg)


def ref_cispo(c):
    ratio = torch.exp(c.logps - c.old_logps)
    weight = torch.clamp(ratio, max=5.0).detach()
    return reduce_ref(-weight * c.advantages[:, None] * c.logps, c.mask, "token_mean")


def ref_sapo(c):
    ratio = torch.exp(c.logps - c.old_logps)
    adv = c.advantages[:, None].expand_as(ratio)
    tau = torch.where(
        adv > 0, torch.tensor(1.0, dtype=adv.dtype), torch.tensor(1.05, dtype=adv.dtype)
    )
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    return reduce_ref(-gate * adv, c.mask, "seq_mean_token_mean")


def ref_vespo(c):
    log_w = seq_log_ratio(c, "sum").detach()
    w = torch.exp(log_w)
    adv = c.advantages[:, None]
    f64 = {"dtype": torch.float64}
    k = torch.where(adv >= 0, torch.tensor(2.0, **f64), torch.tensor(3.0, **f64))
    lam = torch.where(adv >= 0, torch.tensor(3.0, **f64), torch.tensor(2.0, **f64))
    phi = math.e**lam * w**k * torch.exp(-lam * w)
    return reduce_ref(-phi * adv * c.logps, c.mask, "token_mean")


def ref_gtpo(c):
    B, T = c.logps.shape
    adv = c.advantages
    weight = torch.ones(B, T, dtype=c.logps.dtype)
    for i in range(B):
        group = range(i - i % GROUP, i - i % GROUP + GROUP)
        for t in range(T):
            if not c.mask[i, t]:
                continue
            same = [j for j in group if c.mask[j, t] and c.token_ids[j, t] == c.token_ids[i, t]]
            if any(adv[j] > 0 for j in same) and any(adv[j] < 0 for j in same):
                weight[i, t] = 2.0 if adv[i] > 0 else (0.0 if adv[i] < 0 else 1.0)
    mean_h = (c.entropy * c.mask).sum(1) / c.mask.sum(1)
    shifted = torch.where(mean_h <= 0.7, adv - 0.1 * mean_h, torch.zeros_like(adv))
    ratio = torch.exp(c.logps - c.old_logps)
    return reduce_ref(
        ppo_token(ratio, weight * shifted[:, None], 0.2, 0.2), c.mask, "seq_mean_token_mean"
    )


def covariance(c):
    m = c.mask.bool()
    a = c.advantages[:, None].expand_as(c.logps).detach()
    lp = c.logps.detach()
    return (a - a[m].mean()) * (lp - lp[m].mean())


def ref_clip_cov(c):
    # clip_fraction = 1: every token in the covariance window (1, 5) not clipped by PPO
    ratio = torch.exp(c.logps - c.old_logps)
    adv = c.advantages[:, None].expand_as(ratio)
    per_token = ppo_token(ratio, adv, 0.2, 0.2)
    cov = covariance(c)
    clipped = (torch.clamp(ratio, 0.8, 1.2) * adv < ratio * adv).detach()
    drop = c.mask.bool() & ~clipped & (cov > 1) & (cov < 5)
    return reduce_ref(torch.where(drop, 0.0, per_token), c.mask, "token_mean")


def ref_kl_cov(c, fraction=0.2):
    lr = c.logps - c.old_logps
    adv = c.advantages[:, None]
    cov = covariance(c)
    valid = cov[c.mask.bool()]
    k = max(1, int(fraction * valid.numel()))
    threshold = valid.sort(descending=True).values[k - 1]
    top = c.mask.bool() & (cov >= threshold)
    per_token = -torch.exp(lr) * adv + torch.where(top, lr.abs(), 0.0)
    return reduce_ref(per_token, c.mask, "token_mean")


def ref_steer(c):
    x = c.logps.detach().exp()
    omega = (c.advantages[:, None] / c.old_logps.exp()) * x * (1 - x) * (x.log() + c.entropy)
    omega = omega.abs()
    m = c.mask.bool()
    lo, hi = omega[m].min(), omega[m].max()
    w = 1.2 - (omega - lo) * 0.4 / (hi - lo)
    ratio = torch.exp(c.logps - c.old_logps)
    per_token = ppo_token(ratio, c.advantages[:, None].expand_as(ratio), 0.2, 0.2, dual=3.0)
    return reduce_ref(w * per_token, c.mask, "token_mean")


def ref_lp_reg(c, fraction=0.3):
    ratio = torch.exp(c.logps - c.old_logps)
    adv = c.advantages[:, None].expand_as(ratio)
    per_token = ppo_token(ratio, adv, 0.2, 0.2)
    negative = c.mask.bool() & (adv < 0)
    values = c.logps.detach()[negative]
    k = max(1, int(fraction * values.numel()))
    cutoff = values.sort().values[k - 1]
    chosen = negative & (c.logps.detach() <= cutoff) & (c.logps.detach() < c.proxy_logps)
    d = c.proxy_logps - c.logps
    kl = torch.clamp(torch.exp(d) - d - 1, max=10)
    regularized = -ratio * adv + kl
    return reduce_ref(torch.where(chosen, regularized, per_token), c.mask, "token_mean")


REFERENCES = {name: (lambda c, n=name: ref_clip_family(n, c)) for name in CLIP_FAMILY}
REFERENCES.update(
    cispo=ref_cispo,
    sapo=ref_sapo,
    vespo=ref_vespo,
    gtpo=ref_gtpo,
    clip_cov=ref_clip_cov,
    kl_cov=ref_kl_cov,
    steer=ref_steer,
    lp_reg=ref_lp_reg,
)


def test_every_policy_objective_has_a_reference():
    assert set(REFERENCES) == set(POLICY_NAMES)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_objective_matches_plain_formula(name):
    c = make_case(seed=1)
    extra = extra_inputs(name, c)
    if name == "clip_cov":
        extra["clip_fraction"] = 1.0
    out = lmloss.policy_loss(
        name,
        logps=c.logps,
        old_logps=c.old_logps,
        mask=c.mask,
        advantages=c.advantages,
        entropy=c.entropy,
        **extra,
    )
    (grad,) = torch.autograd.grad(out.loss, c.logps)
    expected = REFERENCES[name](c)
    (expected_grad,) = torch.autograd.grad(expected, c.logps)
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.per_example.mean(), out.loss)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs", "low_var_kl", "k1+", "k3+"])
def test_kl_estimators(estimator):
    c = make_case(seed=2, spread=2.0)
    d = c.logps - c.ref_logps
    formulas = {
        "k1": d,
        "k2": d**2 / 2,
        "k3": torch.exp(-d) + d - 1,
        "abs": d.abs(),
        "low_var_kl": torch.clamp(torch.exp(-d) + d - 1, max=10),
        "k1+": d,
        "k3+": torch.exp(-d) + d - 1,
    }
    got = lmloss.kl_estimate(estimator, c.logps, c.ref_logps, c.mask)
    torch.testing.assert_close(got, formulas[estimator] * c.mask)
    (grad,) = torch.autograd.grad(got.sum(), c.logps)
    grad_source = (d**2 / 2) if estimator.endswith("+") else formulas[estimator]
    (expected,) = torch.autograd.grad((grad_source * c.mask).sum(), c.logps)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_in_the_loss(estimator):
    c = make_case(seed=3)
    beta = 0.04
    out = lmloss.policy_loss(
        "grpo",
        logps=c.logps,
        mask=c.mask,
        advantages=c.advantages,
        ref_logps=c.ref_logps,
        beta=beta,
        kl_estimator=estimator,
    )
    d = c.logps - c.ref_logps
    kl = d if estimator == "k1" else torch.exp(-d) + d - 1
    ratio = torch.exp(c.logps - c.logps.detach())
    per_token = ppo_token(ratio, c.advantages[:, None], 0.2, 0.2) + beta * kl
    torch.testing.assert_close(out.loss, reduce_ref(per_token, c.mask, "seq_mean_token_mean"))
    torch.testing.assert_close(out.metrics["kl"], (kl * c.mask).sum() / c.mask.sum())


def test_entropy_bonus_subtracts_token_mean_entropy():
    c = make_case(seed=4)
    entropy = c.entropy.clone().requires_grad_()
    common = dict(logps=c.logps, mask=c.mask, advantages=c.advantages, entropy=entropy)
    plain = lmloss.policy_loss("dapo", **common)
    bonus = lmloss.policy_loss("dapo", entropy_coef=0.01, **common)
    mean_entropy = (entropy * c.mask).sum() / c.mask.sum()
    torch.testing.assert_close(bonus.loss, plain.loss - 0.01 * mean_entropy)
    (grad,) = torch.autograd.grad(bonus.loss, entropy)
    torch.testing.assert_close(grad, -0.01 * c.mask / c.mask.sum())


@pytest.mark.parametrize(
    ("aggregation", "options"),
    [
        ("seq_mean_token_mean", {}),
        ("seq_mean_token_sum", {}),
        ("token_sum_norm", {}),
        ("token_sum_norm", {"max_tokens": 64}),
        ("token_mean", {}),
        ("token_mean", {"num_items": 123.0}),
    ],
)
def test_aggregations(aggregation, options):
    c = make_case(seed=5)
    out = lmloss.policy_loss(
        "ppo",
        logps=c.logps,
        old_logps=c.old_logps,
        mask=c.mask,
        advantages=c.advantages,
        aggregation=aggregation,
        **options,
    )
    ratio = torch.exp(c.logps - c.old_logps)
    per_token = ppo_token(ratio, c.advantages[:, None], 0.2, 0.2)
    expected = reduce_ref(per_token, c.mask, aggregation, **options)
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------- advantages


def test_grpo_advantages_formula():
    c = make_case(seed=6, batch=9)
    got = lmloss.advantages("grpo", c.rewards, group_size=GROUP)
    for start in range(0, 9, GROUP):
        r = c.rewards[start : start + GROUP]
        mean, std = r.sum() / GROUP, math.sqrt(((r - r.mean()) ** 2).sum() / (GROUP - 1))
        torch.testing.assert_close(got[start : start + GROUP], (r - mean) / (std + 1e-4))
    batch_scaled = lmloss.advantages("grpo", c.rewards, group_size=GROUP, scale="batch")
    group_means = c.rewards.reshape(-1, GROUP).mean(1).repeat_interleave(GROUP)
    torch.testing.assert_close(batch_scaled, (c.rewards - group_means) / (c.rewards.std() + 1e-4))


def test_rloo_advantages_leave_one_out():
    rewards = torch.tensor([1.0, 0.0, 3.0, 2.0, 2.0, 5.0], dtype=torch.float64)
    got = lmloss.advantages("rloo", rewards, group_size=3)
    expected = []
    for i in range(6):
        group = [j for j in range(i - i % 3, i - i % 3 + 3) if j != i]
        expected.append(rewards[i] - rewards[group].mean())
    torch.testing.assert_close(got, torch.stack(expected))
    torch.testing.assert_close(lmloss.advantages("loop", rewards, group_size=3), got)


def test_bnpo_advantages_formula():
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1], dtype=torch.float64)
    got = lmloss.advantages("bnpo", rewards, group_size=4)
    p = rewards.reshape(3, 4).mean(1)
    m, v = p.mean().item(), p.var().item()
    a = (m * (1 - m) / v - 1) * m
    b = (m * (1 - m) / v - 1) * (1 - m)
    alpha, beta = max(1.0, 1 + a / 3), max(1.0, 1 + b / 3)
    norm = math.gamma(alpha) * math.gamma(beta) / math.gamma(alpha + beta)
    expected = []
    for i, r in enumerate(rewards.tolist()):
        pg = p[i // 4].item()
        pdf = pg ** (alpha - 1) * (1 - pg) ** (beta - 1) / norm
        expected.append(min(1 / pdf, 1e6) * (r - pg))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_reinforce_pp_global_normalization():
    c = make_case(seed=7, batch=9)
    r = c.rewards + torch.linspace(0, 1, 9, dtype=torch.float64)
    got = lmloss.advantages("reinforce_pp", r)
    torch.testing.assert_close(got, (r - r.mean()) / torch.sqrt(r.var() + 1e-8))
    baseline = lmloss.advantages("reinforce_pp", r, group_size=GROUP)
    x = r - r.reshape(-1, GROUP).mean(1).repeat_interleave(GROUP)
    torch.testing.assert_close(baseline, (x - x.mean()) / torch.sqrt(x.var() + 1e-8))
    tokens = lmloss.advantages("reinforce_pp", r, mask=c.mask)
    values = r[:, None].expand_as(c.mask)[c.mask.bool()]
    expected = (r[:, None] - values.mean()) / torch.sqrt(values.var() + 1e-8) * c.mask
    torch.testing.assert_close(tokens, expected)


def test_token_group_mean_advantages():
    c = make_case(seed=8, batch=6)
    got = lmloss.advantages("token_group_mean", c.rewards, group_size=GROUP, mask=c.mask)
    expected = torch.zeros_like(c.mask)
    for start in range(0, 6, GROUP):
        idx = range(start, start + GROUP)
        tokens = torch.cat([c.rewards[i].repeat(int(c.mask[i].sum())) for i in idx])
        mu, sigma = tokens.mean(), tokens.std(unbiased=False)
        for i in idx:
            expected[i] = (c.rewards[i] - mu) / (sigma + 1e-6) * c.mask[i]
    torch.testing.assert_close(got, expected)


def test_dynamic_sampling_drops_uniform_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    keep = dynamic_sampling_mask(rewards, group_size=3)
    assert keep.tolist() == [False] * 3 + [True] * 3 + [False] * 3


def test_kl_in_reward_sequence_and_tokens():
    c = make_case(seed=9)
    seq = kl_in_reward(c.rewards, c.logps, c.ref_logps, c.mask, beta=0.1)
    d = (c.logps - c.ref_logps).detach() * c.mask
    torch.testing.assert_close(seq, c.rewards - 0.1 * d.sum(1))
    tok = kl_in_reward(c.rewards, c.logps, c.ref_logps, c.mask, beta=0.1, per_token=True)
    for i in range(c.mask.shape[0]):
        for t in range(c.mask.shape[1]):
            want = (c.rewards[i] - 0.1 * d[i, t:].sum()) * c.mask[i, t]
            torch.testing.assert_close(tok[i, t], want)
    assert not tok.requires_grad and not seq.requires_grad
