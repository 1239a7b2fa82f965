"""Distillation: the student matches a teacher's next-token distributions on the data.

The teacher is a model (its backbone runs under ``no_grad``; the two-model fused engine
takes both heads, no logits) or a file of the teacher's top-k token ids and log-probs per
trained position (``lmloss precompute`` writes it from a teacher model; an inference
server's output in the same layout works too). Rows are those of SFT: prompt/completion or
messages; only completion tokens are distilled.

Objectives whose statistic is a batch-level ground cost (``sinkhorn_kd``: every trained
position's prediction against every other's) have no fused form: the engine refuses them,
so their logits at the trained positions are computed (``[n, V]`` per model) and go to
the plain :func:`lmloss.divergence_loss`.

On-policy distillation (GKD, Agarwal et al. 2024, arXiv:2306.13649; TRL's ``GKDTrainer``):
with probability ``distill.lmbda`` a batch's completions are sampled by the student, else
by the teacher when ``distill.seq_kd`` (Kim & Rush 2016), else they are the data's; the
teacher scores whichever tokens the batch holds. MiniLLM (Gu et al. 2024) is
``reverse_kl`` with ``lmbda = 1``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

import lmloss
from lmloss.output import LossOutput
from lmloss.stats.divergence_gather import head_top_k_logprobs
from lmloss.train.generation import generate
from lmloss.train.modes.base import Batch, Context, Example, Mode, like_head
from lmloss.train.modes.sft import encode_text_example, require_text_columns
from lmloss.train.token_store import TokenStore

STORE_KIND = "teacher top-k"
_IDS, _LOGPROBS = "completion_ids", "completion_logprobs"


def _no_transform(head, who: str) -> None:
    if head.softcap is not None or head.logit_scale != 1.0:
        raise ValueError(
            f"the {who}'s head soft-caps or scales its logits; the distillation engine takes "
            "plain heads (temperature only)"
        )


class DistillMode(Mode):
    family = "distill"
    description = "distillation: prompt/completion or messages rows, a teacher model or top-k file"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        if ctx.teacher is None and ctx.teacher_store is None:
            raise ValueError(
                "distillation needs a teacher: set distill.teacher (a model) or "
                "distill.topk_file (from `lmloss precompute`)"
            )
        self.whole_rows = "batch_cost" in ctx.entry.spec.stats  # no fused form
        if self.whole_rows and ctx.teacher is None:
            raise ValueError(
                f"{ctx.entry.name!r} compares the teacher's full predictions: it needs "
                "distill.teacher (a model), not a top-k file"
            )
        self.coin = random.Random(ctx.recipe.train.seed)  # which batches the student samples

    def check_columns(self, rows: list[dict], source: str) -> None:
        require_text_columns(rows, source, f"the distill objective {self.ctx.entry.name!r}")

    def encode(self, index: int, row: dict) -> Example | None:
        return encode_text_example(self, index, row)

    def prepare(self, examples: list[Example]) -> Batch:
        examples, metrics = self._completions(examples)
        seqs = self.sequences_of(examples)
        return Batch(
            examples=len(examples),
            tokens=seqs.trained_tokens,
            tensors={"seqs": seqs, "examples": examples},
            metrics=metrics,
        )

    def _completions(self, examples: list[Example]) -> tuple[list[Example], dict]:
        """The data's completions, or ones the student (probability ``lmbda``) or the
        teacher (``seq_kd``) samples for the batch's prompts."""
        config = self.ctx.recipe.distill
        if config.lmbda == 0 and not config.seq_kd:
            return examples, {}
        sampler = self.sampler_of_batch()
        metrics = {"student_sampled": float(sampler is self.ctx.model)}
        if sampler is None:
            return examples, metrics
        started = time.perf_counter()
        out = generate(
            sampler,
            self.ctx.tokenizer,
            [ex.tokens["prompt"] for ex in examples],
            max_new_tokens=config.max_new_tokens,
            sampling={"temperature": config.temperature},
            autocast=self.ctx.autocast(),
        )
        metrics["generate_seconds"] = time.perf_counter() - started
        sampled = [
            Example(ex.index, ex.row, {**ex.tokens, "completion": c[m].tolist()})
            for ex, c, m in zip(examples, out.completions.cpu(), out.mask.cpu())
        ]
        metrics["completion_length"] = float(out.mask.sum(1).float().mean())
        return sampled, metrics

    def sampler_of_batch(self) -> torch.nn.Module | None:
        """The student with probability ``lmbda``; else the teacher under ``seq_kd``; else
        None (the data's completions)."""
        config = self.ctx.recipe.distill
        if self.coin.random() < config.lmbda:
            return self.ctx.model
        return self.ctx.teacher.model if config.seq_kd else None

    def _teacher(self, seqs, examples: list[Example]) -> dict:
        store = self.ctx.teacher_store
        if store is not None:
            return {
                "teacher_topk_ids": self.stored_per_token(
                    store, examples, _IDS, seqs.targets
                ).long(),
                "teacher_topk_logprobs": self.stored_per_token(
                    store, examples, _LOGPROBS, seqs.targets
                ),
            }
        with self.ctx.autocast():
            hidden, head = self.ctx.teacher.hidden(seqs.ids, seqs.attention)
        _no_transform(head, "teacher")
        return {
            "teacher_hidden": like_head(hidden[:, :-1], head),
            "teacher_weight": head.weight,
            "teacher_bias": head.bias,
        }

    def loss(self, batch: Batch, num_items: int | None) -> LossOutput:
        seqs, examples = batch.tensors["seqs"], batch.tensors["examples"]
        head = self.policy_head()
        _no_transform(head, "student")
        if self.whole_rows:
            return self._plain_loss(seqs, head)
        trained = seqs.targets != -100
        normalizer = {"num_items": num_items} if num_items is not None else {}
        return lmloss.fused_divergence_loss(
            self.ctx.entry.name,
            student_hidden=self.policy_hidden(seqs),
            student_weight=head.weight,
            student_bias=head.bias,
            mask=trained,
            labels=seqs.targets.clamp(min=0),
            temperature=self.ctx.recipe.distill.temperature,
            **self._teacher(seqs, examples),
            **normalizer,
            **self.ctx.engine,
            **self.ctx.hyper,
        )

    def _plain_loss(self, seqs, head) -> LossOutput:
        """The objective on both models' logits at the trained positions ``[n, V]``."""
        trained = seqs.targets != -100
        teacher = self._teacher(seqs, [])
        student = _logits(self.policy_hidden(seqs)[trained], head.weight, head.bias)
        with torch.no_grad():
            teacher_logits = _logits(
                teacher["teacher_hidden"][trained],
                teacher["teacher_weight"],
                teacher["teacher_bias"],
            )
        return lmloss.divergence_loss(
            self.ctx.entry.name,
            student_logits=student,
            teacher_logits=teacher_logits,
            labels=seqs.targets[trained],
            temperature=self.ctx.recipe.distill.temperature,
            **self.ctx.hyper,
        )

    # ---- lmloss precompute

    def precompute(self, examples: list[Example], path: Path) -> str:
        """The teacher's top-k ids and log-probs at every trained position, to ``path``.

        The engine picks each position's top k over vocabulary tiles (the teacher head's
        soft cap and logit scale applied), never holding a ``[positions, V]`` block.
        """
        if self.ctx.teacher is None:
            raise ValueError("lmloss precompute for distillation needs distill.teacher (a model)")
        k = self.ctx.recipe.distill.top_k
        ids_rows, logprob_rows = [], []
        batch_size = self.ctx.recipe.train.batch_size
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            seqs = self.sequences_of(chunk)
            with torch.no_grad():
                hidden, head = self.ctx.teacher.hidden(seqs.ids, seqs.attention)
            for i, ex in enumerate(chunk):
                rows = hidden[i, :-1][seqs.targets[i] != -100]
                top_ids, top_logprobs = _topk(rows, head, k)
                tokens = self._segment_ids(ex, "completion")
                ids_rows.append((tokens, top_ids))
                logprob_rows.append((tokens, top_logprobs))
        TokenStore.write(path, {_IDS: ids_rows, _LOGPROBS: logprob_rows}, STORE_KIND)
        return f"teacher top-{k} log-probs of {len(examples)} rows"


def _topk(rows: torch.Tensor, head, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``k`` most probable ids at each row and their log-probs, through the
    engine: the head's soft cap and logit scale apply, the vocabulary goes by tiles."""
    return head_top_k_logprobs(rows, head.weight, head.bias, head.transform(), k)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    logits = hidden.float() @ weight.float().T
    return logits if bias is None else logits + bias.float()
