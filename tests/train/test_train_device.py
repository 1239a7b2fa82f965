"""Device, precision and threads of a run; Hub ids; a recipe's device reaches every tensor."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from train_testkit import letter_a_reward, recipe, save_tiny_model, write_jsonl

from lmloss.train import device as compute
from lmloss.train import model_loading
from lmloss.train.loop import Trainer
from lmloss.train.recipe import parse

XEON_NO_BF16 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bitalg
"""
SAPPHIRE_RAPIDS = XEON_NO_BF16.replace("avx512_bitalg", "avx512_bitalg avx512_bf16 amx_bf16")


def never(*_args, **_kwargs):
    return False


def always(*_args, **_kwargs):
    return True


# ---- device


def test_auto_device_is_the_cpu_without_cuda():
    assert compute.resolve_device("auto", cuda_available=never) == torch.device("cpu")


def test_auto_device_takes_the_local_rank_gpu():
    device = compute.resolve_device(
        "auto", local_rank=1, cuda_available=always, cuda_count=lambda: 2
    )
    assert device == torch.device("cuda", 1)


def test_explicit_gpu_index_and_cpu():
    found = compute.resolve_device("cuda:0", cuda_available=always, cuda_count=lambda: 1)
    assert found == torch.device("cuda", 0)
    assert compute.resolve_device("cpu", cuda_available=always) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_clear_error(spec):
    with pytest.raises(ValueError, match=rf"train.device = '{spec}' but CUDA is not available"):
        compute.resolve_device(spec, cuda_available=never)


def test_a_gpu_index_past_the_count_is_an_error():
    with pytest.raises(ValueError, match="asks for GPU 3 but this process sees 2"):
        compute.resolve_device("cuda:3", cuda_available=always, cuda_count=lambda: 2)


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_bad_device_specs_are_rejected_by_the_recipe(tmp_path, spec):
    data = {
        "model": {"name": "smollm2"},
        "data": {"task": "arithmetic"},
        "objective": {"name": "grpo"},
        "train": {"device": spec},
    }
    with pytest.raises(ValueError, match=r"train\.device must be auto, cpu, cuda or cuda:N"):
        parse(data)


# ---- precision


def test_cpu_flags_are_read_from_cpuinfo():
    flags = compute.cpu_flags(XEON_NO_BF16)
    assert {"avx512f", "avx512_vnni"} <= flags
    assert not compute.cpu_has_native_bf16(flags)
    assert compute.cpu_has_native_bf16(compute.cpu_flags(SAPPHIRE_RAPIDS))
    assert compute.cpu_has_native_bf16(["amx_bf16"])
    assert compute.cpu_flags("processor : 0\n") == set()


def test_auto_precision_follows_the_cpu():
    cpu = torch.device("cpu")
    bf16 = compute.resolve_precision("auto", cpu, cpu_bf16=always)
    fp32 = compute.resolve_precision("auto", cpu, cpu_bf16=never)
    assert bf16[0] == "bf16" and fp32[0] == "fp32"
    assert "AVX512-BF16" in fp32[1]


def test_auto_precision_follows_the_gpu():
    gpu = torch.device("cuda", 0)
    assert compute.resolve_precision("auto", gpu, cuda_bf16=always)[0] == "bf16"
    assert compute.resolve_precision("auto", gpu, cuda_bf16=never)[0] == "fp32"


@pytest.mark.parametrize("spec", ["fp32", "bf16"])
def test_explicit_precision_stays(spec):
    cpu = torch.device("cpu")
    assert compute.resolve_precision(spec, cpu, cpu_bf16=always) == (spec, "")
    assert compute.resolve_precision(spec, cpu, cpu_bf16=never) == (spec, "")


def test_auto_on_this_machine_matches_its_cpu_flags():
    """The CI and project machines have no GPU; bf16 only where the CPU says it is native
    (a Xeon with AVX-512 but no AVX512-BF16: fp32). The flags come through
    the module's reader, which LMLOSS_TEST_AUTO_PRECISION replaces (tests/conftest.py)."""
    text = compute._read_cpuinfo() or ""
    if torch.cuda.is_available() or not compute.cpu_flags(text):
        pytest.skip("needs a CPU-only Linux machine")
    native = bool({"avx512_bf16", "amx_bf16"} & compute.cpu_flags(text))
    resolved = compute.resolve("auto", "auto", 0)
    assert resolved.device == torch.device("cpu")
    assert resolved.precision == ("bf16" if native else "fp32")


