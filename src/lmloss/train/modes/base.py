"""What every training mode shares: the run context, examples, batches and the mode contract.

A mode turns rows into tokenized examples (``encode``), examples into a micro-batch
(``prepare``; online modes generate here), and a micro-batch into the objective's
:class:`~lmloss.output.LossOutput` through the family's fused front door (``loss``). It
never materializes logits: the backbone's hidden states and the head go to the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lmloss import registry
from lmloss.hf import Head, head_of, hidden_states
from lmloss.output import LossOutput
from lmloss.train.config import Recipe
from lmloss.train.data import Encoder, Sequences
from lmloss.train.distributed import World
from lmloss.train.reference_model import ModelReference
from lmloss.train.rollout_buffer import RolloutBuffer
from lmloss.train.token_store import TokenStore

TOKENS, EXAMPLES = "tokens", "examples"


@dataclass
class Context:
    """Everything a mode needs from the run."""

    recipe: Recipe
    entry: registry.Entry
    model: torch.nn.Module
    tokenizer: Any
    encoder: Encoder
    autocast: Callable[[], AbstractContextManager]
    reference: ModelReference | None = None
    reference_store: TokenStore | None = None
    teacher: ModelReference | None = None
    teacher_store: TokenStore | None = None
    world: World = field(default_factory=World)
    # more examples from the run's data order (online modes that refill a batch)
    draw: Callable[[int], list[Example]] | None = None
    echo: Callable[..., None] = print

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def hyper(self) -> dict[str, Any]:
        return dict(self.recipe.hyper)

    @property
    def engine(self) -> dict[str, Any]:
        return {"memory_budget": self.recipe.train.memory_budget}


@dataclass
class Example:
    """One tokenized row: ``index`` in the data (for precomputed files) and the raw row."""

    index: int
    row: dict
    tokens: dict[str, list[int]] = field(default_factory=dict)
    trained: list[bool] | None = None  # per-token mask of conversations
    weights: list[float] | None = None  # per trained token (objective.token_weights)


@dataclass
class Batch:
    """A micro-batch: tensors for the objective, its size for the global normalizer."""

    examples: int  # what the objective averages over when it takes no num_items
    tokens: int  # trained tokens (the num_items of token-mean objectives)
    tensors: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


def encode_row(encoder: Encoder, index: int, row: dict, answers=()) -> Example | None:
    """The :class:`Example` of ``row``: its prompt's tokens and those of each answer (cut to
    fit ``max_length``); None when a too-long prompt is dropped. ``answers`` names the
    answer columns, or maps segment names to texts (lists: ``completions[k]``)."""
    prompt_ids = encoder.prompt(row["prompt"])
    if not encoder.check_prompt(prompt_ids, index):
        return None
    texts = answers if isinstance(answers, dict) else {a: str(row[a]) for a in answers}
    tokens = {"prompt": prompt_ids}
    for segment, text in texts.items():
        ids = encoder.completion(row["prompt"], prompt_ids, text)
        tokens[segment] = encoder.fit(prompt_ids, ids)
    return Example(index, row, tokens)


def head_kwargs(head: Head) -> dict[str, Any]:
    return {"weight": head.weight, "bias": head.bias, **head.transform_kwargs()}


def like_head(hidden: torch.Tensor, head: Head) -> torch.Tensor:
    """Hidden states in the head's dtype (bf16 autocast may hand back another one); the
    engine then accumulates in float32 either way."""
    return hidden if hidden.dtype == head.weight.dtype else hidden.to(head.weight.dtype)


class Mode:
    """The contract of a training mode (one per objective family)."""

    family: ClassVar[str]
    description: ClassVar[str]
    # the model the mode trains: "causal_lm", or "reward_model" (a one-score classifier)
    model_kind: ClassVar[str] = "causal_lm"

    @classmethod
    def load_weights(cls, config, device) -> tuple[torch.nn.Module, Any]:
        """The model this mode trains and its tokenizer, as ``[model]`` names them."""
        from lmloss.train.model_loading import load_pretrained

        return load_pretrained(config.name, config.dtype, config.trust_remote_code, device=device)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ---- data
    def check_columns(self, rows: list[dict], source: str) -> None:
        raise NotImplementedError

    def encode(self, index: int, row: dict) -> Example | None:
        raise NotImplementedError

    def prepare(self, examples: list[Example]) -> Batch:
        raise NotImplementedError

    def rollout_buffer(self, grad_accum: int) -> RolloutBuffer:
        """How generated micro-batches are reused: by default each step takes fresh ones."""
        return RolloutBuffer(grad_accum, grad_accum)

    def prepare_shard(self, examples: list[Example], shard: slice) -> Batch:
        """This rank's part ``shard`` of the global micro-batch ``examples``. Modes whose
        rows look at their neighbours (KTO's KL samples) override it to see across ranks."""
        return self.prepare(examples[shard])

    # ---- objective
    def loss(self, batch: Batch, num_items: int | None) -> LossOutput:
        raise NotImplementedError

    def normalizer(self) -> str:
        """TOKENS when the objective's spec averages over tokens (it then takes the global
        token count ``num_items``) with the recipe's hyper-parameters, else EXAMPLES."""
        return TOKENS if self.ctx.entry.spec.normalizer_for(self.ctx.hyper) == "token" else EXAMPLES

    def uses_reference(self) -> bool:
        """Whether a reference model must run: the spec says so."""
        return self.ctx.entry.spec.reference == "required"

    # ---- lmloss precompute
    def precompute(self, examples: list[Example], path) -> str:
        raise ValueError(f"there is nothing to precompute for the {self.family} family")

    # ---- shared helpers
    def sample(
        self, examples: list[Example], config, group_size: int, record=None
    ) -> tuple[Any, float]:
        """``group_size`` completions of each example's prompt from the trained model, drawn
        as ``config`` (a ``[policy]`` or ``[online]`` section) says, with per-token values of
        the sampling distribution when ``record`` is given (see
        :func:`lmloss.train.generation.generate`); and the seconds it took."""
        from lmloss.train.generation import generate

        started = time.perf_counter()
        out = generate(
            self.ctx.model,
            self.ctx.tokenizer,
            [ex.tokens["prompt"] for ex in examples],
            max_new_tokens=config.max_new_tokens,
            group_size=group_size,
            sampling={
                "temperature": config.temperature,
                "top_p": config.top_p,
                "top_k": config.top_k,
            },
            autocast=self.ctx.autocast(),
            record=record,
        )
        return out, time.perf_counter() - started

    def policy_hidden(self, seqs: Sequences, **kwargs) -> torch.Tensor:
        """The trained model's hidden states at the scored positions ``[B, T-1, H]``."""
        with self.ctx.autocast():
            hidden = hidden_states(self.ctx.model, seqs.ids, seqs.attention, **kwargs)
        return like_head(hidden[:, :-1], self.policy_head())

    def policy_head(self) -> Head:
        return head_of(self.ctx.model)

    def reference_hidden(self, seqs: Sequences, **kwargs) -> tuple[torch.Tensor, Head]:
        with self.ctx.autocast():
            hidden, head = self.ctx.reference.hidden(seqs.ids, seqs.attention, **kwargs)
        return like_head(hidden[:, :-1], head), head

    def sequences_of(self, examples: list[Example], segment: str = "completion") -> Sequences:
        """Right-padded prompt + ``segment`` rows (or whole conversations) of ``examples``."""
        from lmloss.train.data import pad_sequences, prompt_completion

        rows, trained = [], []
        for ex in examples:
            if ex.trained is not None:
                rows.append(ex.tokens["conversation"])
                trained.append(ex.trained)
            else:
                ids, mask = prompt_completion(ex.tokens["prompt"], ex.tokens[segment])
                rows.append(ids)
                trained.append(mask)
        return pad_sequences(rows, trained, self.ctx.pad_id)

    def stored_per_token(
        self,
        store: TokenStore,
        examples: list[Example],
        name: str,
        targets: torch.Tensor,
        segment: str = "completion",
    ) -> torch.Tensor:
        """Values ``name`` of a precomputed file, laid out on the trained positions of
        ``targets``; ``segment`` names the examples' tokens they were computed for."""
        trained = targets != -100
        first = store.values(name, examples[0].index, self._segment_ids(examples[0], segment))
        out = targets.new_zeros(*targets.shape, *first.shape[1:], dtype=first.dtype)
        for i, ex in enumerate(examples):
            values = store.values(name, ex.index, self._segment_ids(ex, segment))
            positions = trained[i].nonzero().squeeze(1)
            if len(positions) != len(values):
                raise ValueError(
                    f"{store.source}: example {ex.index} has {len(values)} stored tokens but "
                    f"{len(positions)} trained tokens"
                )
            out[i, positions] = values.to(out.device, out.dtype)
        return out

    @staticmethod
    def _segment_ids(ex: Example, segment: str) -> list[int]:
        if ex.trained is not None:
            ids = ex.tokens["conversation"]
            return [t for t, keep in zip(ids, ex.trained) if keep]
        return ex.tokens[segment]
