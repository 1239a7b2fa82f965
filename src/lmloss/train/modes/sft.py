"""Supervised fine-tuning with any likelihood objective (``ce``, ``z_loss``, ``focal``, ...).

Rows: ``prompt`` + ``completion`` (strings, or a list-of-messages prompt), or ``messages``
(a whole chat; every assistant turn is trained). Loss: the objective's token mean over the
optimizer step's trained tokens (``num_items`` = the global count), fused: the engine
computes the gradients in its forward pass, without logits.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F

from lmloss.likelihood import fused_likelihood_loss
from lmloss.output import LossOutput
from lmloss.train import packing
from lmloss.train.data import require_columns
from lmloss.train.modes.base import Batch, Context, Example, Mode, head_kwargs


def encode_text_example(mode: Mode, index: int, row: dict) -> Example | None:
    """Tokens of a prompt/completion row or a ``messages`` row, within the length limits."""
    encoder = mode.ctx.encoder
    if "messages" in row and row["messages"] is not None:
        ids, trained = encoder.conversation(row["messages"])
        if not any(trained):
            raise ValueError(f"row {index}: the conversation has no assistant turn to train on")
        first = trained.index(True)
        if not encoder.check_prompt(ids[:first], index):
            return None
        kept = first + len(encoder.fit(ids[:first], ids[first:]))
        return Example(index, row, {"conversation": ids[:kept]}, trained[:kept])
    prompt_ids = encoder.prompt(row["prompt"])
    if not encoder.check_prompt(prompt_ids, index):
        return None
    completion = encoder.fit(
        prompt_ids, encoder.completion(row["prompt"], prompt_ids, str(row["completion"]))
    )
    if encoder.config.train_on == "all":  # the prompt's tokens are trained too
        ids = prompt_ids + completion
        return Example(index, row, {"conversation": ids}, [True] * len(ids))
    return Example(index, row, {"prompt": prompt_ids, "completion": completion})


def require_text_columns(rows: list[dict], source: str, why: str) -> None:
    if rows and "messages" in rows[0]:
        return
    require_columns(rows, ("prompt", "completion"), source, why)


class SFTMode(Mode):
    family = "likelihood"
    description = "supervised: prompt/completion or messages rows, completion tokens trained"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.table = None
        # objectives built on E_p[embedding] (EMO) need the frozen, L2-normalized table
        spec = ctx.entry.spec
        if "expectation" in spec.stats or "target_embedding" in spec.inputs:
            embedding = ctx.model.get_input_embeddings().weight.detach()
            self.table = F.normalize(embedding.float(), dim=-1).to(embedding.dtype)

    def check_columns(self, rows: list[dict], source: str) -> None:
        require_text_columns(rows, source, f"the {self.family} objective {self.ctx.entry.name!r}")

    def encode(self, index: int, row: dict) -> Example | None:
        return encode_text_example(self, index, row)

    def prepare(self, examples: list[Example]) -> Batch:
        seqs = self.sequences_of(examples)
        tensors = {"seqs": seqs}
        if packing.is_packed(examples):  # no 2-D mask: attention follows the position ids
            tensors["seqs"] = dataclasses.replace(seqs, attention=None)
            tensors["position_ids"] = packing.position_ids(examples, seqs.ids.shape[1])
        return Batch(examples=len(examples), tokens=seqs.trained_tokens, tensors=tensors)

    def loss(self, batch: Batch, num_items: int | None) -> LossOutput:
        seqs = batch.tensors["seqs"]
        packed = (
            {"position_ids": batch.tensors["position_ids"]}
            if "position_ids" in batch.tensors
            else {}
        )
        hidden = self.policy_hidden(seqs, **packed)
        extra = {} if self.table is None else {"embedding_table": self.table}
        out = fused_likelihood_loss(
            self.ctx.entry.name,
            hidden=hidden,
            targets=seqs.targets,
            num_items=num_items,
            **head_kwargs(self.policy_head()),
            **self.ctx.engine,
            **extra,
            **self.ctx.hyper,
        )
        nll = out.per_example.detach()
        trained = seqs.targets != -100
        metrics = {"token_loss": nll[trained].mean() if trained.any() else nll.new_zeros(())}
        return LossOutput(out.loss, out.per_example, {**out.metrics, **metrics})
