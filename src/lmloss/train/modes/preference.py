"""Offline preference optimization, rows by the objective's input kind: paired
(``prompt``/``chosen``/``rejected``), unpaired (``prompt``/``completion``/``label``), listwise
(``prompt``/``completions``/``scores``) or negative-only (``prompt``/``rejected``).

The answers go through the model as one batch, segment by segment (chosen rows first, as
:func:`lmloss.fused_preference_loss` expects; the K answers of lists become ``[B, K, T]``);
the reference is a frozen model run under ``no_grad`` (its hidden states go to the same
front door) or log-probs precomputed by ``lmloss precompute``. D2O's reference samples are
drawn once per row from the reference model; HyPO's on-policy samples (``hypo_weight``) from
the model at every step (:mod:`lmloss.train.modes.samples`). Unpaired objectives (KTO)
also get KL samples: each completion paired with the next row's prompt, scored by policy
and reference without gradients.
The objective's spec says whether a reference model runs (``reference``) and which
per-example inputs it needs beyond its input kind (``extra_inputs``: ``strength`` of OSP,
``desirable`` of KTO); those come from the data column of the same name (``label`` for
``desirable``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

import lmloss
from lmloss.objectives.preference.inputs import Lists, Negatives, Pairs, Unpaired, kind_of
from lmloss.output import LossOutput
from lmloss.stats import token_stats
from lmloss.train import objective_sum
from lmloss.train.data import (
    HOST,
    Sequences,
    pad_sequences,
    prompt_completion,
    require_columns,
)
from lmloss.train.formats import FORMAT_COLUMNS, KIND_FORMATS
from lmloss.train.modes.base import Batch, Context, Example, Mode, encode_row, head_kwargs
from lmloss.train.modes.samples import answer_rows, sample_answers
from lmloss.train.token_store import TokenStore

# input kind -> the answer segments of a row, in the order they are stacked (lists: one
# segment per answer, ``completions[k]``)
SEGMENTS = {
    Pairs: ("chosen", "rejected"),
    Unpaired: ("completion",),
    Negatives: ("rejected",),
    Lists: (),
}
COLUMN_OF_INPUT = {"desirable": "label"}
STORE_KIND = "reference log-probs"
# groups of sampled answers: keyword prefix -> the option or spec flag that asks for them
REFERENCE_SAMPLES, ONLINE_SAMPLES = "sample_", "online_"


class PreferenceMode(Mode):
    family = "preference"
    description = "offline preference: prompt/chosen/rejected (paired) or prompt/completion/label"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.kind = kind_of(ctx.entry.spec)
        self.columns = FORMAT_COLUMNS[KIND_FORMATS[self.kind.__name__][0]]
        self.segments = SEGMENTS[self.kind]
        self.inputs = ctx.entry.spec.extra_inputs
        self.options = dict(ctx.recipe.options)
        self.draws = {
            REFERENCE_SAMPLES: ctx.entry.spec.samples,
            ONLINE_SAMPLES: self.options.get("hypo_weight") is not None,
        }
        self.reference_samples: dict[int, list[list[int]]] = {}  # by row: drawn once

    def uses_reference(self) -> bool:
        """The reference of the objective or of an added term, or the one that draws and
        scores sampled answers."""
        entries = [self.ctx.entry, *(t.entry for t in self.ctx.recipe.terms)]
        needed = any(e.spec.reference == "required" for e in entries)
        return needed or any(self.draws.values())

    # ---- data

    def check_columns(self, rows: list[dict], source: str) -> None:
        extra = [COLUMN_OF_INPUT.get(name, name) for name in self.inputs]
        why = f"the preference objective {self.ctx.entry.name!r}"
        require_columns(rows, tuple(dict.fromkeys((*self.columns, *extra))), source, why)

    def answers(self, row: dict) -> dict[str, str]:
        """The answers of a row by segment name (lists: ``completions[k]``)."""
        if self.kind is Lists:
            return {f"completions[{k}]": text for k, text in enumerate(row["completions"])}
        return {segment: str(row[segment]) for segment in self.segments}

    def encode(self, index: int, row: dict) -> Example | None:
        return encode_row(self.ctx.encoder, index, row, self.answers(row))

    def prepare(self, examples: list[Example]) -> Batch:
        return self._prepare(examples, examples[1:] + examples[:1])

    def prepare_shard(self, examples: list[Example], shard: slice) -> Batch:
        # KL partners are the next rows of the *global* micro-batch, so that the KL samples
        # of all ranks together are those a single process builds from the whole batch
        return self._prepare(examples[shard], (examples[1:] + examples[:1])[shard])

    def _segments_of(self, examples: list[Example]) -> tuple[str, ...]:
        return tuple(self.answers(examples[0].row)) if self.kind is Lists else self.segments

    def _prepare(self, examples: list[Example], partners: list[Example]) -> Batch:
        rows, trained = [], []
        for segment in self._segments_of(examples):
            for ex in examples:
                ids, mask = prompt_completion(ex.tokens["prompt"], ex.tokens[segment])
                rows.append(ids)
                trained.append(mask)
        seqs = pad_sequences(rows, trained, self.ctx.pad_id)
        tensors = {"seqs": seqs, "examples": examples}
        for prefix, asked in self.draws.items():
            if asked:
                tensors[prefix] = self._sampled(prefix, examples)
        if self.kind is Unpaired and (len(examples) > 1 or self.ctx.world.active):
            # KL samples: completion i after prompt i+1 (mismatched pairs, as TRL builds them)
            kl = [
                prompt_completion(b.tokens["prompt"], a.tokens["completion"])
                for a, b in zip(examples, partners)
            ]
            tensors["kl"] = pad_sequences([r for r, _ in kl], [m for _, m in kl], self.ctx.pad_id)
        return Batch(examples=len(examples), tokens=seqs.trained_tokens, tensors=tensors)

    def _sampled(self, prefix: str, examples: list[Example]) -> Sequences:
        """Sampled answers to each example's prompt: from the reference (drawn once per row
        and kept, as D2O's offline samples) or from the model now (HyPO)."""
        prompts = [ex.tokens["prompt"] for ex in examples]
        config, ctx = self.ctx.recipe.preference, self.ctx
        if prefix == ONLINE_SAMPLES:
            answers = sample_answers(ctx.model, ctx.tokenizer, prompts, config, ctx.autocast())
            return answer_rows(prompts, answers, ctx.pad_id)
        missing = [ex for ex in examples if ex.index not in self.reference_samples]
        if missing:
            reference = ctx.reference
            drawn = sample_answers(
                reference.model,
                ctx.tokenizer,
                [ex.tokens["prompt"] for ex in missing],
                config,
                ctx.autocast(),
                reference.active(),
            )
            for i, ex in enumerate(missing):
                self.reference_samples[ex.index] = drawn[
                    i * config.samples : (i + 1) * config.samples
                ]
        answers = [a for ex in examples for a in self.reference_samples[ex.index]]
        return answer_rows(prompts, answers, ctx.pad_id)

    def _data_inputs(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.inputs:
            values = [ex.row[COLUMN_OF_INPUT.get(name, name)] for ex in examples]
            out[name] = (
                torch.tensor([bool(v) for v in values], device=HOST)
                if name == "desirable"
                else torch.tensor(values, dtype=torch.float32, device=HOST)
            )
        return out

    # ---- objective

    def _layout(self, tensor: torch.Tensor, size: int) -> torch.Tensor:
        """Stacked rows ``[K·B, ...]`` (segment-major) as the kind takes them: lists
        ``[B, K, ...]``, every other kind as stacked."""
        if self.kind is not Lists:
            return tensor
        return tensor.unflatten(0, (size, -1)).transpose(0, 1)

    def _stored_reference(self, seqs: Sequences, examples: list[Example]) -> dict:
        """Precomputed reference log-probs, by group keyword (``ref_chosen_logps`` ...)."""
        segments = self._segments_of(examples)
        parts = [
            self.stored_per_token(self.ctx.reference_store, examples, segment, part, segment)
            for segment, part in zip(segments, seqs.targets.chunk(len(segments)))
        ]
        if self.kind is Pairs:
            return {f"ref_{p}logps": v for p, v in zip(self.kind.PRIMARY, parts)}
        return {"ref_logps": self._layout(torch.cat(parts), len(segments))}

    def _reference(self, seqs: Sequences, examples: list[Example]) -> dict:
        if self.ctx.reference_store is not None:
            return self._stored_reference(seqs, examples)
        if self.ctx.reference is None:
            return {}
        hidden, head = self.reference_hidden(seqs)
        size = len(self._segments_of(examples))
        return {
            "ref_hidden": self._layout(hidden, size),
            "ref_head": head,
        }

    def _sample_group(self, prefix: str, seqs: Sequences, prompts: int) -> dict:
        """Policy and reference hidden states of sampled answers, ``[B, K, T, H]``."""

        def per_prompt(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.unflatten(0, (prompts, -1))

        ref_hidden, _ = self.reference_hidden(seqs)
        return {
            f"{prefix}hidden": per_prompt(self.policy_hidden(seqs)),
            f"{prefix}targets": per_prompt(seqs.targets),
            f"ref_{prefix}hidden": per_prompt(ref_hidden),
        }

    def _kl_samples(self, kl: Sequences) -> dict:
        """Policy and reference log-probs of the KL samples, without gradients."""
        head = self.policy_head()
        with torch.no_grad():
            logps = token_stats(
                self.policy_hidden(kl), **head_kwargs(head), targets=kl.targets
            ).logp
        out = {"kl_logps": logps, "kl_mask": kl.targets != -100}
        if self.ctx.reference is not None:
            with torch.no_grad():
                hidden, ref_head = self.reference_hidden(kl)
                out["ref_kl_logps"] = token_stats(
                    hidden, **head_kwargs(ref_head), targets=kl.targets
                ).logp
        return self._global_kl_samples(out) if self.ctx.world.active else out

    def _global_kl_samples(self, local: dict) -> dict:
        """The KL samples of every rank, as one-token sequences of their summed log-probs:
        the objective's batch KL reference point becomes the mean over the global batch."""
        trained = local["kl_mask"]
        out = {}
        for key in ("kl_logps", "ref_kl_logps"):
            if key in local:
                sums = (local[key] * trained).sum(dim=1, keepdim=True)
                out[key] = self.ctx.world.gather_rows(sums)
        out["kl_mask"] = torch.ones_like(out["kl_logps"], dtype=torch.bool)
        return out

    def loss(self, batch: Batch, num_items: int | None) -> LossOutput:
        if self.ctx.recipe.terms:
            return self._weighted_sum(batch)
        seqs, examples = batch.tensors["seqs"], batch.tensors["examples"]
        inputs = self._data_inputs(examples)
        if "kl" in batch.tensors:
            inputs |= self._kl_samples(batch.tensors["kl"])
        for prefix, asked in self.draws.items():
            if asked:
                inputs |= self._sample_group(prefix, batch.tensors[prefix], len(examples))
        size = len(self._segments_of(examples))
        return self._door(fused=True)(
            self.ctx.entry.name,
            hidden=self._layout(self.policy_hidden(seqs), size),
            targets=self._layout(seqs.targets, size),
            head=self.policy_head(),
            **self._reference(seqs, examples),
            **inputs,
            **self.ctx.engine,
            **self.ctx.hyper,
        )

    def _door(self, fused: bool):
        """The front door (fused, or plain on statistics) with the recipe's options; LCPO
        wraps it when ``lcpo_noise`` is set."""
        options = {k: v for k, v in self.options.items() if k != "lcpo_noise"}
        door = lmloss.fused_preference_loss if fused else lmloss.preference_loss
        if "lcpo_noise" in self.options:
            door = partial(lmloss.lcpo, noise=self.options["lcpo_noise"])
        return partial(door, **options)

    # ---- weighted sums

    def _weighted_sum(self, batch: Batch) -> LossOutput:
        """The objective and its ``[[objective.add]]`` terms (pairwise and unpaired kinds):
        one backbone forward and one engine pass for the union of their statistics, then
        each term's plain front door on them (:mod:`lmloss.train.objective_sum`)."""
        seqs, examples = batch.tensors["seqs"], batch.tensors["examples"]
        terms = self.ctx.recipe.terms
        wpo = ("sum_sq_probs",) if self.options.get("wpo") else ()
        want = objective_sum.engine_statistics([self.ctx.entry, *(t.entry for t in terms)], wpo)
        stats = token_stats(
            self.policy_hidden(seqs),
            **head_kwargs(self.policy_head()),
            targets=seqs.targets,
            want=want,
            **self.ctx.engine,
        ).asdict()
        mask = seqs.targets != -100
        primary = self.kind.PRIMARY  # pairs: chosen rows, then rejected rows
        order = torch.arange(mask.shape[0], device=mask.device)
        rows = dict(zip(primary, order.chunk(len(primary))))
        keywords = self._reference_logps(seqs, examples)
        for prefix, index in rows.items():
            keywords[f"{prefix}logps"] = stats["logp"][index]
            keywords[f"{prefix}mask"] = mask[index]
            if wpo:
                keywords[f"{prefix}sum_sq_probs"] = stats["sum_sq_probs"][index]
        inputs = self._data_inputs(examples)
        if "kl" in batch.tensors:
            inputs |= self._kl_samples(batch.tensors["kl"])

        def taken(entry) -> dict:
            return {k: v for k, v in inputs.items() if k in entry.spec.takes}

        name = self.ctx.entry.name
        door = self._door(fused=False)
        parts = [(name, 1.0, door(name, **keywords, **taken(self.ctx.entry), **self.ctx.hyper))]
        good = self._good_answers(mask, rows, inputs)
        for term in terms:
            if term.entry.family == "likelihood":
                out = _likelihood_on(term, stats, good)
            else:
                out = lmloss.preference_loss(
                    term.name, **keywords, **taken(term.entry), **term.hyper
                )
            parts.append((term.name, term.weight, out))
        return objective_sum.total(parts)

    def _reference_logps(self, seqs: Sequences, examples: list[Example]) -> dict:
        """Reference log-probs by group keyword: stored, or one engine pass of the reference
        (with the policy head's logit transform, as the fused front door applies it)."""
        found = self._reference(seqs, examples)
        if "ref_hidden" not in found:
            return found  # stored log-probs, or no reference
        with torch.no_grad():
            logps = token_stats(
                found["ref_hidden"],
                found["ref_head"].weight,
                seqs.targets,
                found["ref_head"].bias,
                **self.policy_head().transform_kwargs(),
                **self.ctx.engine,
            ).logp
        parts = logps.chunk(len(self.kind.PRIMARY))
        return {f"ref_{p}logps": part for p, part in zip(self.kind.PRIMARY, parts)}

    def _good_answers(self, mask: torch.Tensor, rows: dict, inputs: dict) -> torch.Tensor:
        """The tokens likelihood terms train on: the chosen answers of pairs, the
        completions labelled desirable of unpaired rows (a ``[rows, T]`` mask)."""
        good = torch.zeros_like(mask)
        first = rows[self.kind.PRIMARY[0]]
        good[first] = mask[first]
        if self.kind is Unpaired:
            good &= inputs["desirable"].to(mask.device)[:, None]
        return good

    # ---- lmloss precompute

    def precompute(self, examples: list[Example], path: Path) -> str:
        """Reference (= the initial model) log-probs of every completion token, to ``path``."""
        names = self._segments_of(examples)
        segments = {segment: [] for segment in names}
        batch_size = self.ctx.recipe.train.batch_size
        head = self.policy_head()
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            for segment in names:
                seqs = self.sequences_of(chunk, segment)
                with torch.no_grad():
                    logps = token_stats(
                        self.policy_hidden(seqs), **head_kwargs(head), targets=seqs.targets
                    ).logp
                for i, ex in enumerate(chunk):
                    keep = seqs.targets[i] != -100
                    segments[segment].append((ex.tokens[segment], logps[i][keep]))
        TokenStore.write(path, segments, STORE_KIND)
        return f"reference log-probs of {len(examples)} rows ({', '.join(names)})"


def _likelihood_on(term, stats: dict, good: torch.Tensor) -> LossOutput:
    """A likelihood term's token mean over the ``good`` tokens (zero when there is none)."""
    if not good.any():
        zero = (stats["logp"] * 0).sum()
        return LossOutput(loss=zero, per_example=torch.zeros_like(stats["logp"]))
    other = {k: v for k, v in stats.items() if k != "logp"}
    return lmloss.likelihood_loss(term.name, logps=stats["logp"], mask=good, **other, **term.hyper)
