"""`lmloss validate` and the trainer's first checks catch each bad input before a model loads."""

from __future__ import annotations

import pytest
from train_testkit import write_jsonl

from lmloss import cli
from lmloss.train import model_loading
from lmloss.train.loop import Trainer
from lmloss.train.recipe import load, parse

QUIET = {"echo": lambda *_: None}
GOOD = [{"prompt": "say ab", "completion": "ab"}, {"prompt": "say c", "completion": "c"}]


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: every check below must come first."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(model_loading, "load", refuse)


def _recipe(tiny_model, tmp_path, data_path, **sections):
    base = {
        "model": {"name": str(tiny_model)},
        "data": {"path": str(data_path)},
        "objective": {"name": "ce"},
        "output": {"dir": str(tmp_path / "run")},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def _bad_inputs(tmp_path, tiny_model):
    """(recipe sections, resume, expected message) of each bad input."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a" "completion": 1}\n')
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"prompt,completion\nok,fine\ncaf\xe9,x\n")
    null = write_jsonl(tmp_path / "null.jsonl", [GOOD[0], {"prompt": None, "completion": "x"}])
    good = write_jsonl(tmp_path / "good.jsonl", GOOD)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "go", "answer": "1"}])
    (tmp_path / "rewards_bad.py").write_text("def score(text):\n    return [0.0]\n")
    return [
        ({"data": {"path": str(empty)}}, f"{empty}:1: the file is empty"),
        ({"data": {"path": str(broken)}}, f"{broken}:2: not valid JSON"),
        ({"data": {"path": str(latin)}}, f"{latin}:3: not UTF-8"),
        ({"data": {"path": str(null)}}, f"{null}:2: column 'prompt' is empty"),
        ({"data": {"path": str(tmp_path)}}, f"{tmp_path}: is a folder"),
        ({"data": {"columns": {"prompt": "question"}}}, "no column 'question'"),
        (
            {"objective": {"name": "dpo"}},
            r"needs preference rows \(prompt, chosen, rejected\): it lacks column\(s\) 'chosen'",
        ),
        (
            {
                "data": {"path": str(prompts)},
                "objective": {"name": "grpo"},
                "policy": {"rewards": ["no_such_module:f"]},
            },
            "reward 'no_such_module:f' cannot be loaded",
        ),
        (
            {
                "data": {"path": str(prompts)},
                "objective": {"name": "grpo"},
                "policy": {"rewards": ["rewards_bad:score"]},
            },
            "must take a 'completions' keyword",
        ),
        ({"eval": {"task": "algebra"}}, "eval.task"),
        ({"output": {"report_to": ["wandb"]}}, "the 'wandb' package is not installed"),
        ({"model": {"name": str(tmp_path / "nowhere")}}, "neither a bundled model"),
        ({"__resume__": True, "data": {"path": str(good)}}, "--resume: no checkpoint"),
    ]


def test_each_bad_input_is_found_before_the_model_loads(
    tiny_model, tmp_path, no_model_load, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # reward modules come from the current folder
    good = write_jsonl(tmp_path / "good.jsonl", GOOD)
    for sections, message in _bad_inputs(tmp_path, tiny_model):
        resume = sections.pop("__resume__", False)
        data = _recipe(tiny_model, tmp_path, good, **sections)
        with pytest.raises(ValueError, match=message):
            Trainer(parse(data), resume=resume, **QUIET)
        # the same through `lmloss validate`: one line, exit status 2
        overrides = [f"{s}.{k}={_toml(v)}" for s, values in data.items() for k, v in values.items()]
        args = ["validate", *[a for o in overrides for a in ("--set", o)]]
        assert cli.main(args + (["--resume"] if resume else [])) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lmloss: error: ") and "\n" not in err, err


def _toml(value) -> str:
    import json

    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def test_validate_passes_a_good_recipe_without_writing(tiny_model, tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", GOOD)
    (tmp_path / "recipe.toml").write_text(
        f'[model]\nname = "{tiny_model}"\n[data]\npath = "{good}"\n[objective]\nname = "ce"\n'
        f'[output]\ndir = "{tmp_path / "run"}"\n'
    )
    assert cli.main(["validate", str(tmp_path / "recipe.toml")]) == 0
    out = capsys.readouterr().out
    assert "2 rows, format prompt_completion" in out and out.rstrip().splitlines()[-1].startswith(
        "ok"
    )
    assert not (tmp_path / "run").exists()


def test_changing_the_objective_warns_about_its_hyper_parameters(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[model]\nname = "smollm2"\n[data]\ntask = "arithmetic"\n'
        '[objective]\nname = "dpo"\nbeta = 0.3\nalpha = 0.7\n'
    )
    said = []
    recipe = load(str(path), ["objective.name=simpo"], warn=said.append)
    assert recipe.objective == "simpo" and recipe.hyper == {"beta": 0.3}
    assert any("keeps beta = 0.3" in s for s in said)
    assert any("takes no 'alpha'" in s for s in said)


def test_describe_lists_the_data_columns(capsys):
    assert cli.main(["describe", "kto"]) == 0
    assert "data columns (lmloss train): prompt + completion + label" in capsys.readouterr().out


def test_a_hub_id_in_the_local_cache_resolves_and_loads(tiny_model, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    from lmloss.train.validate import resolve_model

    snapshot = tmp_path / "models--someone--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_model, snapshot)
    (tmp_path / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: say so, as a user would
    assert resolve_model("someone/tiny") == str(snapshot)
    with pytest.raises(ValueError, match=r"not in the Hub cache .* the Hub is offline"):
        resolve_model("someone/absent")
    model, _ = model_loading.load_pretrained("someone/tiny")
    assert model.config.vocab_size == 49


def test_reward_signatures(tmp_path, monkeypatch):
    from lmloss.train.validate import check_reward

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_rewards.py").write_text(
        "def good(completions, prompts, answer):\n    return [0.0] * len(completions)\n"
        "def loose(completions, **columns):\n    return [0.0] * len(completions)\n"
        "def narrow(completions, answer):\n    return [0.0] * len(completions)\n"
        "def needy(completions, score, **columns):\n    return [0.0] * len(completions)\n"
    )
    check_reward("my_rewards:good", {"answer"})
    check_reward("my_rewards:loose", {"answer", "id"})
    with pytest.raises(ValueError, match=r"does not take the argument\(s\) 'prompts'"):
        check_reward("my_rewards:narrow", {"answer"})
    with pytest.raises(ValueError, match=r"needs argument\(s\) 'score'"):
        check_reward("my_rewards:needy", {"answer"})


def test_csv_json_and_parquet_rows_keep_their_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmloss.train.files import read_rows

    (tmp_path / "d.csv").write_text('prompt,completion,label\n"a, b",x,1\nc,y,0\n')
    rows, positions = read_rows(tmp_path / "d.csv")
    assert rows[0] == {"prompt": "a, b", "completion": "x", "label": 1} and positions == [2, 3]
    (tmp_path / "d.json").write_text('[{"prompt": "a"}, {"prompt": "b"}]')
    assert read_rows(tmp_path / "d.json")[0] == [{"prompt": "a"}, {"prompt": "b"}]
    pq.write_table(pa.table({"prompt": ["a", "b"], "score": [0.5, 1.0]}), tmp_path / "d.parquet")
    rows, positions = read_rows(tmp_path / "d.parquet")
    assert rows[1] == {"prompt": "b", "score": 1.0} and positions == [1, 2]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: not a readable Parquet file"):
        read_rows(tmp_path / "bad.parquet")
    (tmp_path / "list.jsonl").write_text('{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"list.jsonl:2: a row must be a JSON object"):
        read_rows(tmp_path / "list.jsonl")
