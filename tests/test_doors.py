"""The two doors to every objective: ``lmloss.loss`` and ``lmloss.fused_loss``.

``loss`` must be exactly the family's own door for every registered objective; ``fused_loss``
with :class:`lmloss.Head` parameter objects must equal ``loss`` on log-probabilities taken
from logits built here by hand (scale, soft cap, temperature, bias), in float64.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import lmloss
from lmloss import registry
from lmloss.objectives.binding import LmlossDeprecationWarning
from policy.policy_testkit import extra_inputs, make_case
from preference.preference_testkit import case

G = torch.Generator().manual_seed(0)
F64 = torch.float64


def _likelihood_inputs(name: str) -> dict:
    logps = -torch.rand(2, 4, generator=G, dtype=F64)
    inputs = {"logps": logps}
    for key in lmloss.spec(name).inputs:
        if key == "logps":
            continue
        extra = (3,) if key in ("expectation", "target_embedding") else ()
        inputs[key] = torch.rand(2, 4, *extra, generator=G, dtype=F64)
    return inputs


def _policy_inputs(name: str) -> dict:
    c = make_case(seed=1)
    inputs = {"logps": c.logps, "mask": c.mask, "advantages": c.advantages}
    inputs |= {"old_logps": c.old_logps, "ref_logps": c.ref_logps, "entropy": c.entropy}
    return inputs | extra_inputs(name, c)


def _distill_inputs(name: str) -> dict:
    student, teacher = torch.randn(2, 3, 6, generator=G), torch.randn(2, 3, 6, generator=G)
    inputs = {"student_logits": student, "teacher_logits": teacher}
    if name == "pld":
        inputs |= {"labels": torch.randint(0, 6, (2, 3), generator=G), "top_k": 3}
    return inputs


_CLASSIFY = {
    "ldr_kl": {"logits": torch.randn(4, 3, generator=G), "labels": torch.tensor([0, 1, 2, 0])},
    "spherical_z": {"logits": torch.randn(4, 3, generator=G), "labels": torch.tensor([2, 1, 0, 0])},
}

_INPUTS = {
    "likelihood": _likelihood_inputs,
    "preference": lambda name: case(name, seed=2),
    "policy": _policy_inputs,
    "distill": _distill_inputs,
}
_PLAIN_NAMES = [
    n for n in lmloss.list_objectives() if registry.get(n).family in _INPUTS and n != "sinkhorn_kd"
]


def _same(a: lmloss.LossOutput, b: lmloss.LossOutput) -> None:
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    torch.testing.assert_close(a.per_example, b.per_example, rtol=0, atol=0)


@pytest.mark.parametrize("name", _PLAIN_NAMES)
def test_loss_is_the_family_door(name):
    family = registry.get_family(registry.get(name).family)
    door = getattr(lmloss, family.plain.split(":")[1])
    inputs = _INPUTS[family.name](name)
    if "generator" in inputs:  # clip_cov draws tokens: the same draws for both calls
        inputs.pop("generator")
        first = lmloss.loss(name, **inputs, generator=torch.Generator().manual_seed(0))
        second = door(name, **inputs, generator=torch.Generator().manual_seed(0))
        _same(first, second)
        return
    _same(lmloss.loss(name, **inputs), door(name, **inputs))


@pytest.mark.parametrize("name", sorted(_CLASSIFY))
def test_loss_dispatches_classification(name):
    _same(lmloss.loss(name, **_CLASSIFY[name]), lmloss.classification_loss(name, **_CLASSIFY[name]))


def test_every_family_is_declared_with_its_doors():
    assert set(registry.families()) == {"likelihood", "preference", "policy", "distill", "classify"}
    for name in registry.families():
        family = registry.get_family(name)
        for path in filter(None, (family.plain, family.fused)):
            assert callable(getattr(lmloss, path.split(":")[1]))
    assert not registry.get_family("classify").fused


# ------------------------------------------------------------------ fused, with Head objects


def _head(vocab: int, width: int, softcap: float | None, scale: float) -> lmloss.Head:
    weight = torch.randn(vocab, width, generator=G, dtype=F64, requires_grad=True)
    bias = torch.randn(vocab, generator=G, dtype=F64)
    return lmloss.Head(weight, bias, softcap=softcap, logit_scale=scale)


def _logprobs(hidden, head: lmloss.Head, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax of the head's logits, written out: scale, then soft cap, then temperature."""
    raw = (hidden @ head.weight.T + head.bias) * head.logit_scale
    if head.softcap is not None:
        raw = head.softcap * torch.tanh(raw / head.softcap)
    return torch.log_softmax(raw / temperature, dim=-1)


def _gather(logprobs, targets):
    return logprobs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)


