"""One contract for every front door: each objective's spec is complete and true, every family
binds arguments the same way, and the old call forms still work with a DeprecationWarning."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import lmloss
from lmloss import cli, registry
from lmloss.objectives.preference.inputs import kind_of
from lmloss.objectives.spec import NORMALIZERS, REFERENCE
from preference.preference_testkit import case

ALL = lmloss.list_objectives()
G = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("name", ALL)
def test_every_spec_is_complete(name):
    spec = lmloss.spec(name)
    assert spec.family in registry.families() and spec.paper and spec.kind
    assert spec.inputs, "every objective takes at least one tensor"
    assert spec.reference in REFERENCE
    assert spec.normalizer in NORMALIZERS
    assert not set(spec.inputs) & set(spec.optional_inputs)
    assert set(spec.extra_inputs) <= set(spec.inputs)
    # the hyper-parameters are the function's keyword options, grouped ones flattened
    fn = registry.get(name).fn
    own = {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
    }
    grouped = {f.name for _, cls in spec.groups for f in dataclasses.fields(cls)}
    assert set(spec.hyper_defaults) == (own - {p for p, _ in spec.groups}) | grouped
    assert dict(spec.defaults).items() <= spec.hyper_defaults.items()


def test_reference_declarations():
    assert lmloss.spec("simpo").reference == "none"
    assert lmloss.spec("dpo").reference == "required"
    assert lmloss.spec("grpo").reference == "optional"
    assert lmloss.spec("ce").reference == "none"
    assert "ref_chosen_logps" in lmloss.spec("dpo").inputs
    assert "ref_chosen_logps" not in lmloss.spec("orpo").takes


@pytest.mark.parametrize("name", lmloss.list_objectives("preference"))
def test_declared_reference_matches_the_gradient(name):
    """What the trainer used to probe at run time, checked once here: a gradient reaches the
    reference log-probs exactly when the spec says the objective uses a reference."""
    kw = case(name, seed=3)
    primary = kind_of(lmloss.spec(name)).PRIMARY
    for prefix in primary:  # reference-free cases carry no reference: give one anyway
        kw.setdefault(f"ref_{prefix}logps", -torch.rand(kw[f"{prefix}logps"].shape, generator=G))
    policy = f"{primary[0]}logps"
    leaves = [k for k in kw if k.startswith("ref_")] + [policy]
    for key in leaves:
        kw[key] = kw[key].detach().clone().requires_grad_()
    loss = lmloss.preference_loss(name, **kw).loss
    grads = torch.autograd.grad(loss, [kw[k] for k in leaves], allow_unused=True)[:-1]
    used = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert used == (lmloss.spec(name).reference != "none")


def test_normalizers():
    assert lmloss.spec("ce").normalizer == "token"
    assert lmloss.spec("dpo").normalizer == "pair"
    assert lmloss.spec("kto").normalizer == "sequence"
    assert lmloss.spec("aot").normalizer == "batch" and lmloss.spec("aot").batch_coupled
    assert lmloss.spec("anyloss").normalizer == "batch"
    assert lmloss.spec("grpo").normalizer == "sequence"
    assert lmloss.spec("dapo").normalizer == "token"  # aggregation="token_mean"
    assert lmloss.spec("grpo").normalizer_for({"aggregation": "token_mean"}) == "token"
    assert lmloss.spec("forward_kl").normalizer == "token"  # takes num_items


def test_inputs_and_data_columns():
    assert lmloss.spec("osp").extra_inputs == ("strength",)
    assert lmloss.spec("kto").extra_inputs == ("desirable",)
    assert lmloss.spec("gtpo").extra_inputs == ("token_ids",)
    assert "entropy" in lmloss.spec("gtpo").inputs
    assert lmloss.spec("z_loss").inputs == ("logps", "lse")
    assert lmloss.spec("kto").kind == "Unpaired" and lmloss.spec("grpo").kind == "Rollouts"
    assert "chosen_kl" in lmloss.spec("tdpo1").optional_inputs  # computed fused, or given
    assert "rejected_kl_weights" in lmloss.spec("sparsepo").optional_inputs  # declared


def test_policy_options_are_flat_hyper_parameters():
    spec = lmloss.spec("dapo")
    assert spec.hyper_defaults["aggregation"] == "token_mean"
    assert spec.hyper_defaults["eps_high"] == 0.28 and spec.hyper_defaults["beta"] == 0.0
    grouped = spec.group({"beta": 0.1, "eps_low": 0.3})
    assert grouped["options"].beta == 0.1 and grouped["eps_low"] == 0.3


# ------------------------------------------------------------------ one binding, one error


def _likelihood(**kw):
    return lmloss.likelihood_loss("focal", logps=-torch.rand(2, 3, generator=G), **kw)


def _preference(**kw):
    return lmloss.preference_loss("dpo", **case("dpo"), **kw)


def _policy(**kw):
    logps = -torch.rand(4, 3, generator=G)
    return lmloss.policy_loss(
        "grpo", logps=logps, mask=torch.ones(4, 3), advantages=torch.randn(4, generator=G), **kw
    )


def _distill(**kw):
    return lmloss.divergence_loss(
        "jsd", student_logits=torch.randn(3, 5), teacher_logits=torch.randn(3, 5), **kw
    )


def _classify(**kw):
    return lmloss.classification_loss(
        "ldr_kl", logits=torch.randn(4, 3), labels=torch.tensor([0, 1, 2, 0]), **kw
    )


@pytest.mark.parametrize(
    ("call", "name", "typo", "meant"),
    [
        (_likelihood, "focal", "gama", "gamma"),
        (_preference, "dpo", "betta", "beta"),
        (_policy, "grpo", "eps_lowe", "eps_low"),
        (_distill, "jsd", "betta", "beta"),
        (_classify, "ldr_kl", "margn", "margin"),
    ],
)
def test_misspelled_hyper_parameter_is_a_type_error_with_a_suggestion(call, name, typo, meant):
    with pytest.raises(TypeError, match=rf"objective '{name}'.*'{typo}' \(did you mean '{meant}'"):
        call(**{typo: 0.1})


def test_missing_input_is_a_type_error_naming_the_objective():
    kw = case("osp")
    kw.pop("strength")
    with pytest.raises(TypeError, match="objective 'osp' needs strength="):
        lmloss.preference_loss("osp", **kw)
    with pytest.raises(TypeError, match="'z_loss' needs"):
        lmloss.likelihood_loss("z_loss", logps=-torch.rand(3))


# ------------------------------------------------------------------ deprecated spellings


def test_likelihood_old_spellings_warn_and_agree():
    logps = -torch.rand(2, 3, generator=G)
    new = lmloss.likelihood_loss("ce", logps=logps, aggregation="sequence_mean").loss
    with pytest.warns(DeprecationWarning, match="logp= is deprecated"):
        old = lmloss.likelihood_loss("ce", logp=logps, aggregation="sequence_mean").loss
    torch.testing.assert_close(old, new)
    with pytest.warns(DeprecationWarning, match="reduction= is deprecated"):
        old = lmloss.likelihood_loss("ce", logps=logps, reduction="sequence_mean").loss
    torch.testing.assert_close(old, new)
    with pytest.raises(TypeError, match="not both"), pytest.warns(DeprecationWarning):
        lmloss.likelihood_loss("ce", logps=logps, logp=logps)


def test_positional_tensors_warn_and_agree():
    hidden, weight = torch.randn(4, 6, generator=G), torch.randn(7, 6, generator=G)
    targets = torch.randint(0, 7, (4,), generator=G)
    new = lmloss.fused_likelihood_loss("ce", hidden=hidden, weight=weight, targets=targets)
    with pytest.warns(DeprecationWarning, match="by position is deprecated"):
        old = lmloss.fused_likelihood_loss("ce", hidden, weight, targets)
    torch.testing.assert_close(old.loss, new.loss)

    student, teacher = torch.randn(4, 7, generator=G), torch.randn(4, 7, generator=G)
    new = lmloss.divergence_loss("forward_kl", student_logits=student, teacher_logits=teacher)
    with pytest.warns(DeprecationWarning, match="by position is deprecated"):
        old = lmloss.divergence_loss("forward_kl", student, teacher)
    torch.testing.assert_close(old.loss, new.loss)

    kw = {"teacher_logits": teacher}
    with pytest.warns(DeprecationWarning, match="by position is deprecated"):
        old = lmloss.fused_divergence_loss("forward_kl", hidden, weight, **kw)
    new = lmloss.fused_divergence_loss(
        "forward_kl", student_hidden=hidden, student_weight=weight, **kw
    )
    torch.testing.assert_close(old.loss, new.loss)
    with (
        pytest.raises(TypeError, match="by position and by keyword"),
        pytest.warns(DeprecationWarning),
    ):
        lmloss.token_divergence("forward_kl", hidden, student_weight=weight, student_hidden=hidden)


def test_classification_old_reduction_warns_and_agrees():
    logits, labels = torch.randn(4, 3, generator=G), torch.tensor([0, 1, 2, 0])
    new = lmloss.classification_loss("ldr_kl", logits=logits, labels=labels, aggregation="sum")
    with pytest.warns(DeprecationWarning, match="reduction= is deprecated"):
        old = lmloss.classification_loss("ldr_kl", logits=logits, labels=labels, reduction="sum")
    torch.testing.assert_close(old.loss, new.loss)


def test_every_front_door_takes_name_first_then_keyword_tensors():
    doors = [
        lmloss.likelihood_loss,
        lmloss.fused_likelihood_loss,
        lmloss.preference_loss,
        lmloss.fused_preference_loss,
        lmloss.policy_loss,
        lmloss.fused_policy_loss,
        lmloss.divergence_loss,
        lmloss.fused_divergence_loss,
        lmloss.classification_loss,
    ]
    for door in doors:
        params = list(inspect.signature(door).parameters.values())
        assert params[0].name == "name", door.__name__
        tensors = [p for p in params[1:] if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert not tensors, f"{door.__name__} takes {tensors} by position"
        words = {p.name for p in params}
        assert "logp" not in words and "reduction" not in words, door.__name__


def test_describe_prints_the_spec(capsys):
    assert cli.main(["describe", "kto"]) == 0
    out = capsys.readouterr().out
    assert "reference model:  required" in out
    assert "per-example:      desirable" in out
    assert "Kahneman" in out  # the formula follows
