"""Data-parallel training on gloo: 2 ranks x 2 micro-batches == one process, exactly.

Two processes (torch.multiprocessing spawn, the same environment torchrun sets) train one
optimizer step of SFT, DPO, KTO and token-mean GRPO on a float64 tiny model; the loss and
the summed gradients must equal those of a single process over the same global batch.
GRPO is fed fixed completions sampled once in the parent (each rank gets its prompts'
groups), since the comparison is about normalization, not about sampling.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from train_testkit import recipe, write_jsonl

import lmloss
from lmloss.train import model_loading
from lmloss.train.distributed import World, full_tensors
from lmloss.train.loop import Trainer
from lmloss.train.modes import Batch

WORLD, BATCH, ACCUM, GROUP = 2, 4, 2, 2  # global micro-batch 4 = 2 ranks x 2 examples
QUIET = {"echo": lambda *a, **k: None}
CASES = {
    "sft": {"name": "ce"},
    "dpo": {"name": "dpo", "beta": 0.5},
    "kto": {"name": "kto", "beta": 0.5},
    "grpo": {"name": "grpo", "aggregation": "token_mean", "beta": 0.04},
}
PARALLEL = ("ddp", "fsdp2")
WORDS = ["ab", "cde", "f", "ghij", "kl", "mnopq", "r", "stu"]


def _data(root: Path, case: str) -> tuple[Path, dict]:
    path = root / f"{case}.jsonl"
    if case == "sft":
        rows = [{"prompt": f"say {w}", "completion": w * (i % 3 + 1)} for i, w in enumerate(WORDS)]
    elif case == "dpo":
        rows = [{"prompt": f"is {w} ok?", "chosen": w * 2, "rejected": "no"} for w in WORDS]
    elif case == "kto":
        rows = [
            {"prompt": f"is {w} ok?", "completion": w * (i % 2 + 1), "label": i % 3 != 0}
            for i, w in enumerate(WORDS)
        ]
    else:
        rows = [{"prompt": f"go {w}"} for w in WORDS]
    extra = {}
    if case == "grpo":
        extra = {
            "policy": {
                "group_size": GROUP,
                "max_new_tokens": 5,
                "rewards": ["train_testkit:letter_a_reward"],
            }
        }
    return write_jsonl(path, rows), extra


def _recipe(model: Path, root: Path, case: str, run: str, parallel: str = "ddp"):
    data, extra = _data(root, case)
    return recipe(
        model,
        data,
        root / run,
        CASES[case],
        train={
            "batch_size": BATCH,
            "grad_accum": ACCUM,
            "max_grad_norm": 0.0,
            "parallel": parallel,
        },
        data={"shuffle": False},
        **extra,
    )


def _fixed_generation(trainer: Trainer, full: dict) -> None:
    """prepare_shard hands out the rows of completions sampled once (``full``)."""
    state = {"micro": 0}

    def prepare_shard(examples, shard):
        first = state["micro"] * BATCH + shard.start
        state["micro"] += 1
        rows = slice(first * GROUP, (first + shard.stop - shard.start) * GROUP)
        tensors = {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in full.items()}
        tokens = int((tensors["targets"] != -100).sum())
        return Batch(examples=len(tensors["targets"]), tokens=tokens, tensors=tensors)

    trainer.mode.prepare_shard = prepare_shard


def _one_step(trainer: Trainer, root: Path, case: str) -> dict:
    """Loss and the (summed) gradients the optimizer sees in one step."""
    if case == "grpo":
        _fixed_generation(trainer, torch.load(root / "grpo-batch.pt", weights_only=False))
    # move the reference off the policy (the same way in every process): KTO's KL
    # reference point is 0 at the very first step otherwise, and would test nothing
    if trainer.ctx.reference is not None:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in trainer.ctx.reference.model.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    seen = {}

    def record(*_):  # FSDP2's sharded gradients are gathered whole
        grads = full_tensors({n: p.grad.detach() for n, p in trainer.trainable.items()})
        seen.update({n: g.clone() for n, g in grads.items()})

    hook = trainer.optimizer.register_step_pre_hook(record)
    row = trainer.train_step()
    hook.remove()
    return {"loss": row["loss"], "tokens": row["tokens"], "kl": row.get("kl"), "grads": seen}


def _worker(rank: int, port: int, model: str, root: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    model_loading.DTYPES["float32"] = torch.float64  # exact comparisons
    root_path = Path(root)
    results = {}
    for parallel in PARALLEL:
        trainers = {}
        for case in CASES:
            run = _recipe(Path(model), root_path, case, f"{parallel}-{case}", parallel)
            trainers[case] = Trainer(run, **QUIET)
            results[parallel, case] = _one_step(trainers[case], root_path, case)
        # resume: rank 0 writes the checkpoint (FSDP2: gathered whole), every rank loads it;
        # the second step goes on the same from the live run and from the resumed one
        sft = trainers["sft"]
        sft.save()
        results[parallel, "second"] = (sft.train_step()["loss"], full_tensors(sft.trainable))
        resumed = Trainer(sft.recipe, resume=True, **QUIET)
        results[parallel, "resumed_step"] = resumed.step
        results[parallel, "resumed"] = (
            resumed.train_step()["loss"],
            full_tensors(resumed.trainable),
        )
        results[parallel, "sharded"] = any(isinstance(p, DTensor) for p in sft.trainable.values())
    # batch-wide advantage estimators see every rank's rewards (bnpo fits a Beta to them)
    policy = trainers["grpo"].mode
    policy.config = dataclasses.replace(policy.config, advantage="bnpo")
    rewards = torch.linspace(0, 1, 4 * GROUP, dtype=torch.float64) ** 2
    mine = slice(rank * 2 * GROUP, (rank + 1) * 2 * GROUP)
    results["advantages"] = (policy._advantages(rewards[mine], GROUP), rewards, mine)
    torch.save(results, root_path / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """Single-process references (this process) and the 2-rank results (spawned)."""
    root = tmp_path_factory.mktemp("ddp")
    original = model_loading.DTYPES["float32"]
    model_loading.DTYPES["float32"] = torch.float64
    try:
        single = {}
        for case in CASES:
            trainer = Trainer(_recipe(tiny_model, root, case, f"single-{case}"), **QUIET)
            if case == "grpo":  # sample once; both runs train on these completions
                torch.manual_seed(0)
                full = trainer.mode.prepare(trainer.examples[: BATCH * ACCUM])
                torch.save(full.tensors, root / "grpo-batch.pt")
            single[case] = _one_step(trainer, root, case)
    finally:
        model_loading.DTYPES["float32"] = original
    mp.spawn(_worker, args=(_free_port(), str(tiny_model), str(root)), nprocs=WORLD, join=True)
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return single, ranks


@pytest.mark.parametrize("parallel", PARALLEL)
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(runs, case, parallel):
    single, ranks = runs
    for result in ranks:
        assert result[parallel, "sharded"] == (parallel == "fsdp2")
        mine = result[parallel, case]
        assert mine["tokens"] == single[case]["tokens"]
        if case == "kto":  # a reference point away from its clamp at 0 (a global mean)
            assert single[case]["kl"] > 1e-3
            assert mine["kl"] == pytest.approx(single[case]["kl"], abs=1e-10, rel=0)
        assert mine["loss"] == pytest.approx(single[case]["loss"], abs=1e-10, rel=0)
        assert set(mine["grads"]) == set(single[case]["grads"])
        for name, grad in single[case]["grads"].items():
            assert grad.dtype == torch.float64
            assert grad.abs().sum() > 0 or name.endswith("bias")
            torch.testing.assert_close(mine["grads"][name], grad, atol=1e-10, rtol=0)


def test_batch_wide_advantages_see_every_rank(runs):
    _, ranks = runs
    for result in ranks:
        mine, rewards, rows = result["advantages"]
        whole = lmloss.advantages("bnpo", rewards, group_size=GROUP)
        torch.testing.assert_close(mine, whole[rows], atol=1e-12, rtol=0)
        alone = lmloss.advantages("bnpo", rewards[rows], group_size=GROUP)
        assert not torch.allclose(mine, alone)  # the global fit differs from a per-rank one


@pytest.mark.parametrize("parallel", PARALLEL)
def test_resume_under_two_ranks(runs, parallel):
    _, ranks = runs
    for result in ranks:
        assert result[parallel, "resumed_step"] == 1
        loss, params = result[parallel, "second"]
        resumed_loss, resumed_params = result[parallel, "resumed"]
        assert resumed_loss == pytest.approx(loss, abs=1e-12, rel=0)
        for name, value in params.items():
            torch.testing.assert_close(resumed_params[name], value, atol=1e-12, rtol=0)
            assert torch.equal(ranks[0][parallel, "second"][1][name], value)  # same replicas


def test_world_size_must_divide_the_batch(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(World, "from_env", classmethod(lambda cls: cls(rank=0, size=3)))
    run = _recipe(tiny_model, tmp_path, "sft", "bad")
    with pytest.raises(ValueError, match=r"batch_size = 4 .* not divisible by the world size 3"):
        Trainer(run, **QUIET)
    assert not (tmp_path / "bad" / "recipe.json").exists()  # nothing ran


def test_shards_tile_the_global_batch():
    slices = [World(rank=r, size=4).shard(8) for r in range(4)]
    assert [(s.start, s.stop) for s in slices] == [(0, 2), (2, 4), (4, 6), (6, 8)]
