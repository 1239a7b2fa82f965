"""Reward models: trained with bradley_terry from a causal LM, exported, loaded, used as a judge."""

from __future__ import annotations

import json

import pytest
import torch
from train_testkit import recipe, write_jsonl

from lmloss.train.loop import Trainer, train
from lmloss.train.progress import read_jsonl

PAIRS = [
    {"prompt": f"is {x} ok?", "chosen": "yes " + x, "rejected": "no way " + x} for x in "abcdefgh"
]


def _reward_recipe(tiny_model, tmp_path, rows=PAIRS, objective=None, **sections):
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    base = {"max_steps": 15, "batch_size": 4, "lr": 1e-2, "precision": "fp32"}
    return recipe(
        tiny_model,
        data,
        tmp_path / "rm",
        {"name": "bradley_terry", **(objective or {})},
        train={**base, **sections.pop("train", {})},
        **sections,
    )


@pytest.fixture(scope="module")
def trained_rm(tiny_model, tmp_path_factory):
    """A reward model trained to prefer "yes ..." over "no way ...", exported."""
    tmp = tmp_path_factory.mktemp("rm")
    run = _reward_recipe(tiny_model, tmp, output={"save_model": True})
    summary = train(run, echo=lambda *_: None)
    return tmp / "rm", summary


def test_reward_model_learns_the_preference_and_logs_accuracy(trained_rm):
    run_dir, summary = trained_rm
    assert summary.losses[-1] < 0.5 * summary.losses[0], summary.losses
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["accuracy"] == 1.0 and rows[-1]["margin"] > rows[0]["margin"]


def test_exported_model_loads_with_auto_sequence_classification(trained_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, _ = trained_rm
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    # the same scores as the trainer's scoring path (right padding, last non-pad token)
    from lmloss.train.config import DataConfig
    from lmloss.train.reward_model import RewardModel

    judge = RewardModel(str(run_dir / "model"), data=DataConfig(path="x"))
    got = judge(["is a ok?", "is b ok?"], ["yes a", "no way b"])
    assert got[0] > got[1]
    template = tokenizer.apply_chat_template(
        [{"role": "user", "content": "is a ok?"}, {"role": "assistant", "content": "yes a"}],
        tokenize=True,
        return_dict=False,
    )
    with torch.no_grad():
        direct = model(input_ids=torch.tensor([template])).logits[0, 0]
    torch.testing.assert_close(got[0], direct)


def test_score_head_is_a_plain_backbone_copy(tiny_model):
    """The classifier's backbone is the causal LM's, weight for weight."""
    from lmloss.train.model_loading import load_pretrained
    from lmloss.train.reward_model import from_causal_lm

    causal, tokenizer = load_pretrained(str(tiny_model))
    model = from_causal_lm(causal, tokenizer)
    for name, tensor in causal.model.state_dict().items():
        torch.testing.assert_close(model.model.state_dict()[name], tensor)
    ids = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        hidden = causal.model(input_ids=ids).last_hidden_state[0, -1]
        want = model.score(hidden)[0]
        torch.testing.assert_close(model(input_ids=ids).logits[0, 0], want)


def test_margin_column_and_centering_reach_the_loss(tiny_model, tmp_path):
    rows = [{**r, "margin": 0.5 * i} for i, r in enumerate(PAIRS)]
    run = _reward_recipe(
        tiny_model,
        tmp_path,
        rows,
        objective={"center_rewards_coefficient": 0.1},
        train={"max_steps": 1, "batch_size": 8},
    )
    trainer = Trainer(run, echo=lambda *_: None)
    try:
        batch = trainer.mode.prepare(trainer.examples)
        out = trainer.mode.loss(batch, None)
        from lmloss.train.reward_model import scores

        with torch.no_grad():
            values = scores(trainer.model, batch.tensors["ids"], batch.tensors["attention"])
        w, r = values.chunk(2)
        m = torch.tensor([0.5 * i for i in range(8)])
        want = (-torch.nn.functional.logsigmoid(w - r - m)).mean() + 0.1 * ((w + r) ** 2).mean()
        torch.testing.assert_close(out.loss.detach(), want)
    finally:
        trainer.close()


def test_non_pairwise_classify_objective_is_refused_before_loading(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="reward models on preference pairs"):
        _reward_recipe(tiny_model, tmp_path, objective={"name": "auc"})


def test_reward_model_grades_online_and_policy(trained_rm, tiny_model, tmp_path):
    """policy.reward_model and online.reward_model add the model's score to the judge."""
    run_dir, _ = trained_rm
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"is {x} ok?"} for x in "abcd"])
    for objective, section in (("grpo", "policy"), ("dpo", "online")):
        judge = {"rewards": [], "reward_model": str(run_dir / "model"), "reward_model_weight": 2.0}
        extra = {"group_size": 2} if section == "policy" else {"samples": 2}
        run = recipe(
            tiny_model,
            prompts,
            tmp_path / f"run_{section}",
            {"name": objective},
            train={"max_steps": 1, "batch_size": 2, "precision": "fp32"},
            **{section: {"max_new_tokens": 4, **judge, **extra}},
        )
        trainer = Trainer(run, echo=lambda *_: None)
        try:
            judge_of = trainer.mode.judge
            texts = ["yes a", "no way a", "yes b", "no way b"]
            rows = [{"prompt": "is a ok?"}, {"prompt": "is b ok?"}]
            total, means = judge_of.grade(rows, texts, 2)
            direct = judge_of.model(["is a ok?"] * 2 + ["is b ok?"] * 2, texts)
            torch.testing.assert_close(total, 2.0 * direct)
            assert means["reward_model"] == pytest.approx(float(direct.mean()))
            row = trainer.train_step()
            assert "reward/reward_model" in row
        finally:
            trainer.close()


