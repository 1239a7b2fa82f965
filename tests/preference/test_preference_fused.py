"""fused_preference_loss == preference_loss on per-token log-probs from materialized logits.

A tiny random LM head (float64): the plain side computes log_softmax(hidden @ weight.T) in
full and hands per-token log-probs to ``preference_loss``; the fused side gets the hidden
states and the head. Values and gradients w.r.t. hidden states and weight must agree.
"""

from __future__ import annotations

import pytest
import torch
from preference_testkit import ALL, HYPER, LISTS, NEGATIVES, TOKEN_KL, UNPAIRED, mask

import lmloss

B, T, H, V, K = 2, 5, 8, 31, 3
IGNORE = -100


class Model:
    """Random policy and reference heads and hidden states for named row groups."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(V, H, generator=self.g, dtype=torch.float64).requires_grad_()
        self.ref_weight = torch.randn(V, H, generator=self.g, dtype=torch.float64)
        self.hidden, self.targets, self.ref_hidden = {}, {}, {}

    def rows(self, prefix, shape):
        m = mask(shape, self.g)
        targets = torch.randint(0, V, shape, generator=self.g).masked_fill(~m, IGNORE)
        self.hidden[prefix] = torch.randn(
            *shape, H, generator=self.g, dtype=torch.float64
        ).requires_grad_()
        self.ref_hidden[prefix] = torch.randn(*shape, H, generator=self.g, dtype=torch.float64)
        self.targets[prefix] = targets

    def fused_kwargs(self, prefixes):
        kw = {}
        for prefix in prefixes:
            if prefix == "":
                kw.update(
                    hidden=self.hidden[""], targets=self.targets[""], ref_hidden=self.ref_hidden[""]
                )
                kw.update(weight=self.weight, ref_weight=self.ref_weight)
            else:
                kw.update(
                    {
                        f"{prefix}hidden": self.hidden[prefix],
                        f"{prefix}targets": self.targets[prefix],
                        f"ref_{prefix}hidden": self.ref_hidden[prefix],
                    }
                )
        return kw

    def plain_kwargs(self, prefix, split=None):
        """Per-token tensors from materialized logits; ``split`` names chosen/rejected halves."""
        targets = self.targets[prefix]
        m = targets != IGNORE
        safe = targets.clamp(min=0)[..., None]
        logp = torch.log_softmax(self.hidden[prefix] @ self.weight.T, -1)
        ref_logp = torch.log_softmax(self.ref_hidden[prefix] @ self.ref_weight.T, -1)
        stats = {
            "logps": logp.gather(-1, safe).squeeze(-1) * m,
            "mask": m,
            "sum_sq_probs": torch.logsumexp(2 * logp, -1),
            "kl": (ref_logp.exp() * (ref_logp - logp)).sum(-1) * m,  # KL(π_ref ‖ π_θ) per token
        }
        ref = ref_logp.gather(-1, safe).squeeze(-1) * m
        if split is None:
            out = {f"{prefix}{k}": v for k, v in stats.items()}
            out[f"ref_{prefix}logps"] = ref
            return out
        out = {}
        for i, side in enumerate(split):
            out |= {f"{side}{k}": v.chunk(2)[i] for k, v in stats.items()}
            out[f"ref_{side}logps"] = ref.chunk(2)[i]
        return out


def build(name, seed):
    """(model, fused kwargs, plain kwargs) for one objective."""
    model = Model(seed)
    g = model.g
    if name in UNPAIRED:
        model.rows("", (B, T))
        model.rows("kl_", (B, T))
        extra = {"desirable": torch.tensor([True, False])}
        return (
            model,
            model.fused_kwargs(["", "kl_"]) | extra,
            lambda: model.plain_kwargs("") | model.plain_kwargs("kl_") | extra,
        )
    if name in NEGATIVES:
        model.rows("", (B, T))
        model.rows("sample_", (B, K, T))
        return (
            model,
            model.fused_kwargs(["", "sample_"]),
            lambda: model.plain_kwargs("") | model.plain_kwargs("sample_"),
        )
    if name in LISTS:
        model.rows("", (B, K, T))
        extra = {"scores": torch.tensor([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0]], dtype=torch.float64)}
        return model, model.fused_kwargs([""]) | extra, lambda: model.plain_kwargs("") | extra
    model.rows("", (2 * B, T))
    extra = {}
    if name == "osp":
        extra["strength"] = torch.rand(B, generator=g, dtype=torch.float64)
    if name == "sparsepo":
        for side in ("chosen_", "rejected_"):
            extra[f"{side}reward_weights"] = torch.rand(B, T, generator=g, dtype=torch.float64)
            extra[f"{side}kl_weights"] = torch.rand(B, T, generator=g, dtype=torch.float64)
    return (
        model,
        model.fused_kwargs([""]) | extra,
        lambda: model.plain_kwargs("", ("chosen_", "rejected_")) | extra,
    )


def plain_only(kwargs, keep_kl):
    drop = ("sum_sq_probs",) if keep_kl else ("sum_sq_probs", "kl")
    return {k: v for k, v in kwargs.items() if not k.endswith(drop)}


def assert_same(name, seed=0, fused_extra=None, plain_extra=None, keep_sum_sq=False, **hyper):
    model, fused_kw, plain_kw = build(name, seed)
    leaves = [model.weight, *model.hidden.values()]
    fused = lmloss.fused_preference_loss(name, **fused_kw, **(fused_extra or {}), **hyper)
    grads_fused = torch.autograd.grad(fused.loss, leaves, allow_unused=True)
    kw = plain_kw()
    if not keep_sum_sq:
        kw = plain_only(kw, keep_kl=name in TOKEN_KL)
    else:
        kw = {k: v for k, v in kw.items() if not k.endswith("kl")}
    plain = lmloss.preference_loss(name, **kw, **(plain_extra or {}), **hyper)
    grads_plain = torch.autograd.grad(plain.loss, leaves, allow_unused=True)
    torch.testing.assert_close(fused.per_example, plain.per_example, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads_fused, grads_plain):
        if want is None:
            assert got is None or got.abs().max() == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for key, value in plain.metrics.items():
        torch.testing.assert_close(fused.metrics[key], value, rtol=1e-10, atol=1e-12)


NEEDS_TOKEN_DIVERGENCE = sorted(TOKEN_KL)


@pytest.mark.parametrize("name", [n for n in ALL if n not in TOKEN_KL])
def test_fused_equals_plain(name):
    assert_same(name, seed=sum(map(ord, name)), **HYPER.get(name, {}))


@pytest.mark.parametrize("name", NEEDS_TOKEN_DIVERGENCE)
def test_fused_token_level_equals_plain(name):
    """The per-token KL(π_ref ‖ π_θ) comes from lmloss.token_divergence between the heads."""
    assert_same(name, seed=5, **HYPER.get(name, {}))


@pytest.mark.parametrize(
    "name,hyper",
    [
        ("dpo", {"divergence": "js"}),
        ("ipo", {"ld_alpha": 0.3}),
        ("simpo", {"ld_alpha": 0.0}),
        ("hinge", {"divergence": "alpha", "alpha": 0.6}),
    ],
)
def test_fused_options(name, hyper):
    assert_same(name, seed=9, **hyper)


def test_fused_wpo():
    assert_same("dpo", seed=10, keep_sum_sq=True, wpo=True)


def test_fused_lcpo():
    model, fused_kw, plain_kw = build("ipo", 11)
    leaves = [model.weight, model.hidden[""]]
    fused = lmloss.lcpo("ipo", noise=0.25, **fused_kw)
    plain = lmloss.lcpo("ipo", noise=0.25, **plain_only(plain_kw(), keep_kl=False))
    torch.testing.assert_close(fused.per_example, plain.per_example)
    for got, want in zip(
        torch.autograd.grad(fused.loss, leaves), torch.autograd.grad(plain.loss, leaves)
    ):
        torch.testing.assert_close(got, want)


def test_fused_hypo():
    model, fused_kw, plain_kw = build("dpo", 12)
    model.rows("online_", (B, T))
    fused_online = model.fused_kwargs(["online_"])
    leaves = [model.weight, model.hidden[""], model.hidden["online_"]]
    fused = lmloss.fused_preference_loss("dpo", **fused_kw, **fused_online, hypo_weight=0.3)
    plain_online = plain_only(model.plain_kwargs("online_"), keep_kl=False)
    plain = lmloss.preference_loss(
        "dpo", **plain_only(plain_kw(), keep_kl=False), **plain_online, hypo_weight=0.3
    )
    torch.testing.assert_close(fused.per_example, plain.per_example)
    for got, want in zip(
        torch.autograd.grad(fused.loss, leaves), torch.autograd.grad(plain.loss, leaves)
    ):
        torch.testing.assert_close(got, want)


def test_fused_with_precomputed_reference_bias_and_transform():
    model, fused_kw, plain_kw = build("dpo", 13)
    bias = torch.randn(V, dtype=torch.float64, generator=model.g).requires_grad_()
    hidden, targets = fused_kw["hidden"], fused_kw["targets"]
    assert plain_kw
    ref = -3 * torch.rand(2 * B, dtype=torch.float64, generator=model.g)  # summed log-probs
    fused = lmloss.fused_preference_loss(
        "dpo", hidden=hidden, weight=model.weight, targets=targets, bias=bias, temperature=0.7,
        softcap=5.0, ref_chosen_logps=ref[:B], ref_rejected_logps=ref[B:],
    )  # fmt: skip
    logits = 5.0 * torch.tanh((hidden @ model.weight.T + bias) / 5.0) / 0.7
    m = targets != IGNORE
    lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * m
    plain = lmloss.preference_loss(
        "dpo", chosen_logps=lp[:B], rejected_logps=lp[B:], chosen_mask=m[:B], rejected_mask=m[B:],
        ref_chosen_logps=ref[:B], ref_rejected_logps=ref[B:],
    )  # fmt: skip
    leaves = [model.weight, hidden, bias]
    torch.testing.assert_close(fused.loss, plain.loss)
    for got, want in zip(
        torch.autograd.grad(fused.loss, leaves), torch.autograd.grad(plain.loss, leaves)
    ):
        torch.testing.assert_close(got, want)


def test_reference_gets_no_gradient():
    model, fused_kw, _ = build("dpo", 14)
    ref_weight = model.ref_weight.clone().requires_grad_()
    ref_hidden = fused_kw["ref_hidden"].clone().requires_grad_()
    fused_kw |= {"ref_hidden": ref_hidden, "ref_weight": ref_weight}
    out = lmloss.fused_preference_loss("dpo", **fused_kw)
    out.loss.backward()
    assert ref_weight.grad is None and ref_hidden.grad is None
