"""Every fused door takes each model's head as one ``lmloss.Head`` or as the keywords users
know, with the same result; a head and its keywords together are refused.

The heads are soft-capped, scaled and biased (the teacher with a transform of its own), so
a door that dropped any part of a Head, or read it from the wrong model, gives another
loss or other gradients. The keyword forms themselves are checked against written-out
formulas in the families' tests (e.g. ``tests/stats/test_two_model_transforms.py``).
"""

from __future__ import annotations

import pytest
import torch

import lmloss

B, T, H, HT, V = 2, 3, 5, 4, 11
F64 = torch.float64


def _leaf(g, *shape):
    return torch.randn(*shape, generator=g, dtype=F64).requires_grad_()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    policy = {"weight": _leaf(g, V, H), "bias": _leaf(g, V), "softcap": 3.0, "logit_scale": 0.8}
    reference = {"ref_weight": _leaf(g, V, H).detach(), "ref_bias": _leaf(g, V).detach()}
    teacher = {
        "teacher_weight": _leaf(g, V, HT).detach(),
        "teacher_bias": _leaf(g, V).detach(),
        "teacher_softcap": 5.0,
        "teacher_logit_scale": 1.4,
    }
    targets = torch.randint(0, V, (2 * B, T), generator=g)
    targets[1, 0] = -100
    tensors = {
        "hidden": _leaf(g, 2 * B, T, H),
        "ref_hidden": _leaf(g, 2 * B, T, H).detach(),
        "teacher_hidden": _leaf(g, 2 * B, T, HT).detach(),
        "targets": targets,
        "advantages": torch.randn(2 * B, generator=g, dtype=F64),
    }
    return tensors, policy, reference, teacher


def _policy_head(policy):
    return lmloss.Head(policy["weight"], policy["bias"], policy["softcap"], policy["logit_scale"])


def _ref_head(reference, policy):
    return lmloss.Head(
        reference["ref_weight"], reference["ref_bias"], policy["softcap"], policy["logit_scale"]
    )


def _teacher_head(teacher):
    return lmloss.Head(*teacher.values())


def _likelihood(x, policy, reference, teacher, form):
    heads = {"head": _policy_head(policy)} if form == "head" else policy
    return lmloss.fused_likelihood_loss(
        "focal", hidden=x["hidden"], targets=x["targets"], temperature=1.3, gamma=1.5, **heads
    ).loss


def _preference(name):
    def run(x, policy, reference, teacher, form):
        heads = {**policy, **reference}
        if form == "head":
            heads = {"head": _policy_head(policy), "ref_head": _ref_head(reference, policy)}
        return lmloss.fused_preference_loss(
            name, hidden=x["hidden"], targets=x["targets"], ref_hidden=x["ref_hidden"],
            temperature=1.2, **heads,
        ).loss  # fmt: skip

    return run


def _policy(x, policy, reference, teacher, form):
    heads = {**policy, **reference}
    if form == "head":
        heads = {"head": _policy_head(policy), "ref_head": _ref_head(reference, policy)}
    return lmloss.fused_policy_loss(
        "grpo", hidden=x["hidden"], targets=x["targets"], advantages=x["advantages"],
        ref_hidden=x["ref_hidden"], beta=0.2, **heads,
    ).loss  # fmt: skip


def _student_keywords(policy):
    names = ("student_weight", "student_bias", "softcap", "logit_scale")
    return dict(zip(names, policy.values()))


def _distill(door, student_role):
    def run(x, policy, reference, teacher, form):
        heads = {**_student_keywords(policy), **teacher}
        if form == "head":
            heads = {student_role: _policy_head(policy), "teacher_head": _teacher_head(teacher)}
        common = {"student_hidden": x["hidden"], "teacher_hidden": x["teacher_hidden"]}
        if door == "token_divergence":
            out = lmloss.token_divergence("jsd", **common, **heads, temperature=0.9, beta=0.3)
            return (out * torch.arange(out.numel(), dtype=F64).reshape(out.shape)).sum()
        labels = x["targets"].clamp(min=0)
        return lmloss.fused_divergence_loss(
            "bdkd", **common, **heads, labels=labels, mask=x["targets"] != -100, temperature=0.9
        ).loss

    return run


DOORS = {
    "fused_likelihood_loss": _likelihood,
    "fused_preference_loss dpo": _preference("dpo"),
    "fused_preference_loss tdpo2": _preference("tdpo2"),  # the per-token KL of both heads
    "fused_policy_loss": _policy,
    "fused_divergence_loss student_head": _distill("fused_divergence_loss", "student_head"),
    "fused_divergence_loss head": _distill("fused_divergence_loss", "head"),
    "token_divergence": _distill("token_divergence", "student_head"),
}


