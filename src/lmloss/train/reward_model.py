"""Reward models: a causal LM with a one-score sequence-classification head.

Training (``bradley_terry`` recipes) starts from any causal LM whose architecture has a
``…ForSequenceClassification`` class in ``transformers`` (Llama does, so the bundled
SmolLM2 does): the backbone's weights are copied into
``AutoModelForSequenceClassification`` with ``num_labels = 1`` and a fresh ``score`` head.
Its forward pass scores each row at its last non-pad token (``config.pad_token_id``), so
the exported ``run_dir/model`` scores the same way wherever it is loaded.

Using one (``policy.reward_model``, ``online.reward_model``): :class:`RewardModel` loads
the folder or Hub id frozen on the trainer's device and scores prompt + completion,
encoded with the reward model's own tokenizer and the recipe's chat template.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from lmloss.train.config import DataConfig
from lmloss.train.data import pad_sequences, prompt_completion
from lmloss.train.hub import resolve_model
from lmloss.train.model_loading import BUNDLED_MODELS, DTYPES, load_pretrained


def is_reward_model(path: str | Path) -> bool:
    """Whether the model folder ``path`` already holds a sequence-classification model."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def from_causal_lm(causal: torch.nn.Module, tokenizer) -> torch.nn.Module:
    """A one-score sequence classifier with the backbone of the causal LM ``causal``."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    config.problem_type = "regression"
    try:
        model = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    except ValueError as error:
        raise ValueError(
            f"model.name: {type(causal).__name__} has no sequence-classification class in "
            f"transformers ({error}); a reward model needs one"
        ) from None
    config.architectures = [type(model).__name__]
    backbone = getattr(causal, causal.base_model_prefix)
    getattr(model, model.base_model_prefix).load_state_dict(backbone.state_dict())
    return model.to(next(causal.parameters()).device)


def load_for_training(config, device: torch.device | None = None):
    """``(model, tokenizer)`` of a reward-model run: ``model.name`` as a sequence classifier
    (a saved reward model goes on training; a causal LM gets a fresh score head)."""
    if config.name not in BUNDLED_MODELS and is_reward_model(resolve_model(config.name)):
        model, tokenizer = load_classifier(
            resolve_model(config.name),
            {"trust_remote_code": config.trust_remote_code, "dtype": DTYPES[config.dtype]},
        )
        return (model if device is None else model.to(device)), tokenizer
    causal, tokenizer = load_pretrained(
        config.name, config.dtype, config.trust_remote_code, device=device
    )
    return from_causal_lm(causal, tokenizer), tokenizer


def load_classifier(source: str | Path, options: dict):
    """A saved sequence classifier and its tokenizer (pad token set, one score)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **options)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(source, **options)
    if model.config.num_labels != 1:
        raise ValueError(
            f"reward model {source}: it has num_labels = {model.config.num_labels}; a reward "
            "model gives one score (num_labels = 1)"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def scores(model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """``[B]`` scores of right-padded rows (the model pools at the last non-pad token)."""
    return model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, 0]


class RewardModel:
    """A frozen reward model grading ``(prompt, completion)`` texts on ``device``."""

    def __init__(
        self,
        name: str,
        *,
        data: DataConfig,
        device: torch.device | str = "cpu",
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        where: str = "policy.reward_model",
    ) -> None:
        from lmloss.train.data import Encoder
        from lmloss.train.hub import hub_offline, unavailable

        path = Path(resolve_model(name, where))
        local = path.is_dir()
        try:
            model, self.tokenizer = load_classifier(
                path if local else name, {"local_files_only": local or hub_offline()}
            )
        except OSError as error:
            if local:
                raise
            raise unavailable(where, name, "Hub model", error) from None
        self.model = model.to(device).eval().requires_grad_(False)
        self.encoder = Encoder(self.tokenizer, data)
        self.autocast = autocast
        self.name = name

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list[str]) -> torch.Tensor:
        """``[N]`` float32 scores on the host, one per completion of the prompt beside it."""
        rows = []
        for prompt, completion in zip(prompts, completions):
            prompt_ids = self.encoder.prompt(prompt)
            answer = self.encoder.completion(prompt, prompt_ids, completion)
            rows.append(prompt_completion(prompt_ids, self.encoder.fit(prompt_ids, answer)))
        seqs = pad_sequences(
            [r for r, _ in rows], [m for _, m in rows], self.tokenizer.pad_token_id
        )
        device = next(self.model.parameters()).device
        with self.autocast():
            out = scores(self.model, seqs.ids.to(device), seqs.attention.to(device))
        return out.float().cpu()
