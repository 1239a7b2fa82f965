"""Objectives from a recipe: listwise and negative-only rows, front-door options as
``[objective]`` keys, ``[[objective.add]]`` weighted sums (one engine pass), checked against
formulas written here on the model's materialized logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from train_testkit import recipe, write_jsonl

from lmloss import cli, registry
from lmloss.train.formats import DataError, check_objective, detect, normalize
from lmloss.train.loop import Trainer
from lmloss.train.policy_tokens import PROXY_FLOOR, min_p_log_prob
from lmloss.train.recipe import parse

QUIET = {"echo": lambda *_: None}
FP32 = {"precision": "fp32", "batch_size": 4}
PAIRS = [{"prompt": f"is {x} ok?", "chosen": "yes " + x, "rejected": "no way"} for x in "abcd"]
LISTS = [
    {"prompt": f"rate {x}", "completions": ["good", "bad " + x, "so so"], "scores": [2, 0, 1]}
    for x in "abcd"
]
NEGATIVES = [{"prompt": f"tell {x}", "rejected": "a secret " + x} for x in "abcd"]


# --------------------------------------------------------------------------- formats


def test_listwise_and_negative_rows_are_detected_and_checked():
    assert detect(["prompt", "completions", "scores"]) == "listwise"
    assert detect(["prompt", "rejected"]) == "negative"
    assert detect(["prompt", "chosen", "rejected"]) == "preference"
    rows, fmt = normalize(LISTS[:1], [1], "f.jsonl")
    assert fmt == "listwise" and rows[0]["scores"] == [2.0, 0.0, 1.0]
    # the rejected answers of paired rows, read as negatives
    rows, fmt = normalize(PAIRS[:1], [1], "f.jsonl", "negative")
    assert fmt == "negative" and rows[0]["rejected"] == "no way"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "p", "completions": ["a"], "scores": [1]}], "f.jsonl:5: .*at least 2"),
        ([{"prompt": "p", "completions": ["a", 3j], "scores": [1, 2]}], r"completions\[1\]"),
        ([{"prompt": "p", "completions": ["a", "b"], "scores": [1]}], "list of 2 numbers"),
        ([{"prompt": "p", "completions": ["a", "b"], "scores": [1, True]}], r"scores\[1\]"),
        ([{"prompt": "p", "completions": ["a", "b"], "scores": [1, math.inf]}], "finite"),
        ([*LISTS[:1], {**LISTS[0], "completions": ["a", "b"], "scores": [0, 1]}], "f.jsonl:6"),
        ([{"prompt": None, "rejected": "x"}], "column 'prompt' is empty"),
    ],
)
def test_bad_listwise_and_negative_rows_name_file_and_row(rows, message):
    with pytest.raises(DataError, match=message):
        normalize(rows, [5, 6], "f.jsonl")


@pytest.mark.parametrize(
    ("name", "rows", "fmt", "message"),
    [
        ("lipo", PAIRS, "preference", r"needs listwise rows \(prompt, completions, scores\)"),
        ("npo", PAIRS, "preference", "data.format = 'negative'"),
        ("dpo", NEGATIVES, "negative", r"needs preference rows \(prompt, chosen, rejected\)"),
        ("ce", LISTS, "listwise", r"prompt_completion rows \(prompt, completion\) or messages"),
    ],
)
def test_rows_that_do_not_fit_name_the_formats_and_columns_that_would(name, rows, fmt, message):
    with pytest.raises(ValueError, match=message):
        check_objective(fmt, registry.get(name), rows, "f.jsonl", False)


def test_describe_names_the_new_formats(capsys):
    for name, expected in [
        ("lipo", "prompt + completions + scores (listwise)"),
        ("d2o", "prompt + rejected (negative)"),
    ]:
        assert cli.main(["describe", name]) == 0
        assert expected in capsys.readouterr().out


# --------------------------------------------------------------------------- recipe keys


def _parse(objective: dict, **sections):
    return parse(
        {"model": {"name": "m"}, "data": {"path": "d"}, "objective": objective, **sections}
    )


@pytest.mark.parametrize(
    ("objective", "sections", "error", "message"),
    [
        ({"name": "kto", "wpo": True}, {}, ValueError, "objective.wpo applies to pairwise"),
        ({"name": "dpo", "wpo_clamp": True}, {}, ValueError, "needs wpo = true"),
        ({"name": "dpo", "wpo": 1}, {}, TypeError, "objective.wpo must be bool"),
        ({"name": "dpo", "ld_alpha": 1.5}, {}, ValueError, r"objective.ld_alpha must be in \[0"),
        ({"name": "dpo", "lcpo_noise": 0.5}, {}, ValueError, "objective.lcpo_noise must be in"),
        ({"name": "dpo", "hypo_weight": -1}, {}, ValueError, "objective.hypo_weight"),
        ({"name": "aot", "wpo": True}, {}, ValueError, "sorts the batch"),
        ({"name": "ce", "reweight": "lin"}, {}, ValueError, "linupper, quadratic, extremes"),
        ({"name": "ce", "reweight_temperature": 2.0}, {}, ValueError, "needs objective.reweight"),
        ({"name": "ce", "wpo": True}, {}, ValueError, "unknown key objective.wpo"),
        (
            {"name": "ce", "token_weights": "w"},
            {"data": {"path": "d", "packing": True}},
            ValueError,
            "token_weights does not combine with data.packing",
        ),
        (
            {"name": "d2o"},
            {"reference": {"kind": "precomputed"}},
            ValueError,
            "need a reference model to draw and score them",
        ),
        ({"name": "dpo", "add": {"name": "ce"}}, {}, TypeError, "list of tables"),
        ({"name": "dpo", "add": [{"weight": 1}]}, {}, ValueError, r"objective.add\[0\] needs name"),
        ({"name": "dpo", "add": [{"name": "ce", "weight": -1}]}, {}, ValueError, ">= 0"),
        (
            {"name": "dpo", "add": [{"name": "ce", "weight": 1, "gamma": 2}]},
            {},
            ValueError,
            "gamma",
        ),
        ({"name": "dpo", "add": [{"name": "dpo", "weight": 1}]}, {}, ValueError, "already a term"),
        ({"name": "dpo", "add": [{"name": "kto", "weight": 1}]}, {}, ValueError, "cannot feed"),
        ({"name": "grpo", "add": [{"name": "dpo", "weight": 1}]}, {}, ValueError, "cannot feed"),
        ({"name": "jsd", "add": [{"name": "ce", "weight": 1}]}, {}, ValueError, "a distill obj"),
        ({"name": "lipo", "add": [{"name": "ce", "weight": 1}]}, {}, ValueError, "cannot feed"),
        ({"name": "tdpo1", "add": [{"name": "ce", "weight": 1}]}, {}, ValueError, "forward_kl"),
        (
            {"name": "dpo", "add": [{"name": "ce", "weight": 1}], "hypo_weight": 0.1},
            {},
            ValueError,
            "hypo_weight does not combine",
        ),
    ],
)
def test_bad_objective_keys_are_refused_with_the_key_named(objective, sections, error, message):
    with pytest.raises(error, match=message):
        _parse(objective, **sections)


def test_options_and_terms_round_trip_and_show_in_help():
    run = _parse(
        {"name": "dpo", "beta": 0.2, "wpo": True, "add": [{"name": "focal", "weight": 0.5}]}
    )
    assert run.hyper == {"beta": 0.2} and run.options == {"wpo": True}
    assert run.as_dict()["objective"]["add"] == [{"name": "focal", "weight": 0.5}]
    assert _parse(run.as_dict()["objective"]).terms == run.terms
    from lmloss.train.recipe import reference_text

    text = reference_text()
    assert "[[objective.add]]" in text and "ld_alpha (float" in text and "token_weights" in text


def test_switching_the_objective_keeps_the_options_it_takes(tmp_path):
    from lmloss.train.recipe import load

    path = tmp_path / "r.toml"
    path.write_text(
        '[model]\nname = "m"\n[data]\npath = "d"\n'
        '[objective]\nname = "dpo"\nwpo = true\nld_alpha = 0.5\n'
    )
    said = []
    assert load(str(path), ["objective.name=ipo"], warn=said.append).options == {
        "wpo": True,
        "ld_alpha": 0.5,
    }
    assert load(str(path), ["objective.name=kto"], warn=said.append).options == {}
    assert any("takes no 'wpo'" in line for line in said)


# --------------------------------------------------------------------------- references


def _trainer(tiny_model, tmp_path, rows, objective, precision="fp32", **sections) -> Trainer:
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    train = {**FP32, "precision": precision}
    run = recipe(tiny_model, data, tmp_path / precision, objective, train=train, **sections)
    trainer = Trainer(run, **QUIET)
    torch.manual_seed(1)
    with torch.no_grad():  # the policy moves away from its reference copy
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return trainer


def _plain(model, seqs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs, log Σ p² and the mask from the model's materialized logits."""
    logits = model(input_ids=seqs.ids, attention_mask=seqs.attention).logits[:, :-1].double()
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, seqs.targets.clamp(min=0)[..., None]).squeeze(-1)
    mask = seqs.targets != -100
    return logp * mask, torch.logsumexp(2 * logp_all, -1), mask


