"""A run says when it went wrong: held-out regressions and likely reward hacking are judged
(lmloss.train.health) and reported in summary.md, summary.json and the last console line;
the main job's rewards give a wrong answer no credit."""

from __future__ import annotations

import json
import random

import pytest
from train_testkit import recipe, write_jsonl

from lmloss.cli import main
from lmloss.train import health, load_recipe
from lmloss.train import rewards as reward_fns
from lmloss.train.loop import Trainer
from lmloss.train.validate import check

VERIFIER, FORMAT = "reward/exact_numeric", "reward/format_number"


def history(verifier: list[float], format_: list[float]) -> list[dict]:
    return [
        {"step": s + 1, "reward": v + f, VERIFIER: v, FORMAT: f}
        for s, (v, f) in enumerate(zip(verifier, format_))
    ]


def noisy(start: float, end: float, steps: int = 30, noise: float = 0.05, seed: int = 0):
    """A linear trend from ``start`` to ``end`` plus uniform noise, clipped to [0, 1]."""
    rng = random.Random(seed)
    line = [start + (end - start) * s / (steps - 1) for s in range(steps)]
    return [min(1.0, max(0.0, v + rng.uniform(-noise, noise))) for v in line]


# ---- reward hacking on constructed metrics histories


def test_reward_hacking_flagged_when_a_reward_rises_while_the_verifier_falls():
    # the bf16 main-job run of issue 20: bare numbers took over, right answers vanished
    rows = history(noisy(0.3, 0.03), noisy(0.05, 1.0, seed=1))
    found = health.reward_hacking(rows, "exact_numeric")
    assert [f.details["reward"] for f in found] == [FORMAT]
    first, last = found[0].details["verifier_first"], found[0].details["verifier_last"]
    assert first > 0.2 and last < 0.1
    assert "likely reward hacking" in found[0].message and FORMAT in found[0].message


@pytest.mark.parametrize(
    "verifier, format_",
    [
        (noisy(0.3, 0.8), noisy(0.05, 1.0, seed=1)),  # both rise: the format helps
        (noisy(0.3, 0.3, seed=2), noisy(0.05, 1.0, seed=1)),  # verifier flat
        (noisy(0.5, 0.5, noise=0.3, seed=3), noisy(0.5, 0.5, noise=0.3, seed=4)),  # noise
        (noisy(0.3, 0.03), noisy(0.5, 0.5, seed=1)),  # verifier falls, nothing rises
    ],
    ids=["healthy", "verifier-flat", "noise-only", "verifier-falls-alone"],
)
def test_reward_hacking_not_flagged_on_healthy_or_noisy_histories(verifier, format_):
    assert health.reward_hacking(history(verifier, format_), "exact_numeric") == []


def test_reward_hacking_needs_enough_steps_and_a_minimum_effect():
    short = history([0.3, 0.3, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0])  # 4 steps: too few to judge
    assert health.reward_hacking(short, "exact_numeric") == []
    # noiseless but tiny moves (0.02): below MIN_EFFECT
    tiny = history([0.32] * 10 + [0.30] * 10, [0.10] * 10 + [0.12] * 10)
    assert health.reward_hacking(tiny, "exact_numeric") == []
    # the same shape with a real effect is flagged, however clean the series
    clear = history([0.32] * 10 + [0.10] * 10, [0.10] * 10 + [0.60] * 10)
    assert len(health.reward_hacking(clear, "exact_numeric")) == 1


def test_trend_is_the_first_and_last_quarter_mean_with_its_standard_error():
    values = [1.0, 3.0, 0, 0, 0, 0, 5.0, 9.0]  # quarters of 2: means 2 and 7
    trend = health.Trend.of(values)
    assert (trend.first, trend.last) == (2.0, 7.0)
    error = ((2.0 + 8.0) / 2) ** 0.5  # sample variances 2 and 8 over 2 steps each
    assert trend.z == pytest.approx(5.0 / error)


# ---- regressions and the verdict line


def test_regressions_compare_after_with_before():
    before, after = {"accuracy": 0.435, "eval_loss": 2.0}, {"accuracy": 0.04, "eval_loss": 2.5}
    found = health.regressions(before, after)
    assert [f.details["metric"] for f in found] == ["accuracy", "eval_loss"]
    assert "held-out accuracy is worse after training than before: 0.435 -> 0.040" in (
        found[0].message
    )
    assert health.regressions(after, before) == []
    assert health.regressions({"accuracy": 0.5}, {}) == []  # not measured after: not judged


