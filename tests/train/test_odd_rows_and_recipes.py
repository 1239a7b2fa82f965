"""Odd rows and recipe values are refused (or read) before the model loads, in one line
that names the file and line or the recipe key (issue 26).

Rows are read as the JSON standard says (no NaN/Infinity; a byte-order mark and raw line
separators inside strings are fine), numbers are not silently text, CSV rows are named by
the line their record starts on, and ``lmloss validate`` refuses what ``train`` would
refuse only after loading the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_testkit import recipe, write_jsonl

from lmloss.cli import main
from lmloss.train import validate
from lmloss.train.files import read_rows
from lmloss.train.formats import DataError
from lmloss.train.loop import Trainer
from lmloss.train.recipe import parse

GOOD = '{"prompt": "a", "completion": "b"}'


def _jsonl(tmp_path: Path, *lines: str, name: str = "rows.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ---- rows as the JSON standard says


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_are_refused_by_line(tmp_path, constant):
    path = _jsonl(tmp_path, GOOD, f'{{"prompt": "a", "completion": {constant}}}')
    with pytest.raises(DataError, match=rf"rows.jsonl:2: not valid JSON \({constant} is not"):
        read_rows(path)


def test_raw_line_separators_inside_strings_are_text(tmp_path):
    path = tmp_path / "rows.jsonl"
    odd = '{"prompt": "a\u2028b\u2029c\x85d", "completion": "e\u2028"}\n'
    path.write_text(odd + GOOD + "\n" + '{"prompt": 1, "completion": "x"}\n', encoding="utf-8")
    rows, positions = read_rows(path)
    assert rows[0] == {"prompt": "a\u2028b\u2029c\x85d", "completion": "e\u2028"}
    assert positions == [1, 2, 3]  # the separators did not shift the lines


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_utf8_byte_order_mark_is_skipped(tmp_path, suffix):
    body = {".jsonl": GOOD + "\n", ".json": f"[{GOOD}]", ".csv": "prompt,completion\na,b\n"}
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body[suffix].encode())
    assert read_rows(path)[0] == [{"prompt": "a", "completion": "b"}]


def test_a_row_nested_100000_deep_is_one_line(tmp_path):
    path = _jsonl(tmp_path, GOOD, '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DataError, match=r"rows.jsonl:2: nested too deeply"):
        read_rows(path)


def test_quoted_csv_fields_over_several_lines_keep_the_record_lines(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,completion\n"two\nlines",x\n\nb,"y\nz\nw"\nc,5\n')
    rows, positions = read_rows(path)
    assert positions == [2, 5, 8]
    assert rows[2] == {"prompt": "c", "completion": "5"}  # text columns stay text


# ---- rows checked for the objective, with file and line


def _recipe(tiny_model, rows: Path, tmp_path: Path, objective=None, **sections):
    return recipe(tiny_model, rows, tmp_path / "run", objective or {"name": "ce"}, **sections)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "a", "chosen": 5, "rejected": "b"}, r"'chosen' must be text, got int 5"),
        ({"prompt": 0.5, "chosen": "a", "rejected": "b"}, r"'prompt' must be text, got float"),
        ({"prompt": "a", "chosen": True, "rejected": "b"}, "'chosen' must be text, got bool"),
    ],
)
def test_a_number_where_text_is_expected_is_refused(tiny_model, tmp_path, row, message):
    good = {"prompt": "a", "chosen": "b", "rejected": "c"}
    data = write_jsonl(tmp_path / "pairs.jsonl", [good, good, row])
    with pytest.raises(DataError, match=rf"pairs.jsonl:3: column {message}"):
        validate.check(_recipe(tiny_model, data, tmp_path, {"name": "dpo"}))


def test_a_conversation_without_an_assistant_turn_is_found_by_validate(tiny_model, tmp_path):
    talk = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    alone = [{"role": "user", "content": "hi"}]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": talk}, {"messages": alone}])
    with pytest.raises(DataError, match=r"chat.jsonl:2: the conversation has no assistant turn"):
        validate.check(_recipe(tiny_model, data, tmp_path))
    everything = _recipe(tiny_model, data, tmp_path, data={"train_on": "all"})
    assert validate.check(everything).table.format == "messages"


def test_a_too_long_prompt_is_named_by_file_and_line(tiny_model, tmp_path):
    rows = [{"prompt": "ab", "completion": "cd"}] * 3 + [{"prompt": "x" * 40, "completion": "y"}]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    run = _recipe(tiny_model, data, tmp_path, data={"max_prompt_length": 20})
    with pytest.raises(DataError, match=r"sft.jsonl:4: the prompt has \d+ tokens, more than"):
        Trainer(run, echo=lambda *_: None)
    assert not (tmp_path / "run").exists()  # refused before a step: left as found


# ---- recipe values refused while parsing (so by `lmloss validate` too)


BASE = {"model": {"name": "smollm2"}, "data": {"path": "rows.jsonl"}}


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"objective": {"name": "dpo", "beta": "0.1"}}, r"objective.beta must be a number"),
        ({"objective": {"name": "dpo", "beta": [0.1]}}, r"objective.beta must be a number"),
        ({"objective": {"name": "rpo_liu", "sft_mean": 1}}, "sft_mean must be true or false"),
        ({"objective": {"name": "dpo", "divergence": "kl9"}}, "unknown objective.divergence"),
        (
            {"objective": {"name": "grpo", "beta": 0.0, "kl_estimator": "k9"}},
            "unknown objective.kl_estimator 'k9'",
        ),
        ({"objective": {"name": "sinkhorn_kd", "cost": "l2"}}, "unknown objective.cost"),
        ({"train": {"memory_budget": 0}}, "train.memory_budget must be > 0"),
        ({"train": {"memory_budget": -5}}, "train.memory_budget must be > 0"),
        ({"output": {"dir": ""}}, "output.dir must name a folder"),
        ({"train": {"lr": 1e38}}, r"train.lr = 1e\+38 overflows AdamW"),
    ],
)
def test_values_train_refused_late_are_refused_while_parsing(sections, message):
    data = {**BASE, "objective": {"name": "ce"}, **sections}
    with pytest.raises((ValueError, TypeError), match=message):
        parse(data)


def test_the_right_types_still_parse():
    parse({**BASE, "objective": {"name": "dpo", "beta": 1, "divergence": "js"}})
    parse({**BASE, "objective": {"name": "rpo_liu", "sft_mean": False}})


def test_validate_refuses_an_output_dir_that_is_a_file(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}])
    (tmp_path / "taken").write_text("not a folder")
    argv = ["validate", "--set", f"model.name={json.dumps(str(tiny_model))}"]
    argv += ["--set", f"data.path={json.dumps(str(data))}", "--set", "objective.name='ce'"]
    assert main([*argv, "--output", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taken is a file, not a directory" in err[0]
    assert main([*argv, "--output", str(tmp_path / "taken" / "run")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