def _batch(trainer: Trainer):
    return trainer.mode.prepare(trainer.examples[:4])


def test_dpo_plus_ce_equals_its_terms_and_runs_one_engine_pass(tiny_model, tmp_path, monkeypatch):
    beta, weight = 0.3, 0.7
    objective = {"name": "dpo", "beta": beta, "add": [{"name": "ce", "weight": weight}]}
    trainer = _trainer(tiny_model, tmp_path, PAIRS, objective)
    batch = _batch(trainer)
    calls = {"engine": 0, "backbone": 0}
    import lmloss.train.modes.base as base
    import lmloss.train.modes.preference as mode

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            if torch.is_grad_enabled():
                calls[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(mode, "token_stats", counted(mode.token_stats, "engine"))
    monkeypatch.setattr(base, "hidden_states", counted(base.hidden_states, "backbone"))
    out = trainer.mode.loss(batch, None)
    assert calls == {"engine": 1, "backbone": 1}  # the policy's: one forward, one engine pass

    seqs = batch.tensors["seqs"]
    logp, _, mask = _plain(trainer.model, seqs)
    with torch.no_grad():
        ref, _, _ = _plain(trainer.ctx.reference.model, seqs)
    sums, ref_sums = logp.sum(1), ref.sum(1)
    margin = (sums[:4] - ref_sums[:4]) - (sums[4:] - ref_sums[4:])
    dpo = -F.logsigmoid(beta * margin).mean()
    ce = -logp[:4].sum() / mask[:4].sum()
    assert torch.allclose(out.metrics["loss/dpo"].double(), dpo, atol=1e-5)
    assert torch.allclose(out.metrics["loss/ce"].double(), ce, atol=1e-5)
    assert torch.allclose(out.loss.double(), dpo + weight * ce, atol=1e-5)
    head = trainer.model.get_output_embeddings().weight
    (got,) = torch.autograd.grad(out.loss, head)
    (want,) = torch.autograd.grad(dpo + weight * ce, head)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)


