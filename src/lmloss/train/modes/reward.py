"""Reward-model training: preference rows scored by a one-score sequence classifier.

Rows are ``prompt``/``chosen``/``rejected`` (an optional ``margin`` column: the required
score gap of each pair); the chosen and rejected sequences run through the model as one
``[2B, T]`` batch (chosen first), the model's ``score`` head reads each at its last non-pad
token, and a pairwise objective of the classify family (``bradley_terry``) compares the two
scores through :func:`lmloss.reward_model_loss`, which also gives the logged pairwise
accuracy and margin. The model is the recipe's causal LM with its backbone moved under a
``…ForSequenceClassification`` head (:mod:`lmloss.train.reward_model`), so the run's
``model/`` loads with ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import torch

import lmloss
from lmloss.output import LossOutput
from lmloss.train.data import HOST, pad_sequences, prompt_completion, require_columns
from lmloss.train.modes.base import Batch, Example, Mode, encode_row
from lmloss.train.reward_model import load_for_training, scores

SEGMENTS = ("chosen", "rejected")
MARGIN = "margin"


class RewardMode(Mode):
    family = "classify"
    description = "reward model: prompt/chosen/rejected rows (+ margin), one score per sequence"
    model_kind = "reward_model"

    @classmethod
    def load_weights(cls, config, device):
        """A saved reward model goes on training; a causal LM gets a fresh score head."""
        return load_for_training(config, device)

    def check_columns(self, rows: list[dict], source: str) -> None:
        require_columns(
            rows, ("prompt", *SEGMENTS), source, f"reward model {self.ctx.entry.name!r}"
        )

    def encode(self, index: int, row: dict) -> Example | None:
        return encode_row(self.ctx.encoder, index, row, SEGMENTS)

    def prepare(self, examples: list[Example]) -> Batch:
        rows = [
            prompt_completion(ex.tokens["prompt"], ex.tokens[segment])
            for segment in SEGMENTS
            for ex in examples
        ]
        seqs = pad_sequences([r for r, _ in rows], [m for _, m in rows], self.ctx.pad_id)
        tensors = {"ids": seqs.ids, "attention": seqs.attention}
        if MARGIN in examples[0].row:
            margins = [float(ex.row[MARGIN]) for ex in examples]
            tensors[MARGIN] = torch.tensor(margins, dtype=torch.float32, device=HOST)
        return Batch(examples=len(examples), tokens=seqs.trained_tokens, tensors=tensors)

    def loss(self, batch: Batch, num_items: int | None) -> LossOutput:
        t = batch.tensors
        with self.ctx.autocast():
            values = scores(self.ctx.model, t["ids"], t["attention"])
        chosen, rejected = values.float().chunk(2)
        return lmloss.reward_model_loss(
            self.ctx.entry.name,
            chosen=chosen,
            rejected=rejected,
            margin=t.get(MARGIN),
            **self.ctx.hyper,
        )