def test_validate_refuses_a_causal_lm_as_reward_model(tiny_model, tmp_path):
    from lmloss.train.validate import check

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    run = recipe(
        tiny_model,
        prompts,
        tmp_path / "run",
        {"name": "grpo"},
        policy={"rewards": [], "reward_model": str(tiny_model)},
    )
    with pytest.raises(ValueError, match="not a sequence-classification model"):
        check(run)
    json.dumps(run.as_dict())  # the recipe with the new keys still saves


def test_validate_checks_the_margin_column(tiny_model, tmp_path):
    from lmloss.train.validate import check

    rows = [{**r, "margin": 1.0} for r in PAIRS]
    rows[3]["margin"] = "big"
    with pytest.raises(ValueError, match="row 4: column 'margin' must be a number"):
        check(_reward_recipe(tiny_model, tmp_path, rows))


def test_lmloss_eval_reports_pairwise_accuracy(trained_rm, tmp_path, capsys):
    from lmloss.cli import main

    run_dir, _ = trained_rm
    held_out = [
        {"prompt": "is z ok?", "chosen": "yes z", "rejected": "no way z"},
        {"prompt": "is y ok?", "chosen": "no way y", "rejected": "yes y"},  # reversed
    ]
    path = write_jsonl(tmp_path / "heldout.jsonl", held_out)
    assert main(["eval", str(run_dir), "--pairs", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 2 and result["pairwise_accuracy"] == 0.5
    from lmloss.train.config import DataConfig
    from lmloss.train.reward_model import RewardModel

    judge = RewardModel(str(run_dir / "model"), data=DataConfig(path="x"))
    prompts = ["is z ok?", "is y ok?"]
    gap = judge(prompts, ["yes z", "no way y"]) - judge(prompts, ["no way z", "yes y"])
    assert result["margin"] == pytest.approx(float(gap.mean()), abs=1e-5)


def test_held_out_file_gives_an_eval_loss(tiny_model, tmp_path):
    held_out = write_jsonl(tmp_path / "heldout.jsonl", PAIRS[:3])
    run = _reward_recipe(
        tiny_model,
        tmp_path,
        data={"eval_path": str(held_out)},
        train={"max_steps": 1},
        eval={"before": False},
    )
    train(run, echo=lambda *_: None)
    rows = read_jsonl(tmp_path / "rm" / "eval.jsonl")
    assert len(rows) == 1 and rows[0]["eval_loss"] > 0


def test_bf16_reward_model_learns(tiny_model, tmp_path):
    run = _reward_recipe(tiny_model, tmp_path, train={"precision": "bf16"})
    summary = train(run, echo=lambda *_: None)
    assert summary.losses[-1] < 0.5 * summary.losses[0], summary.losses


def test_lora_reward_model_trains_its_head_and_exports(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run = _reward_recipe(
        tiny_model,
        tmp_path,
        lora={"enabled": True, "r": 4},
        train={"max_steps": 3},
        output={"save_model": True},
    )
    trainer = Trainer(run, echo=lambda *_: None)
    try:
        names = list(trainer.trainable)
        assert any("lora_" in n for n in names) and any("score" in n for n in names)
        trainer.run()
    finally:
        trainer.close()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model")
    assert model.config.num_labels == 1