def test_weighted_sum_under_bf16_autocast_is_close_to_fp32(tiny_model, tmp_path):
    objective = {"name": "dpo", "beta": 0.3, "add": [{"name": "ce", "weight": 0.7}]}
    losses = {}
    for precision in ("fp32", "bf16"):
        trainer = _trainer(tiny_model, tmp_path, PAIRS, objective, precision)
        out = trainer.mode.loss(_batch(trainer), None)
        out.loss.backward()
        losses[precision] = out.loss.item()
        trainer.close()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


def test_grpo_plus_ce_on_demonstrations_equals_its_terms(tiny_model, tmp_path, monkeypatch):
    rows = [{"prompt": f"go {x}", "completion": "aaa " + x} for x in "abcd"]
    objective = {"name": "grpo", "add": [{"name": "ce", "weight": 0.3}]}
    policy = {"group_size": 2, "max_new_tokens": 4, "rewards": ["train_testkit:letter_a_reward"]}
    trainer = _trainer(tiny_model, tmp_path, rows, objective, policy=policy)
    batch = _batch(trainer)
    import lmloss.train.modes.policy_sum as policy_sum

    calls = {"engine": 0, "backbone": 0}
    for name, key in [("token_stats", "engine"), ("hidden_states", "backbone")]:
        original = getattr(policy_sum, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            calls[_key] += torch.is_grad_enabled()
            return _original(*args, **kwargs)

        monkeypatch.setattr(policy_sum, name, counted)
    out = trainer.mode.loss(batch, None)
    assert calls == {"engine": 1, "backbone": 1}

    t = batch.tensors
    positions = (t["attention"].cumsum(1) - 1).clamp(min=0)
    logits = trainer.model(
        input_ids=t["ids"], attention_mask=t["attention"], position_ids=positions
    ).logits[:, t["start"] - 1 : -1]
    logp = logits.double().log_softmax(-1).gather(-1, t["targets"].clamp(min=0)[..., None])
    mask = (t["targets"] != -100).double()
    # GRPO on-policy: ratio 1, per-sequence token mean of -A·ratio, mean over sequences
    ratio = torch.exp(logp.squeeze(-1) - logp.squeeze(-1).detach())
    per_seq = (-(ratio * t["advantages"][:, None]) * mask).sum(1) / mask.sum(1)
    demo_logp, _, demo_mask = _plain(trainer.model, t["demonstrations"])
    ce = -demo_logp.sum() / demo_mask.sum()
    assert torch.allclose(out.metrics["loss/ce"].double(), ce, atol=1e-5)
    assert torch.allclose(out.loss.double(), per_seq.mean() + 0.3 * ce, atol=1e-5)
    head = trainer.model.get_output_embeddings().weight
    (got,) = torch.autograd.grad(out.loss, head)
    (want,) = torch.autograd.grad(per_seq.mean() + 0.3 * ce, head)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)