def test_autocast_is_for_the_device_type():
    bf16 = compute.Compute(torch.device("cpu"), "bf16", 1)
    with bf16.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with compute.Compute(torch.device("cpu"), "fp32", 1).autocast():
        assert not torch.is_autocast_enabled("cpu")


# ---- threads


def test_threads_are_the_usable_cores_shared_by_local_ranks():
    assert compute.resolve_threads(0, cores=lambda: 8) == 8
    assert compute.resolve_threads(0, local_ranks=2, cores=lambda: 8) == 4
    assert compute.resolve_threads(0, local_ranks=4, cores=lambda: 2) == 1
    assert compute.resolve_threads(3, local_ranks=4, cores=lambda: 2) == 3


def test_threads_default_to_this_process_affinity(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert compute.resolve("cpu", "fp32", 0).threads == compute.available_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert compute.resolve("cpu", "fp32", 0).threads == max(1, compute.available_cores() // 2)


# ---- the trainer


def _sft_data(tmp_path: Path) -> Path:
    rows = [{"prompt": f"say {w}", "completion": f"{w} {w}"} for w in ("ab", "cd", "ef", "gh")]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


def test_cuda_without_cuda_fails_before_any_model_loads(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", never)

    def load(*_args, **_kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(model_loading, "load_pretrained", load)
    run = recipe(
        tiny_model, _sft_data(tmp_path), tmp_path / "run", {"name": "sft"}, train={"device": "cuda"}
    )
    with pytest.raises(ValueError, match="CUDA is not available"):
        Trainer(run, echo=lambda *_: None)


def test_the_suite_can_run_as_on_another_cpu_kind():
    """LMLOSS_TEST_AUTO_PRECISION=fp32|bf16 (tests/conftest.py): "auto" picks it here."""
    forced = os.environ.get("LMLOSS_TEST_AUTO_PRECISION")
    if not forced or torch.cuda.is_available():
        pytest.skip("set LMLOSS_TEST_AUTO_PRECISION=fp32 or bf16 on a CPU-only machine")
    assert compute.resolve("cpu", "auto", 1).precision == forced


def test_the_run_records_and_prints_what_it_resolved(tiny_model, tmp_path):
    lines = []
    run = recipe(
        tiny_model,
        _sft_data(tmp_path),
        tmp_path / "run",
        {"name": "sft"},
        train={"max_steps": 1, "device": "cpu", "threads": 1, "precision": "auto"},
    )
    trainer = Trainer(run, echo=lines.append)
    saved = json.loads((tmp_path / "run" / "recipe.json").read_text())["train"]
    assert saved["device"] == "cpu"
    assert saved["precision"] == trainer.compute.precision in ("fp32", "bf16")
    assert saved["threads"] == 1 == torch.get_num_threads()
    assert any(
        line.startswith(f"compute: device cpu, precision {saved['precision']}") for line in lines
    )


OBJECTIVES = {
    "sft": ({"name": "sft"}, {}),
    "dpo": ({"name": "dpo"}, {}),
    "grpo": (
        {"name": "grpo"},
        {
            "policy": {
                "group_size": 2,
                "max_new_tokens": 4,
                "rewards": ["train_testkit:letter_a_reward"],
            }
        },
    ),
}


def _rows(objective: str) -> list[dict]:
    if objective == "dpo":
        return [{"prompt": f"q{i}", "chosen": "aa", "rejected": "bb"} for i in range(4)]
    if objective == "grpo":
        return [{"prompt": f"say a {i}"} for i in range(4)]
    return [{"prompt": f"q{i}", "completion": "ab"} for i in range(4)]


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_tensor_follows_the_recipe_device(tiny_model, tmp_path, objective):
    """Under a meta default device, a tensor made without ``device=`` lands on meta and the
    step fails; with the recipe's device (cpu) reaching every model and batch it trains."""
    assert letter_a_reward(["a"]) == [1.0]  # the reward the grpo case names
    spec, sections = OBJECTIVES[objective]
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(objective))
    train = {"max_steps": 2, "batch_size": 2, "device": "cpu", "threads": 1}
    run = recipe(tiny_model, data, tmp_path / "run", spec, train=train, **sections)
    trainer = Trainer(run, echo=lambda *_: None)
    torch.set_default_device("meta")
    try:
        rows = [trainer.train_step() for _ in range(2)]
    finally:
        torch.set_default_device(None)
    assert all(p.device.type == "cpu" for p in trainer.model.parameters())
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
    if objective != "grpo":  # a random model's completions may all earn the same reward
        assert rows[0]["grad_norm"] > 0


# ---- Hugging Face Hub ids


def _fake_hub_repo(cache: Path, kind: str, repo: str) -> Path:
    """The layout of the Hub cache: ``<kind>s--owner--name/snapshots/<commit>`` + refs/main."""
    commit = "0" * 40
    root = cache / f"{kind}s--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_an_uncached_hub_model_offline_is_one_clear_line(offline_hub):
    with pytest.raises(ValueError) as error:
        model_loading.load_pretrained("nobody/not-cached-model")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("model.name 'nobody/not-cached-model': the Hub model is not in")
    assert str(offline_hub) in message and "offline" in message


def test_a_cached_hub_model_loads_offline(offline_hub):
    save_tiny_model(_fake_hub_repo(offline_hub, "model", "acme/tiny"), seed=0)
    model, tokenizer = model_loading.load_pretrained("acme/tiny", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.pad_token_id is not None


def test_a_name_that_is_no_path_nor_hub_id_is_rejected():
    with pytest.raises(ValueError, match="neither a bundled model"):
        model_loading.load_pretrained("./no/such/dir")


def test_hub_data_sets_load_from_the_cache_offline(offline_hub, tmp_path):
    from lmloss.train.config import DataConfig
    from lmloss.train.data import load_rows

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    write_jsonl(_fake_hub_repo(offline_hub, "dataset", "acme/rows") / "train.jsonl", rows)
    found, source = load_rows(DataConfig(path="acme/rows"), tmp_path, 0)
    assert found == rows and source == "hub:acme/rows"
    with pytest.raises(ValueError, match=r"data\.path .acme/none.: the Hub data set is not in"):
        load_rows(DataConfig(path="acme/none"), tmp_path, 0)


# ---- DistributedDataParallel around the backbone (used on GPUs; gloo here)


def _ddp_worker(rank: int, port: int, model_dir: str, out: str) -> None:
    import copy
    import os

    import torch.distributed as dist

    from lmloss.hf import hidden_states
    from lmloss.train.distributed import unwrapped, wrap_backbone

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model, _ = model_loading.load_pretrained(model_dir)
    model = model.double()
    model.requires_grad_(False)
    model.model.layers[-1].requires_grad_(True)
    plain = copy.deepcopy(model)
    inputs = [torch.tensor([[8 + r, 9, 10, 11 + r]]) for r in range(2)]

    def loss_of(net, ids):
        return (hidden_states(net, ids, torch.ones_like(ids)) ** 2).mean()

    wrapped = wrap_backbone(model, torch.device("cpu"))
    assert model.model.embed_tokens is wrapped.module.embed_tokens  # attributes answer
    loss_of(model, inputs[rank]).backward()  # the reducer sums both ranks' gradients
    sum(loss_of(plain, ids) for ids in inputs).backward()  # one process, both inputs
    with unwrapped(model, wrapped):
        keys = list(model.state_dict())
    got = {n: p.grad for n, p in model.model.module.named_parameters() if p.requires_grad}
    want = {n: p.grad for n, p in plain.model.named_parameters() if p.requires_grad}
    torch.save({"got": got, "want": want, "keys": keys}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_the_wrapped_backbone_sums_gradients_over_ranks(tiny_model, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tiny_model), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["got"].keys() == saved["want"].keys() and saved["got"]
        for name, grad in saved["got"].items():
            torch.testing.assert_close(grad, saved["want"][name], rtol=1e-10, atol=1e-12)
        assert not any(".module." in key for key in saved["keys"])
