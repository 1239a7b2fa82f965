"""Bad input to the preference front doors fails with a message naming the argument."""

from __future__ import annotations

import pytest
import torch
from preference_testkit import case

import lmloss


def run(name="dpo", edit=lambda kw: None, **hyper):
    kw = case(name, seed=41)
    edit(kw)
    return lmloss.preference_loss(name, **kw, **hyper)


def setitem(key, value):
    return lambda kw: kw.__setitem__(key, value(kw) if callable(value) else value)


@pytest.mark.parametrize(
    "edit,error,match",
    [
        (
            setitem("rejected_logps", lambda kw: kw["rejected_logps"][:3]),
            ValueError,
            "rejected_mask must have shape",
        ),
        (
            lambda kw: kw.update(
                rejected_logps=kw["rejected_logps"][:3],
                rejected_mask=kw["rejected_mask"][:3],
                ref_rejected_logps=None,
            ),
            ValueError,
            "rejected_logps must hold 4 rows",
        ),
        (
            setitem("chosen_mask", lambda kw: kw["chosen_mask"][:, :-1]),
            ValueError,
            "chosen_mask must have shape",
        ),
        (
            setitem("ref_chosen_logps", lambda kw: kw["ref_chosen_logps"][:, :-1]),
            ValueError,
            "ref_chosen_logps must have shape",
        ),
        (
            setitem("chosen_logps", lambda kw: kw["chosen_logps"][0]),
            ValueError,
            r"chosen_logps must be \[B, T\]",
        ),
        (
            lambda kw: kw["rejected_mask"][2].zero_(),
            ValueError,
            r"rejected_mask has an empty completion at index \(2,\)",
        ),
        (
            setitem("chosen_mask", lambda kw: kw["chosen_mask"].double() * 2),
            ValueError,
            "chosen_mask must hold only 0 and 1",
        ),
        (
            setitem("chosen_logps", lambda kw: kw["chosen_logps"].long()),
            TypeError,
            "chosen_logps must be a floating",
        ),
        (setitem("chosen_logps", [[0.0]]), TypeError, "chosen_logps must be a torch.Tensor"),
        (lambda kw: kw.pop("chosen_mask"), ValueError, "missing chosen_mask"),
        (
            lambda kw: kw.pop("ref_chosen_logps"),
            ValueError,
            "needs reference log-probs: pass ref_chosen_logps",
        ),
    ],
)
def test_bad_inputs(edit, error, match):
    with pytest.raises(error, match=match):
        run("dpo", edit)


@pytest.mark.parametrize("beta", [0.0, -0.1])
@pytest.mark.parametrize("name", ["dpo", "ipo", "kto", "simpo", "lipo", "npo", "tdpo2", "nca"])
def test_beta_must_be_positive(name, beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        run(name, beta=beta)


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.01])
@pytest.mark.parametrize("name", ["cdpo", "rdpo", "exo", "aot"])
def test_eps_must_be_a_noise_rate(name, eps):
    with pytest.raises(ValueError, match=r"eps must be in"):
        run(name, eps=eps)


def test_exo_needs_positive_eps():
    with pytest.raises(ValueError, match=r"eps must be in \(0.0, 0.5\)"):
        run("exo", eps=0.0)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'dpo'"):
        lmloss.preference_loss("dpoo")
    with pytest.raises(ValueError, match="'simpo'"):
        lmloss.preference_loss("simop")


def test_unknown_hyper_parameter_suggests_the_closest():
    with pytest.raises(ValueError, match=r"'betta' \(did you mean 'beta'\?\)"):
        run("dpo", betta=0.1)
    with pytest.raises(ValueError, match=r"unknown argument\(s\): 'label_smoothing'"):
        run("rdpo", label_smoothing=0.1)


def test_divergence_choices():
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        run("dpo", divergence="kl")
    with pytest.raises(ValueError, match="alpha must be in"):
        run("dpo", divergence="alpha", alpha=1.5)
    with pytest.raises(ValueError, match=r"unknown argument\(s\): 'divergence'"):
        run("nca", divergence="js")  # not built on the margin