def test_kto_plus_ce_trains_ce_on_the_desirable_completions(tiny_model, tmp_path):
    rows = [{"prompt": f"is {x} ok?", "completion": x * 3, "label": x in "ac"} for x in "abcd"]
    objective = {"name": "kto", "add": [{"name": "ce", "weight": 1.0}]}
    trainer = _trainer(tiny_model, tmp_path, rows, objective)
    batch = _batch(trainer)
    out = trainer.mode.loss(batch, None)
    logp, _, mask = _plain(trainer.model, batch.tensors["seqs"])
    good = torch.tensor([ex.row["label"] for ex in batch.tensors["examples"]])
    ce = -logp[good].sum() / mask[good].sum()
    assert torch.allclose(out.metrics["loss/ce"].double(), ce, atol=1e-5)
    assert torch.allclose(out.loss, out.metrics["loss/kto"] + out.metrics["loss/ce"], atol=1e-6)


def test_weighted_sum_of_likelihood_terms_equals_its_terms(tiny_model, tmp_path):
    rows = [{"prompt": f"say {x}", "completion": x * 4} for x in "abcd"]
    objective = {"name": "ce", "add": [{"name": "focal", "weight": 0.5, "gamma": 1.0}]}
    trainer = _trainer(tiny_model, tmp_path, rows, objective)
    batch = _batch(trainer)
    out = trainer.mode.loss(batch, batch.tokens)
    logp, _, mask = _plain(trainer.model, batch.tensors["seqs"])
    ce = -logp.sum() / mask.sum()
    focal = (-(1 - logp.exp()) * logp * mask).sum() / mask.sum()
    assert torch.allclose(out.loss.double(), ce + 0.5 * focal, atol=1e-5)


def test_wpo_and_ld_alpha_reach_the_loss(tiny_model, tmp_path):
    objective = {"name": "dpo", "beta": 0.5, "wpo": True, "wpo_clamp": True, "ld_alpha": 0.5}
    trainer = _trainer(tiny_model, tmp_path, PAIRS, objective)
    batch = _batch(trainer)
    out = trainer.mode.loss(batch, None)
    seqs = batch.tensors["seqs"]
    logp, sum_sq, mask = _plain(trainer.model, seqs)
    with torch.no_grad():
        ref, _, _ = _plain(trainer.ctx.reference.model, seqs)
    shared = torch.minimum(mask[:4].sum(1), mask[4:].sum(1))
    position = mask.cumsum(1)
    w = torch.where(position <= shared.repeat(2)[:, None], 1.0, 0.5) * mask  # LD-DPO
    sums, ref_sums = (logp * w).sum(1), (ref * w).sum(1)
    margin = (sums[:4] - ref_sums[:4]) - (sums[4:] - ref_sums[4:])
    side = (((logp - sum_sq) * mask).sum(1) / mask.sum(1)).exp()  # WPO, from Σ p²
    pair_weight = (side[:4] * side[4:]).clamp(max=1.0)
    want = (-F.logsigmoid(0.5 * margin) * pair_weight).mean()
    assert torch.allclose(out.loss.double(), want, atol=1e-5)


