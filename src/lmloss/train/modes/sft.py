"""Supervised fine-tuning with any likelihood objective (``ce``, ``z_loss``, ``focal``, ...).

Rows: ``prompt`` + ``completion`` (strings, or a list-of-messages prompt), or ``messages``
(a whole chat; every assistant turn is trained). Loss: the objective's token mean over the
optimizer step's trained tokens (``num_items`` = the global count), fused: the engine
computes the gradients in its forward pass, without logits.

Options (``[objective]``): ``reweight`` (loss-based sample reweighting of each micro-batch)
and ``token_weights`` (a data column: the token mean becomes ``Σ w·ℓ / Σ w``, ``Σ w`` over the
optimizer step). With ``[[objective.add]]`` terms, the engine computes the union of their
statistics once and each term's :func:`lmloss.likelihood_loss` runs on them.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from lmloss.likelihood import fused_likelihood_loss, likelihood_loss
from lmloss.output import LossOutput
from lmloss.stats import token_stats
from lmloss.train import objective_sum, packing
from lmloss.train.data import HOST, IGNORE, require_columns
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
        example = encode_text_example(self, index, row)
        column = self.ctx.recipe.options.get("token_weights")  # present: see validate
        if example is not None and column is not None:
            example.weights = self._row_weights(example, row[column], column)
        return example

    def _row_weights(self, ex: Example, value, column: str) -> list[float]:
        """One weight per trained token: a number for all of them, or a list of them."""
        if ex.trained is not None:
            count, length = sum(ex.trained), len(ex.tokens["conversation"])
        else:
            count = len(ex.tokens["completion"])
            length = len(ex.tokens["prompt"]) + count
        values = value if isinstance(value, list) else [value] * count
        truncated = length >= self.ctx.encoder.config.max_length
        if len(values) < count or (len(values) > count and not truncated):
            raise ValueError(
                f"row {ex.index}: column {column!r} holds {len(values)} token weights for "
                f"{count} trained tokens (give one number, or one per trained token)"
            )
        for w in values:
            if (
                not isinstance(w, (int, float))
                or isinstance(w, bool)
                or not math.isfinite(w)
                or w < 0
            ):
                raise ValueError(
                    f"row {ex.index}: column {column!r} must hold numbers >= 0, got {w!r}"
                )
        return [float(w) for w in values[:count]]

    def prepare(self, examples: list[Example]) -> Batch:
        seqs = self.sequences_of(examples)
        tensors = {"seqs": seqs}
        tokens = seqs.trained_tokens
        if packing.is_packed(examples):  # no 2-D mask: attention follows the position ids
            tensors["seqs"] = dataclasses.replace(seqs, attention=None)
            tensors["position_ids"] = packing.position_ids(examples, seqs.ids.shape[1])
        if examples[0].weights is not None:
            tensors["weights"] = _weights_on_targets(examples, seqs.targets)
            tokens = float(tensors["weights"].sum())  # the weighted mean's normalizer: Σ w
        return Batch(examples=len(examples), tokens=tokens, tensors=tensors)

    def loss(self, batch: Batch, num_items: int | None) -> LossOutput:
        seqs = batch.tensors["seqs"]
        packed = (
            {"position_ids": batch.tensors["position_ids"]}
            if "position_ids" in batch.tensors
            else {}
        )
        hidden = self.policy_hidden(seqs, **packed)
        options = {k: v for k, v in self.ctx.recipe.options.items() if k != "token_weights"}
        if "weights" in batch.tensors:
            options["weights"] = batch.tensors["weights"]
        if self.ctx.recipe.terms:
            out = self._weighted_sum(hidden, seqs.targets, num_items, options)
        else:
            extra = {} if self.table is None else {"embedding_table": self.table}
            out = fused_likelihood_loss(
                self.ctx.entry.name,
                hidden=hidden,
                targets=seqs.targets,
                num_items=num_items,
                head=self.policy_head(),
                **self.ctx.engine,
                **extra,
                **options,
                **self.ctx.hyper,
            )
        nll = out.per_example.detach()
        trained = seqs.targets != -100
        metrics = {"token_loss": nll[trained].mean() if trained.any() else nll.new_zeros(())}
        return LossOutput(out.loss, out.per_example, {**out.metrics, **metrics})

    def _weighted_sum(self, hidden, targets, num_items, options: dict) -> LossOutput:
        """The objective and its ``[[objective.add]]`` terms: one engine pass computes the
        union of their statistics, then each term's token mean runs on them."""
        terms = self.ctx.recipe.terms
        entries = [self.ctx.entry, *(t.entry for t in terms)]
        stats = token_stats(
            hidden,
            **head_kwargs(self.policy_head()),
            targets=targets,
            want=objective_sum.engine_statistics(entries),
            **self.ctx.engine,
        ).asdict()
        options = dict(options)
        weights = {"weights": options.pop("weights")} if "weights" in options else {}
        shared = {
            "logps": stats.pop("logp"),
            "mask": targets != IGNORE,
            "num_items": num_items,
            **stats,
            **weights,
        }
        name = self.ctx.entry.name
        parts = [(name, 1.0, likelihood_loss(name, **shared, **options, **self.ctx.hyper))]
        for term in terms:
            parts.append(
                (term.name, term.weight, likelihood_loss(term.name, **shared, **term.hyper))
            )
        return objective_sum.total(parts)


def _weights_on_targets(examples: list[Example], targets: torch.Tensor) -> torch.Tensor:
    """The examples' token weights laid out on their trained targets ``[B, T]`` (0 elsewhere)."""
    out = torch.zeros(targets.shape, dtype=torch.float32, device=HOST)
    for i, ex in enumerate(examples):
        positions = (targets[i] != IGNORE).nonzero().squeeze(1)
        out[i, positions] = torch.tensor(ex.weights[: len(positions)], device=HOST)
    return out