def test_fused_ce_with_a_head_equals_the_written_out_loss():
    hidden = torch.randn(2, 5, 4, generator=G, dtype=F64, requires_grad=True)
    head = _head(11, 4, softcap=3.0, scale=0.7)
    targets = torch.randint(0, 11, (2, 5), generator=G)
    targets[0, 0] = -100
    fused = lmloss.fused_loss("ce", hidden=hidden, head=head, targets=targets, temperature=1.5)
    logps = _gather(_logprobs(hidden, head, 1.5), targets)
    plain = lmloss.loss("ce", logps=logps, mask=targets != -100)
    torch.testing.assert_close(fused.loss, plain.loss)
    grads = torch.autograd.grad(fused.loss, (hidden, head.weight))
    expected = torch.autograd.grad(plain.loss, (hidden, head.weight))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_fused_dpo_with_policy_and_reference_heads():
    b, t, width, vocab = 2, 4, 5, 9
    hidden = torch.randn(2 * b, t, width, generator=G, dtype=F64)
    ref_hidden = torch.randn(2 * b, t, width, generator=G, dtype=F64)
    targets = torch.randint(0, vocab, (2 * b, t), generator=G)
    head, ref_head = _head(vocab, width, 2.0, 1.3), _head(vocab, width, 2.0, 1.3)
    fused = lmloss.fused_loss(
        "dpo", hidden=hidden, head=head, ref_hidden=ref_hidden, ref_head=ref_head, targets=targets
    )
    logps = _gather(_logprobs(hidden, head), targets)
    ref = _gather(_logprobs(ref_hidden, ref_head), targets).detach()
    mask = torch.ones(b, t, dtype=torch.bool)
    plain = lmloss.loss(
        "dpo",
        chosen_logps=logps[:b],
        rejected_logps=logps[b:],
        chosen_mask=mask,
        rejected_mask=mask,
        ref_chosen_logps=ref[:b],
        ref_rejected_logps=ref[b:],
    )
    torch.testing.assert_close(fused.loss, plain.loss)


def test_fused_grpo_with_a_reference_head():
    hidden, ref_hidden = (torch.randn(3, 4, 5, generator=G, dtype=F64) for _ in range(2))
    head, ref_head = _head(8, 5, None, 2.0), _head(8, 5, None, 2.0)
    targets = torch.randint(0, 8, (3, 4), generator=G)
    advantages = torch.randn(3, generator=G, dtype=F64)
    hyper = {"beta": 0.1}
    fused = lmloss.fused_loss(
        "grpo",
        hidden=hidden,
        head=head,
        ref_hidden=ref_hidden,
        ref_head=ref_head,
        targets=targets,
        advantages=advantages,
        **hyper,
    )
    plain = lmloss.loss(
        "grpo",
        logps=_gather(_logprobs(hidden, head), targets),
        ref_logps=_gather(_logprobs(ref_hidden, ref_head), targets),
        mask=torch.ones(3, 4),
        advantages=advantages,
        **hyper,
    )
    torch.testing.assert_close(fused.loss, plain.loss)


def test_fused_distillation_with_student_and_teacher_heads():
    hidden = torch.randn(6, 4, generator=G, dtype=F64)
    teacher_hidden = torch.randn(6, 3, generator=G, dtype=F64)
    head, teacher = _head(7, 4, 5.0, 1.0), _head(7, 3, 2.5, 0.5)  # each its own transform
    fused = lmloss.fused_loss(
        "forward_kl",
        student_hidden=hidden,
        head=head,
        teacher_hidden=teacher_hidden,
        teacher_head=teacher,
        temperature=2.0,
    )
    student_logits = _logprobs(hidden, head, 2.0)  # log-softmax: logits up to a constant
    teacher_logits = _logprobs(teacher_hidden, teacher, 2.0)
    plain = lmloss.loss("forward_kl", student_logits=student_logits, teacher_logits=teacher_logits)
    torch.testing.assert_close(fused.loss, plain.loss)


def test_head_argument_errors():
    hidden = torch.randn(2, 3, 4)
    head = lmloss.Head(torch.randn(6, 4))
    targets = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="give head= or weight=, not both"):
        lmloss.fused_loss("ce", hidden=hidden, head=head, weight=head.weight, targets=targets)
    with pytest.raises(TypeError, match=r"head must be an lmloss\.Head"):
        lmloss.fused_loss("ce", hidden=hidden, head=head.weight, targets=targets)
    with pytest.raises(ValueError, match="ref_head's softcap/logit_scale must equal head's"):
        lmloss.fused_loss(
            "dpo",
            hidden=torch.randn(4, 3, 4),
            head=head,
            ref_hidden=torch.randn(4, 3, 4),
            ref_head=lmloss.Head(head.weight, softcap=2.0),
            targets=torch.zeros(4, 3, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="softcap must be > 0"):
        lmloss.Head(head.weight, softcap=-1.0)
    with pytest.raises(ValueError, match=r"no fused form.*lmloss.loss\('ldr_kl'"):
        lmloss.fused_loss("ldr_kl", **_CLASSIFY["ldr_kl"])


# ------------------------------------------------------------------ names and messages


@pytest.mark.parametrize(
    ("door", "name", "points_to"),
    [
        (lmloss.preference_loss, "dapo", "GRPOTrainer"),
        (lmloss.policy_loss, "dpo", "DPOTrainer"),
        (lmloss.likelihood_loss, "kto", "DPOTrainer"),
        (lmloss.classification_loss, "ce", "SFTTrainer"),
    ],
)
def test_an_objective_of_another_family_is_pointed_to_its_door(door, name, points_to):
    family = registry.get(name).family
    required = {
        lmloss.policy_loss: dict.fromkeys(("logps", "mask", "advantages")),
        lmloss.classification_loss: dict.fromkeys(("logits", "labels")),
    }.get(door, {})
    with pytest.raises(ValueError, match=rf"'{name}' is a {family} objective.*{points_to}"):
        door(name, **required)


def test_lmloss_calls_no_deprecated_form_of_itself():
    hidden, weight = torch.randn(5, 4), torch.randn(7, 4)
    targets = torch.tensor([1, 2, -100, 3, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LmlossDeprecationWarning)
        for reduction in ("mean", "sum", "none"):
            lmloss.linear_cross_entropy(hidden, weight, targets, reduction=reduction)