def test_lcpo_noise_zero_is_the_base_loss(tiny_model, tmp_path):
    losses = []
    for objective in ({"name": "ipo"}, {"name": "ipo", "lcpo_noise": 0.0}):
        where = tmp_path / str(len(objective))
        where.mkdir()
        trainer = _trainer(tiny_model, where, PAIRS, objective)
        out = trainer.mode.loss(_batch(trainer), None)
        losses.append(out.loss.item())
        trainer.close()
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    (tmp_path / "noisy").mkdir()
    trainer = _trainer(tiny_model, tmp_path / "noisy", PAIRS, {"name": "ipo", "lcpo_noise": 0.2})
    out = trainer.mode.loss(_batch(trainer), None)
    assert "lcpo/label_confidence" in out.metrics and out.loss.item() != losses[0]


def test_lipo_from_list_rows_equals_its_formula(tiny_model, tmp_path):
    beta = 0.4
    trainer = _trainer(tiny_model, tmp_path, LISTS, {"name": "lipo", "beta": beta})
    batch = _batch(trainer)
    out = trainer.mode.loss(batch, None)
    seqs = batch.tensors["seqs"]  # answer-major rows: answer k of example b is row k*B + b
    logp, _, _ = _plain(trainer.model, seqs)
    with torch.no_grad():
        ref, _, _ = _plain(trainer.ctx.reference.model, seqs)
    reward = beta * (logp.sum(1) - ref.sum(1)).reshape(3, 4).T  # [B, K]
    labels = torch.tensor([2.0, 0.0, 1.0]).expand(4, 3)
    total = torch.zeros(4, dtype=torch.float64)
    ranks = reward.argsort(1, descending=True).argsort(1) + 1
    for i in range(3):
        for j in range(3):
            if labels[0, i] > labels[0, j]:
                gain = (2 ** labels[:, i] - 1) - (2 ** labels[:, j] - 1)
                discount = 1 / torch.log2(1 + ranks[:, i].double()) - 1 / torch.log2(
                    1 + ranks[:, j].double()
                )
                lam = gain.abs() * discount.abs()
                total += lam * -F.logsigmoid(reward[:, i] - reward[:, j])
    assert torch.allclose(out.loss.double(), total.mean(), atol=1e-5)


def test_npo_and_d2o_start_at_their_identities(tiny_model, tmp_path):
    """Policy = reference before the first step: NPO is (2/β) log 2, D2O is log 2."""
    data = write_jsonl(tmp_path / "neg.jsonl", NEGATIVES)
    for name, expected in [("npo", 2 / 0.1 * math.log(2)), ("d2o", math.log(2))]:
        run = recipe(
            tiny_model,
            data,
            tmp_path / name,
            {"name": name},
            train=FP32,
            preference={"samples": 3, "max_new_tokens": 4},
        )
        trainer = Trainer(run, **QUIET)
        batch = _batch(trainer)
        if name == "d2o":  # K reference samples per prompt, drawn once and kept
            assert batch.tensors["sample_"].ids.shape[0] == 4 * 3
            again = trainer.mode.prepare(trainer.examples[:4]).tensors["sample_"]
            assert torch.equal(again.ids, batch.tensors["sample_"].ids)
        assert trainer.mode.loss(batch, None).loss.item() == pytest.approx(expected, rel=1e-5)
        trainer.close()


def test_hypo_weight_adds_the_on_policy_kl(tiny_model, tmp_path):
    objective = {"name": "dpo", "hypo_weight": 0.5}
    trainer = _trainer(
        tiny_model, tmp_path, PAIRS, objective, preference={"samples": 2, "max_new_tokens": 4}
    )
    batch = _batch(trainer)
    online = batch.tensors["online_"]
    assert online.ids.shape[0] == 4 * 2  # sampled from the model at this step
    out = trainer.mode.loss(batch, None)

    def logratios(seqs):
        logp, _, _ = _plain(trainer.model, seqs)
        with torch.no_grad():
            ref, _, _ = _plain(trainer.ctx.reference.model, seqs)
        return logp.sum(1) - ref.sum(1)

    pairs = logratios(batch.tensors["seqs"])
    dpo = -F.logsigmoid(0.1 * (pairs[:4] - pairs[4:]))
    kl = logratios(online).reshape(4, 2).mean(1)  # per pair: the mean over its samples
    assert torch.allclose(out.loss.double(), (dpo + 0.5 * kl).mean(), atol=1e-5)


