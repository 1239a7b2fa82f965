"""Online preference optimization: pairs sampled from the policy itself, graded by a judge.

Per micro-batch of prompts: the sampler (:func:`lmloss.train.generation.generate`, the
policy mode's) draws ``online.samples`` completions per prompt from the current model, the
judge (reward functions and/or a reward model, :mod:`lmloss.train.judge`) scores them, and
each prompt contributes one pair: its best completion as chosen, its worst as rejected
(Online DPO, Guo et al. 2024, arXiv:2402.04792; best-vs-worst of several samples as in
Xiong et al. 2024, arXiv:2312.11456, and Dong et al. 2024 (RLHF workflow),
arXiv:2405.07863). A prompt whose samples all score the same gives no preference: it is
dropped and counted. The pairs then train any pairwise preference objective exactly as the
offline mode does (same batching, reference model and front door). Iterative rounds (SPPO,
INPO) refresh the reference between rounds: the reference follows ``[reference]``.
"""

from __future__ import annotations

import torch

from lmloss.train.data import require_columns
from lmloss.train.generation import Generated
from lmloss.train.judge import Judge
from lmloss.train.modes.base import Batch, Context, Example, encode_row
from lmloss.train.modes.preference import PreferenceMode


class OnlinePreferenceMode(PreferenceMode):
    family = "preference"
    description = "online preference: prompt rows; pairs = best vs worst of the policy's samples"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        if self.segments != ("chosen", "rejected") or self.inputs:
            raise ValueError(
                f"[online] trains pairwise preference objectives without per-pair data; "
                f"{ctx.entry.name!r} is not one"
            )
        if ctx.world.active:
            raise ValueError("[online] preference training under torchrun is not supported yet")
        self.config = ctx.recipe.online
        self.judge = Judge.from_section(
            self.config,
            where="online",
            data=ctx.recipe.data,
            device=next(ctx.model.parameters()).device,
            autocast=ctx.autocast,
        )

    def check_columns(self, rows: list[dict], source: str) -> None:
        require_columns(rows, ("prompt",), source, f"[online] {self.ctx.entry.name!r}")

    def encode(self, index: int, row: dict) -> Example | None:
        return encode_row(self.ctx.encoder, index, row)

    def prepare_shard(self, examples: list[Example], shard: slice) -> Batch:
        return self.prepare(examples[shard])

    def prepare(self, examples: list[Example]) -> Batch:
        samples = self.config.samples
        out, generate_seconds = self.sample(examples, self.config, samples)
        texts = out.texts(self.ctx.tokenizer)
        total, means = self.judge.grade([ex.row for ex in examples], texts, samples)
        pairs, chosen, rejected = self._pairs(examples, out, total.reshape(-1, samples))
        metrics = {
            "reward": float(total.mean()),
            **{f"reward/{name}": value for name, value in means.items()},
            "online/tied_prompts": 1.0 - len(pairs) / len(examples),
            "completion_length": float(out.mask.sum(1).float().mean()),
            "generate_seconds": generate_seconds,
        }
        if not pairs:
            return Batch(examples=0, tokens=0, tensors={}, metrics=metrics)
        metrics |= {
            "online/chosen_score": float(chosen.mean()),
            "online/rejected_score": float(rejected.mean()),
            "online/score_margin": float((chosen - rejected).mean()),
        }
        batch = self._prepare(pairs, pairs)
        batch.metrics = metrics
        return batch

    def _pairs(
        self, examples: list[Example], out: Generated, scores: torch.Tensor
    ) -> tuple[list[Example], torch.Tensor, torch.Tensor]:
        """One pair per prompt whose samples differ in score: best as chosen, worst as
        rejected (the first sample among equals), with the two scores."""
        best, worst = scores.argmax(1), scores.argmin(1)
        keep = scores.max(1).values > scores.min(1).values
        samples = scores.shape[1]
        pairs = []
        for i in keep.nonzero().squeeze(1).tolist():
            prompt = examples[i].tokens["prompt"]
            tokens = {"prompt": prompt}
            for segment, j in (("chosen", best[i]), ("rejected", worst[i])):
                row = i * samples + int(j)
                ids = out.completions[row][out.mask[row]].tolist()
                tokens[segment] = self.ctx.encoder.fit(prompt, ids)
            pairs.append(Example(examples[i].index, examples[i].row, tokens))
        rows = keep.nonzero().squeeze(1)
        return pairs, scores[rows, best[rows]], scores[rows, worst[rows]]