@pytest.mark.parametrize("door", DOORS)
def test_head_form_equals_keyword_form(door):
    x, policy, reference, teacher = _inputs()
    leaves = (x["hidden"], policy["weight"], policy["bias"])
    by_head = DOORS[door](x, policy, reference, teacher, "head")
    by_keywords = DOORS[door](x, policy, reference, teacher, "keywords")
    torch.testing.assert_close(by_head, by_keywords, rtol=0, atol=0)
    for got, want in zip(
        torch.autograd.grad(by_head, leaves), torch.autograd.grad(by_keywords, leaves)
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_each_part_of_a_head_counts():
    """The comparison above can fail: a head that differs in any one part gives another loss."""
    x, policy, reference, teacher = _inputs()
    base = _distill("fused_divergence_loss", "student_head")(x, policy, reference, teacher, "head")
    for key, other in (("teacher_bias", teacher["teacher_bias"] * 0), ("teacher_softcap", 2.0)):
        changed = {**teacher, key: other}
        run = _distill("fused_divergence_loss", "student_head")
        assert not torch.allclose(run(x, policy, reference, changed, "head"), base)
    nudged = {**policy, "logit_scale": 0.9}
    assert not torch.allclose(
        _policy(x, nudged, reference, teacher, "head"),
        _policy(x, policy, reference, teacher, "head"),
    )


def _mixed_calls():
    x, policy, reference, teacher = _inputs()
    head, ref_head, t_head = (
        _policy_head(policy),
        _ref_head(reference, policy),
        _teacher_head(teacher),
    )
    pref = {"hidden": x["hidden"], "targets": x["targets"], "ref_hidden": x["ref_hidden"]}
    distill = {"student_hidden": x["hidden"], "teacher_hidden": x["teacher_hidden"]}
    grpo = {k: x[k] for k in ("hidden", "targets", "advantages", "ref_hidden")}
    return {
        "head= or weight=, softcap=": lambda: lmloss.fused_likelihood_loss(
            "ce",
            hidden=x["hidden"],
            targets=x["targets"],
            head=head,
            weight=head.weight,
            softcap=3.0,
        ),
        "head= or logit_scale=": lambda: lmloss.fused_preference_loss(
            "dpo", **pref, head=head, logit_scale=0.8, ref_head=ref_head
        ),
        "ref_head= or ref_bias=": lambda: lmloss.fused_policy_loss(
            "grpo", **grpo, head=head, ref_head=ref_head, ref_bias=ref_head.bias
        ),
        "teacher_head= or teacher_softcap=": lambda: lmloss.fused_divergence_loss(
            "forward_kl", **distill, head=head, teacher_head=t_head, teacher_softcap=5.0
        ),
        "student_head= or student_weight=": lambda: lmloss.token_divergence(
            "jsd", **distill, student_head=head, student_weight=head.weight, teacher_head=t_head
        ),
        "student_head= or head=": lambda: lmloss.fused_divergence_loss(
            "jsd", **distill, student_head=head, head=head, teacher_head=t_head
        ),
        "head= or bias=": lambda: lmloss.fused_loss(
            "ce", hidden=x["hidden"], targets=x["targets"], head=head, bias=head.bias
        ),
    }


@pytest.mark.parametrize("both", list(_mixed_calls()))
def test_a_head_and_its_keywords_together_are_refused(both):
    with pytest.raises(TypeError, match=f"give {both}, not both"):
        _mixed_calls()[both]()


def test_missing_or_mismatched_heads_are_named():
    x, policy, reference, teacher = _inputs()
    with pytest.raises(TypeError, match=r"missing head= \(or weight=\)"):
        lmloss.fused_policy_loss(
            "grpo", hidden=x["hidden"], targets=x["targets"], advantages=x["advantages"]
        )
    with pytest.raises(TypeError, match=r"teacher_head must be an lmloss\.Head, got Tensor"):
        lmloss.token_divergence(
            "jsd", student_hidden=x["hidden"], student_head=_policy_head(policy),
            teacher_hidden=x["teacher_hidden"], teacher_head=teacher["teacher_weight"],
        )  # fmt: skip
    with pytest.raises(ValueError, match="ref_bias= needs ref_weight="):
        lmloss.fused_preference_loss(
            "dpo", hidden=x["hidden"], targets=x["targets"], head=_policy_head(policy),
            ref_hidden=x["ref_hidden"], ref_bias=reference["ref_bias"],
        )  # fmt: skip
    other_cap = lmloss.Head(reference["ref_weight"], softcap=7.0)
    with pytest.raises(ValueError, match="ref_head's softcap/logit_scale must equal head's"):
        lmloss.fused_policy_loss(
            "grpo", hidden=x["hidden"], targets=x["targets"], advantages=x["advantages"],
            ref_hidden=x["ref_hidden"], head=_policy_head(policy), ref_head=other_cap,
        )  # fmt: skip


def test_the_two_model_engine_takes_one_value_per_model():
    from lmloss.stats.divergence_api import token_pair_terms
    from lmloss.stats.model_input import ModelInput, ModelLogits

    x, policy, reference, _ = _inputs()
    student = ModelInput(x["hidden"], _policy_head(policy))
    as_logits = ModelLogits(x["hidden"] @ reference["ref_weight"].T, softcap=2.0)
    as_head = ModelInput(x["hidden"], lmloss.Head(reference["ref_weight"], softcap=2.0))
    by_logits = token_pair_terms(student, as_logits, "forward_kl")["forward_kl"]
    torch.testing.assert_close(
        by_logits, token_pair_terms(student, as_head, "forward_kl")["forward_kl"]
    )
    with pytest.raises(TypeError, match=r"student must be a ModelInput\(hidden, head\)"):
        token_pair_terms((x["hidden"], policy["weight"]), as_head, "forward_kl")
    with pytest.raises(TypeError, match=r"ModelInput\.head must be an lmloss\.Head"):
        ModelInput(x["hidden"], policy["weight"])