def test_health_line_and_json():
    rows = history(noisy(0.3, 0.03), noisy(0.05, 1.0, seed=1))
    bad = health.assess({"accuracy": 0.435}, {"accuracy": 0.04}, rows, "exact_numeric")
    assert bad.line().startswith("WARNING: this run went wrong: held-out accuracy is worse")
    assert "likely reward hacking" in bad.line()
    data = bad.as_dict()
    assert (data["ok"], data["regressed"], data["reward_hacking"]) == (False, True, True)
    assert json.loads(json.dumps(data)) == data
    good = health.assess(
        {"accuracy": 0.4},
        {"accuracy": 0.8},
        history(noisy(0.3, 0.8), noisy(0.1, 0.9)),
        "exact_numeric",
    )
    assert good.line() == (
        "ok: held-out accuracy 0.400 -> 0.800; "
        "no reward rose while the verifier's reward/exact_numeric fell"
    )
    assert good.as_dict()["ok"] is True
    nothing = health.assess({}, {}, [], None)
    assert nothing.line().startswith("not checked:") and nothing.as_dict()["ok"] is True


# ---- the verifier: a recipe key, checked before any model loads


def test_main_recipe_rewards_give_a_wrong_answer_no_credit():
    main_job = load_recipe("main")
    assert health.verifier_of(main_job) == "exact_numeric"
    rewards = reward_fns.build(main_job.policy.rewards, main_job.policy.reward_weights)
    wrong = ["7", " 7.", "7\n", "3 + 5 = 8, so 7", "The answer is 7.", "", "eight"]
    right = ["8", "The answer is 8.", "3 + 5 = 8"]
    completions = wrong + right
    total, _ = reward_fns.score(
        rewards, completions, ["Tom has 3 apples and gets 5 more."] * 10, {"answer": ["8"] * 10}
    )
    assert total[: len(wrong)].tolist() == [0.0] * len(wrong)  # bare or not: no credit
    assert all(value > 0 for value in total[len(wrong) :].tolist())


def test_verifier_key_defaults_to_the_task_grader_and_is_checked(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "answer": "1"}])

    def policy_recipe(**policy):
        return recipe(
            tiny_model, data, tmp_path / "run", {"name": "grpo"}, policy=policy,
            eval={"task": "arithmetic"},
        )  # fmt: skip

    assert health.verifier_of(policy_recipe(rewards=["format_number", "exact_numeric"])) == (
        "exact_numeric"
    )
    assert health.verifier_of(policy_recipe(rewards=["format_number"])) is None
    chosen = policy_recipe(rewards=["exact_numeric", "format_number"], verifier="format_number")
    assert health.verifier_of(chosen) == "format_number"
    with pytest.raises(ValueError, match=r"policy.verifier 'exact' must be one of policy.rewards"):
        policy_recipe(rewards=["exact_numeric"], verifier="exact")
    lines = check(chosen).lines  # lmloss validate says which reward is the verifier
    assert "rewards: exact_numeric, format_number; verifier: format_number" in lines


# ---- end to end: a run whose held-out accuracy falls says so, in all three places


def test_run_whose_accuracy_falls_is_reported(tiny_model, tmp_path, monkeypatch, capsys):
    accuracies = iter([0.6, 0.1])  # before, after

    def fake_evaluate(self, size=None):
        value = next(accuracies)
        metrics = {"accuracy": value, "bare_number": 1.0, "answer_tokens": 2.0, "problems": 4}
        return {"metrics": metrics, "samples": []}

    monkeypatch.setattr(Trainer, "evaluate", fake_evaluate)
    data = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"what is {i}?", "answer": str(i)} for i in range(4)]
    )
    settings = {
        "model.name": json.dumps(str(tiny_model)),
        "data.path": json.dumps(str(data)),
        "objective.name": "grpo",
        "train.max_steps": 1,
        "train.batch_size": 2,
        "train.precision": "fp32",
        "policy.group_size": 2,
        "policy.max_new_tokens": 2,
        "eval.task": "arithmetic",
        "output.progress": "false",
        "output.plot": "false",
        "output.save_model": "false",
    }
    run = tmp_path / "run"
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    assert main(["train", *overrides, "--output", str(run)]) == 0
    last_line = capsys.readouterr().out.rstrip("\n").splitlines()[-1]
    expected = "held-out accuracy is worse after training than before: 0.600 -> 0.100"
    assert last_line.startswith("WARNING: this run went wrong:") and expected in last_line
    assert (run / "summary.md").read_text().rstrip("\n").splitlines()[-1] == last_line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["health"]["ok"] is False and summary["health"]["regressed"] is True
    assert summary["health"]["findings"][0]["details"] == {
        "metric": "accuracy", "before": 0.6, "after": 0.1
    }  # fmt: skip
