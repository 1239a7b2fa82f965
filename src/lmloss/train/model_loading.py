"""Load the model and tokenizer of a run, choose what trains, and add LoRA adapters.

Models come from the bundled SmolLM2 (``name = "smollm2"``, always offline), a local
Hugging Face directory, or a Hugging Face Hub id (``"HuggingFaceTB/SmolLM2-360M"``):
downloaded when online, read from the local Hub cache when offline (``HF_HUB_OFFLINE=1``
or no network). A model's own code runs only with ``trust_remote_code = true``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmloss.models import BUNDLED_MODELS
from lmloss.train.config import LoraConfig, ModelConfig
from lmloss.train.hub import hub_offline, resolve_model, unavailable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """The module the loop trains, its tokenizer, and the PEFT wrapper when LoRA is on."""

    model: torch.nn.Module  # the Hugging Face causal LM (adapters injected when LoRA is on)
    tokenizer: object
    peft: torch.nn.Module | None = None

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


def load_pretrained(
    name: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: torch.device | str | None = None,
    where: str = "model.name",
):
    """``(model, tokenizer)`` from the bundled short name, a local directory or a Hub id,
    on ``device`` (default: where it loads, the CPU)."""
    if name in BUNDLED_MODELS:
        from lmloss.models import smollm2

        model, tokenizer = smollm2(DTYPES[dtype])
    else:
        # a local folder, a Hub id's cached snapshot, or (online) the Hub id to fetch
        path = Path(resolve_model(name, where))
        from transformers import AutoModelForCausalLM, AutoTokenizer

        local = path.is_dir()
        options = {
            "trust_remote_code": trust_remote_code,
            "local_files_only": local or hub_offline(),
        }
        source = path if local else name
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **options)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **options)
        except OSError as error:
            if local:
                raise
            raise unavailable(where, name, "Hub model", error) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    return model, tokenizer


def blocks_of(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks: the longest ``ModuleList`` inside the backbone."""
    backbone = getattr(model, model.base_model_prefix, model)
    lists = [m for m in backbone.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise TypeError(f"cannot find the transformer blocks of {type(model).__name__}")
    return max(lists, key=len)


def choose_trainable(model: torch.nn.Module, config: ModelConfig) -> None:
    """Freeze what the recipe does not train (``trainable_blocks``, ``train_head``)."""
    if config.trainable_blocks >= 0:
        model.requires_grad_(False)
        blocks = blocks_of(model)
        if config.trainable_blocks > len(blocks):
            raise ValueError(
                f"model.trainable_blocks = {config.trainable_blocks} but the model has "
                f"{len(blocks)} blocks"
            )
        for block in list(blocks)[len(blocks) - config.trainable_blocks :]:
            block.requires_grad_(True)
        # the final norm sits after the blocks: it trains with them
        backbone = getattr(model, model.base_model_prefix)
        norm = getattr(backbone, "norm", None) or getattr(backbone, "ln_f", None)
        if norm is not None and config.trainable_blocks > 0:
            norm.requires_grad_(True)
    head = model.get_output_embeddings()
    if head is not None:
        head.weight.requires_grad_(config.train_head)


def add_lora(
    model: torch.nn.Module, config: LoraConfig, task_type: str = "CAUSAL_LM"
) -> torch.nn.Module:
    """Wrap with PEFT LoRA adapters; only the adapters train (and, for ``SEQ_CLS``, the
    score head). Returns the PEFT model."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type=task_type,
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:
        raise ValueError(f"lora.target_modules: {error}") from error


MODEL_KINDS = {"causal_lm": "CAUSAL_LM", "reward_model": "SEQ_CLS"}  # -> PEFT task type


def load(
    config: ModelConfig,
    lora: LoraConfig,
    weights: tuple[torch.nn.Module, Any],
    kind: str = "causal_lm",
) -> LoadedModel:
    """The model a mode trains, from its loaded ``weights`` (model, tokenizer: the mode's
    :meth:`~lmloss.train.modes.base.Mode.load_weights`): adapters or trainable blocks as
    ``[lora]`` and ``[model]`` say. ``kind = "reward_model"``: a one-score sequence
    classifier (:mod:`lmloss.train.reward_model`), whose new head always trains."""
    model, tokenizer = weights
    if lora.enabled:
        peft = add_lora(model, lora, MODEL_KINDS[kind])
        # PEFT injects the adapters into the original modules: the inner model runs them
        return LoadedModel(model=peft.get_base_model(), tokenizer=tokenizer, peft=peft)
    choose_trainable(model, config)
    if kind == "reward_model":
        model.score.requires_grad_(True)
    return LoadedModel(model=model, tokenizer=tokenizer)


def save_model(model: torch.nn.Module, path: Path) -> None:
    """Save in Hugging Face layout with safetensors weights.

    A model dequantized from GGUF (the bundled SmolLM2) still carries its GGUF
    quantizer, which ``save_pretrained`` refuses to serialize; its weights are plain
    float tensors, so they are written directly with a config without the quantizer.
    """
    if getattr(model, "hf_quantizer", None) is None:
        model.save_pretrained(path, safe_serialization=True)
        return
    from safetensors.torch import save_model as save_tensors

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (path / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(path)
    save_tensors(model, str(path / "model.safetensors"), metadata={"format": "pt"})


def load_trained(run_or_model_dir: str | Path, trust_remote_code: bool = False):
    """``(model, tokenizer)`` of a finished run (``run_dir/model``) or a model directory.

    LoRA runs store only the adapters and the base model's name; the base is loaded and the
    adapters applied.
    """
    path = Path(run_or_model_dir)
    if (path / "model").is_dir():
        path = path / "model"
    elif (path / "adapter").is_dir():  # a LoRA run with output.merge_lora = false
        path = path / "adapter"
    base_file = path / "lmloss_base_model.txt"
    if (path / "adapter_config.json").is_file() and base_file.is_file():
        from peft import PeftModel

        model, tokenizer = load_pretrained(base_file.read_text().strip(), "float32")
        return PeftModel.from_pretrained(model, path).get_base_model(), tokenizer
    return load_pretrained(str(path), "float32", trust_remote_code)
