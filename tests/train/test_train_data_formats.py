"""Every data format trains a tiny model; formats are detected, converted and masked right."""

from __future__ import annotations

import pytest
from train_testkit import char_tokenizer, recipe, write_jsonl

from lmloss.train.config import DataConfig
from lmloss.train.data import Encoder
from lmloss.train.formats import DataError, detect, normalize, unpair
from lmloss.train.loop import Trainer, train

QUIET = {"echo": lambda *_: None}
USER = {"role": "user", "content": "hi"}
ANSWER = {"role": "assistant", "content": "ok"}

ROWS = {
    "prompt_completion": [{"prompt": "say ab", "completion": "ab"}] * 4,
    "conversational prompt_completion": [{"prompt": [USER], "completion": [ANSWER]}] * 4,
    "messages": [{"messages": [USER, ANSWER, {"role": "user", "content": "more"}, ANSWER]}] * 4,
    "sharegpt": [
        {
            "conversations": [
                {"from": "system", "value": "be short"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "ok"},
            ]
        }
    ]
    * 4,
    "preference": [{"prompt": "is a ok?", "chosen": "yes", "rejected": "no"}] * 4,
    "conversational preference": [{"prompt": [USER], "chosen": [ANSWER], "rejected": [ANSWER]}] * 4,
    "implicit prompt preference": [
        {"chosen": [USER, ANSWER], "rejected": [USER, {"role": "assistant", "content": "no"}]}
    ]
    * 4,
    "unpaired": [
        {"prompt": "is a ok?", "completion": "yes", "label": i % 2 == 0} for i in range(4)
    ],
}
OBJECTIVE = {
    "prompt_completion": "ce",
    "conversational prompt_completion": "ce",
    "messages": "ce",
    "sharegpt": "ce",
    "preference": "dpo",
    "conversational preference": "simpo",
    "implicit prompt preference": "dpo",
    "unpaired": "kto",
}


@pytest.mark.parametrize("case", list(ROWS))
def test_each_format_trains_one_step(tiny_model, tmp_path, case):
    data = write_jsonl(tmp_path / "data.jsonl", ROWS[case])
    run = recipe(
        tiny_model, data, tmp_path / "run", {"name": OBJECTIVE[case]}, train={"max_steps": 1}
    )
    summary = train(run, **QUIET)
    assert summary.steps == 1 and summary.losses[0] == summary.losses[0]  # finite, not NaN


def test_paired_rows_train_kto_with_unpair(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", ROWS["preference"])
    with pytest.raises(ValueError, match=r"data\.unpair = true"):
        Trainer(recipe(tiny_model, data, tmp_path / "a", {"name": "kto"}), **QUIET)
    run = recipe(
        tiny_model,
        data,
        tmp_path / "b",
        {"name": "kto"},
        data={"unpair": True},
        train={"max_steps": 1},
    )
    trainer = Trainer(run, **QUIET)
    assert len(trainer.examples) == 8
    assert [e.row["label"] for e in trainer.examples[:2]] == [True, False]
    assert trainer.run().steps == 1


def test_detection_and_conversion():
    assert detect(["conversations", "id"]) == "sharegpt"
    assert detect(["prompt", "chosen", "rejected"]) == "preference"
    assert detect(["chosen", "rejected"]) == "preference"
    assert detect(["prompt", "completion", "label"]) == "unpaired"
    assert detect(["prompt", "answer"]) == "prompt"
    rows, fmt = normalize(ROWS["sharegpt"][:1], [1], "f.jsonl")
    assert fmt == "sharegpt" and [m["role"] for m in rows[0]["messages"]] == [
        "system",
        "user",
        "assistant",
    ]
    rows, _ = normalize(ROWS["implicit prompt preference"][:1], [1], "f.jsonl")
    assert rows[0]["prompt"] == [USER] and (rows[0]["chosen"], rows[0]["rejected"]) == ("ok", "no")
    paired, _ = normalize(ROWS["preference"][:1], [7], "f.jsonl")
    split, positions = unpair(paired, [7])
    assert [(r["completion"], r["label"]) for r in split] == [("yes", True), ("no", False)]
    assert positions == [7, 7]
    # an explicit format wins over detection (a prompt/completion file read as prompts)
    rows, fmt = normalize(ROWS["prompt_completion"][:1], [1], "f.jsonl", "prompt")
    assert fmt == "prompt"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"conversations": [{"from": "alien", "value": "x"}]}, r"f.jsonl:3: conversations\[0\]"),
        ({"messages": [{"role": "user", "content": None}]}, r"f.jsonl:3: messages\[0\].content"),
        ({"prompt": "a", "completion": "b", "label": "maybe"}, "f.jsonl:3: column 'label'"),
        ({"prompt": "a", "chosen": [USER], "rejected": "b"}, "one assistant message"),
        ({"prompt": 3.5j, "completion": "b"}, "column 'prompt' must be text"),
    ],
)
def test_bad_values_name_file_and_row(row, message):
    with pytest.raises(DataError, match=message):
        normalize([row], [3], "f.jsonl")


def _trained_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([t for t, keep in zip(ids, mask) if keep])