def test_objective_specific_inputs():
    with pytest.raises(ValueError, match="'osp' needs strength="):
        run("osp", lambda kw: kw.pop("strength"))
    with pytest.raises(ValueError, match="strength must lie in"):
        run("osp", setitem("strength", lambda kw: kw["strength"] + 1.0))
    with pytest.raises(ValueError, match="needs chosen_kl="):
        run("tdpo1", lambda kw: kw.pop("chosen_kl"))
    with pytest.raises(ValueError, match="kto needs KL samples"):
        run("kto", lambda kw: [kw.pop(k) for k in ("kl_logps", "kl_mask", "ref_kl_logps")])
    with pytest.raises(ValueError, match="desirable must have shape"):
        run("kto", setitem("desirable", lambda kw: kw["desirable"][:2]))
    with pytest.raises(ValueError, match="needs reference samples"):
        run(
            "d2o",
            lambda kw: [kw.pop(k) for k in ("sample_logps", "sample_mask", "ref_sample_logps")],
        )
    with pytest.raises(ValueError, match="scores must have shape"):
        run("lipo", setitem("scores", lambda kw: kw["scores"][:, :2]))
    with pytest.raises(ValueError, match="kl_weights must be non-negative"):
        run("sparsepo", setitem("chosen_kl_weights", lambda kw: -kw["chosen_kl_weights"]))


def test_wrong_input_kind_names_the_expected_keywords():
    pairs = case("dpo")
    with pytest.raises(ValueError, match="'kto' takes logps, mask, ref_logps"):
        lmloss.preference_loss("kto", **pairs, desirable=torch.ones(4, dtype=torch.bool))


def test_option_ranges():
    with pytest.raises(ValueError, match=r"ld_alpha must be in \[0.0, 1.0\]"):
        run("dpo", ld_alpha=1.5)
    with pytest.raises(ValueError, match=r"noise must be in \[0.0, 0.5\)"):
        lmloss.lcpo("dpo", noise=0.5, **case("dpo"))
    with pytest.raises(ValueError, match="needs chosen_sum_sq_probs="):
        run("dpo", wpo=True)
    with pytest.raises(ValueError, match="missing online_logps"):
        run("dpo", hypo_weight=0.1)


def test_summed_reference_refused_where_per_token_is_needed():
    def summed(kw):
        kw["ref_chosen_logps"] = kw["ref_chosen_logps"].sum(-1)

    with pytest.raises(ValueError, match="needs per-token reference log-probs"):
        run("sparsepo", summed)


def test_fused_layout_errors():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(3, 4, 5, generator=g), torch.randn(11, 5, generator=g)
    targets = torch.randint(0, 11, (3, 4), generator=g)
    with pytest.raises(ValueError, match="chosen then rejected rows"):
        lmloss.fused_preference_loss("simpo", hidden=hidden, weight=weight, targets=targets)
    with pytest.raises(ValueError, match="targets must have shape"):
        lmloss.fused_preference_loss("simpo", hidden=hidden[:2], weight=weight, targets=targets)
    with pytest.raises(ValueError, match="ref_hidden needs ref_weight"):
        lmloss.fused_preference_loss(
            "dpo", hidden=hidden[:2], weight=weight, targets=targets[:2], ref_hidden=hidden[:2]
        )


def test_fused_token_level_needs_the_reference_head():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(4, 3, 5, generator=g), torch.randn(11, 5, generator=g)
    targets = torch.randint(0, 11, (4, 3), generator=g)
    ref = {"ref_chosen_logps": torch.zeros(2), "ref_rejected_logps": torch.zeros(2)}
    with pytest.raises(ValueError, match="per-token KL needs the reference model"):
        lmloss.fused_preference_loss("tdpo2", hidden=hidden, weight=weight, targets=targets, **ref)