def test_token_weights_from_a_column_weight_the_token_mean(tiny_model, tmp_path):
    rows = [
        {"prompt": "say a", "completion": "ab", "w": [1.0, 3.0, 0.0]},  # 'a', 'b', <eos>
        {"prompt": "say b", "completion": "ba", "w": 2.0},
    ] * 2
    trainer = _trainer(tiny_model, tmp_path, rows, {"name": "ce", "token_weights": "w"})
    batch = _batch(trainer)
    assert batch.tokens == pytest.approx(2 * (4.0 + 6.0))  # Σ w: the step's normalizer
    out = trainer.mode.loss(batch, batch.tokens)
    logp, _, mask = _plain(trainer.model, batch.tensors["seqs"])
    weights = torch.zeros_like(logp)
    for i, ex in enumerate(trainer.examples[:4]):
        weights[i, mask[i]] = torch.tensor(ex.weights, dtype=torch.float64)
    want = -(weights * logp).sum() / weights.sum()
    assert torch.allclose(out.loss.double(), want, atol=1e-5)


def test_token_weights_of_the_wrong_length_name_the_row(tiny_model, tmp_path):
    rows = [{"prompt": "say a", "completion": "ab", "w": [1.0, 2.0]}] * 2
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    run = recipe(tiny_model, data, tmp_path / "run", {"name": "ce", "token_weights": "w"})
    with pytest.raises(ValueError, match=r"rows.jsonl:1: column 'w' holds 2 token weights for 3"):
        Trainer(run, **QUIET)


def test_min_p_proxy_log_probs_follow_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, -3.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    tokens = torch.tensor([1, 3])
    got = min_p_log_prob(logits.log_softmax(-1), tokens, min_p=0.2)
    p = logits.softmax(-1)
    keep = p >= 0.2 * p.max(-1, keepdim=True).values
    proxy = torch.where(keep, p, 0.0)
    proxy = proxy / proxy.sum(-1, keepdim=True)
    assert torch.allclose(got, proxy[[0, 1], tokens].log(), atol=1e-6)
    assert min_p_log_prob(logits.log_softmax(-1), torch.tensor([2, 0]), 0.2)[0] == PROXY_FLOOR


def test_precomputed_reference_of_lists_equals_the_frozen_copy(tiny_model, tmp_path):
    from lmloss.train.precompute import precompute

    data = write_jsonl(tmp_path / "lists.jsonl", LISTS)
    losses = {}
    for kind in ("copy", "precomputed"):
        run = recipe(
            tiny_model,
            data,
            tmp_path / kind,
            {"name": "lipo"},
            train=FP32,
            reference={"kind": kind},
        )
        if kind == "precomputed":
            base = recipe(tiny_model, data, tmp_path / "pre", {"name": "lipo"}, train=FP32)
            precompute(base, echo=lambda *_: None)
        trainer = Trainer(run, **QUIET)
        losses[kind] = trainer.mode.loss(_batch(trainer), None).loss.item()
        trainer.close()
    assert losses["precomputed"] == pytest.approx(losses["copy"], rel=1e-6)


@pytest.mark.parametrize(
    ("objective", "rows", "message"),
    [
        ({"name": "ce", "token_weights": "w"}, [{"prompt": "a", "completion": "b"}], "'w'"),
        (
            {"name": "grpo", "add": [{"name": "ce", "weight": 1.0}]},
            [{"prompt": "a"}],
            r"'completion', read by \[\[objective.add\]\]",
        ),
    ],
)
def test_columns_read_by_options_and_terms_are_checked_before_the_model_loads(
    tiny_model, tmp_path, objective, rows, message
):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    run = recipe(tiny_model, data, tmp_path / "run", objective)
    from lmloss.train.validate import check

    with pytest.raises(ValueError, match=f"rows.jsonl:1: no column {message}"):
        check(run)