@pytest.mark.parametrize(
    ("train_on", "expected"),
    [
        ("assistant", "one<eos>two<eos>"),
        ("last", "two<eos>"),
        ("all", "<|user|>a<|assistant|>one<eos><|user|>b<|assistant|>two<eos>"),
    ],
)
def test_train_on_chooses_the_trained_turns(train_on, expected):
    tokenizer = char_tokenizer()
    encoder = Encoder(tokenizer, DataConfig(path="x", train_on=train_on))
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "two"},
    ]
    ids, mask = encoder.conversation(messages)
    assert _trained_text(tokenizer, ids, mask).replace(" ", "") == expected


def test_train_on_all_trains_the_prompt_of_prompt_completion_rows(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS["prompt_completion"])
    runs = {
        on: Trainer(
            recipe(tiny_model, data, tmp_path / on, {"name": "ce"}, data={"train_on": on}), **QUIET
        )
        for on in ("assistant", "all")
    }
    counts = {on: t.mode.prepare(t.examples[:1]).tokens for on, t in runs.items()}
    prompt = len(runs["all"].encoder.prompt("say ab"))
    assert counts["all"] == counts["assistant"] + prompt - 1  # the first token has no target


# (loss rtol, gradient tolerance relative to the largest gradient entry): bf16 autocast
# rounds the matmul inputs to 8 significant bits, and packing changes the shapes they have
PACKING_TOLERANCE = {"fp32": (1e-5, 1e-4), "bf16": (1e-3, 1e-2)}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_packed_loss_and_gradients_equal_unpacked(tiny_model, tmp_path, train_on, precision):
    import torch

    rows = [{"prompt": f"say {w}", "completion": w * (i + 1)} for i, w in enumerate("abcdef")]
    data = write_jsonl(tmp_path / "d.jsonl", rows[:6])
    results = {}
    for packed in (False, True):
        run = recipe(
            tiny_model,
            data,
            tmp_path / f"run{packed}",
            {"name": "ce"},
            data={"packing": packed, "train_on": train_on},
            train={"precision": precision},  # bf16: autocast even where the CPU emulates it
        )
        trainer = Trainer(run, **QUIET)
        assert trainer.compute.precision == precision
        batch = trainer.mode.prepare(trainer.examples)
        loss = trainer.mode.loss(batch, batch.tokens).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.trainable.items()}
        results[packed] = (len(trainer.examples), batch.tokens, loss.detach(), grads)
    assert results[True][0] < results[False][0]  # rows did share sequences
    assert results[True][1] == results[False][1]  # the same trained tokens
    loss_rtol, grad_tol = PACKING_TOLERANCE[precision]
    torch.testing.assert_close(results[True][2], results[False][2], atol=0, rtol=loss_rtol)
    for name, grad in results[False][3].items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(
            results[True][3][name], grad, atol=grad_tol * scale, rtol=grad_tol, msg=name
        )


def test_epochs_set_the_number_of_steps(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS["prompt_completion"] * 5)  # 20 rows
    run = recipe(
        tiny_model, data, tmp_path / "run", {"name": "ce"}, train={"epochs": 1.5, "batch_size": 4}
    )
    trainer = Trainer(run, **QUIET)
    assert trainer.recipe.train.max_steps == 8  # ceil(1.5 * 20 / 4)
    assert trainer.run().steps == 8
    assert trainer.sampler.epoch == 1  # the second pass is under way


def test_eval_path_logs_held_out_loss_and_samples(tiny_model, tmp_path):
    import json

    data = write_jsonl(tmp_path / "d.jsonl", ROWS["messages"])
    run = recipe(
        tiny_model,
        data,
        tmp_path / "run",
        {"name": "ce"},
        data={"eval_path": str(data)},
        eval={"every": 1, "max_new_tokens": 3},
        train={"max_steps": 2},
    )
    summary = train(run, **QUIET)
    evals = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2]
    # the same four rows, one batch: the first held-out loss is the first training loss
    assert abs(evals[0]["eval_loss"] - summary.losses[0]) < 1e-5
    # the held-out loss before and after is the summary's, and judged (SFT on those rows)
    assert summary.metrics("before") == {"eval_loss": evals[0]["eval_loss"]}
    assert summary.metrics("after") == {"eval_loss": evals[-1]["eval_loss"]}
    assert summary.health.line().startswith(
        f"ok: held-out loss {evals[0]['eval_loss']:.4g} -> {evals[-1]['eval_loss']:.4g}"
    )
    samples = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    first = json.loads(samples[0])
    assert first["step"] == 0 and first["prompt"].endswith("<|assistant|>") and "output" in first


def test_a_named_format_the_rows_do_not_have_is_named():
    with pytest.raises(DataError, match=r"f.jsonl:4: no column 'chosen'"):
        normalize(ROWS["prompt_completion"][:1], [4], "f.jsonl", "preference")
    with pytest.raises(DataError, match=r"f.jsonl:4: column 'messages' is missing or empty"):
        normalize(ROWS["prompt_completion"][:1], [4], "f.jsonl", "messages")
