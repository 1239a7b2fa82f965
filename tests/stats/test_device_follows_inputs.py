"""Every tensor the engine and the fused front doors make follows the inputs' device.

With ``torch.set_default_device("meta")``, a tensor made without ``device=`` lands on the
meta device and the first op that mixes it with the CPU inputs fails ("Tensor on device
meta is not on the expected device cpu") — the same mistake that fails on CUDA. So CPU
inputs under a meta default device catch, without a GPU, any allocation that would not
follow a CUDA input.
"""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss.stats.divergence_terms import DIVERGENCES

N_ROWS, T, H, V = 4, 5, 8, 37
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def meta_default_device():
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(previous)


def _randn(*shape, g, grad=False):
    x = torch.randn(*shape, generator=g, device=CPU, dtype=torch.float32)
    return x.requires_grad_() if grad else x


def _inputs(seed=0):
    g = torch.Generator(device=CPU).manual_seed(seed)
    targets = torch.randint(0, V, (N_ROWS, T), generator=g, device=CPU)
    targets[0, :2] = -100
    return {
        "hidden": _randn(N_ROWS, T, H, g=g, grad=True),
        "weight": _randn(V, H, g=g, grad=True),
        "bias": _randn(V, g=g, grad=True),
        "ref_hidden": _randn(N_ROWS, T, H, g=g),
        "ref_weight": _randn(V, H, g=g),
        "teacher_logits": _randn(N_ROWS, T, V, g=g),
        "targets": targets,
        "mask": targets != -100,
        "table": _randn(V, 3, g=g),
        "topk_ids": torch.rand(N_ROWS, T, V, generator=g, device=CPU).argsort(-1)[..., :4],
    }


def _token_stats(x):
    names = ("logp", "entropy", "lse", "sum_sq_probs", "mean_logit", "is_argmax", "expectation")
    s = lmloss.token_stats(
        x["hidden"], x["weight"], x["targets"], x["bias"], want=names, expect=x["table"],
        softcap=4.0, logit_scale=0.8, temperature=1.3,
    )  # fmt: skip
    return sum(v.sum() for k, v in s.asdict().items() if k != "is_argmax")


def _linear_ce(x):
    return lmloss.linear_cross_entropy(
        x["hidden"], x["weight"], x["targets"], x["bias"], num_items=torch.tensor(11, device=CPU)
    )


def _likelihood(name):
    def run(x):
        extra = {"embedding_table": x["table"]} if name == "emo" else {}
        return lmloss.fused_likelihood_loss(
            name, x["hidden"], x["weight"], x["targets"], x["bias"], **extra
        ).loss

    return run


def _preference(name, with_ref):
    def run(x):
        ref = {"ref_hidden": x["ref_hidden"], "ref_weight": x["ref_weight"]} if with_ref else {}
        return lmloss.fused_preference_loss(
            name,
            hidden=x["hidden"],
            weight=x["weight"],
            targets=x["targets"],
            bias=x["bias"],
            **ref,
        ).loss

    return run


def _policy(with_ref):
    def run(x):
        rewards = torch.tensor([1.0, 0.0, 1.0, 1.0], device=CPU)
        adv = lmloss.advantages("grpo", rewards, group_size=2)
        ref = {"ref_hidden": x["ref_hidden"], "ref_weight": x["ref_weight"]} if with_ref else {}
        return lmloss.fused_policy_loss(
            "grpo", hidden=x["hidden"], weight=x["weight"], targets=x["targets"],
            advantages=adv, bias=x["bias"], beta=0.1 if with_ref else 0.0, **ref,
        ).loss  # fmt: skip

    return run


def _divergence(name, teacher):
    def run(x):
        if teacher == "head":
            kw = {"teacher_hidden": x["ref_hidden"], "teacher_weight": x["ref_weight"]}
        elif teacher == "logits":
            kw = {"teacher_logits": x["teacher_logits"]}
        else:  # sparse top-k teacher
            logprobs = torch.log_softmax(x["teacher_logits"][..., :4], -1)
            kw = {"teacher_topk_ids": x["topk_ids"], "teacher_topk_logprobs": logprobs}
        return lmloss.fused_divergence_loss(
            name, x["hidden"], x["weight"], student_bias=x["bias"], mask=x["mask"],
            labels=x["targets"].clamp(min=0), softcap=5.0, teacher_logit_scale=0.9, **kw,
        ).loss  # fmt: skip

    return run


def _token_divergence(x):
    return lmloss.token_divergence(
        "jsd", x["hidden"], x["weight"], student_bias=x["bias"], teacher_hidden=x["ref_hidden"],
        teacher_weight=x["ref_weight"], mask=x["mask"], teacher_softcap=3.0,
    ).sum()  # fmt: skip


CASES = {
    "token_stats": _token_stats,
    "linear_cross_entropy": _linear_ce,
    **{f"likelihood-{n}": _likelihood(n) for n in lmloss.list_objectives("likelihood")},
    "preference-dpo": _preference("dpo", True),
    "preference-simpo": _preference("simpo", False),
    "preference-tdpo2": _preference("tdpo2", True),
    "policy-grpo-ref": _policy(True),
    "policy-grpo": _policy(False),
    **{f"distill-{n}-head": _divergence(n, "head") for n in (*DIVERGENCES, "bdkd", "pld")},
    "distill-jsd-logits": _divergence("jsd", "logits"),
    "distill-forward_kl-sparse": _divergence("forward_kl", "sparse"),
    "distill-pld-logits": _divergence("pld", "logits"),
    "token_divergence": _token_divergence,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_gradients_stay_on_the_inputs_device(case):
    x = _inputs()
    loss = CASES[case](x)
    assert loss.device == CPU and bool(torch.isfinite(loss).all())
    loss.backward()
    for name in ("hidden", "weight", "bias"):
        grad = x[name].grad
        assert grad is not None, f"{case}: no gradient reached {name}"
        assert grad.device == CPU and bool(torch.isfinite(grad).all()), f"{case}: {name}"
