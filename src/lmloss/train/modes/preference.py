"""Offline preference optimization: paired (``prompt``/``chosen``/``rejected``) or unpaired
(``prompt``/``completion``/``label``) rows, by the objective's input kind.

The chosen and rejected rows go through the model as one ``[2B, T]`` batch (chosen first,
as :func:`lmloss.fused_preference_loss` expects); the reference is a frozen model run under
``no_grad`` (its hidden states go to the same front door) or log-probs precomputed by
``lmloss precompute``. Unpaired objectives (KTO) also get KL samples: each completion
paired with the next row's prompt, scored by policy and reference without gradients.
The objective's spec says whether a reference model runs (``reference``) and which
per-example inputs it needs beyond its input kind (``extra_inputs``: ``strength`` of OSP,
``desirable`` of KTO); those come from the data column of the same name (``label`` for
``desirable``).
"""

from __future__ import annotations

from pathlib import Path

import torch

import lmloss
from lmloss.objectives.preference.inputs import Pairs, Unpaired, kind_of
from lmloss.output import LossOutput
from lmloss.stats import token_stats
from lmloss.train.data import (
    HOST,
    Sequences,
    pad_sequences,
    prompt_completion,
    require_columns,
)
from lmloss.train.modes.base import Batch, Context, Example, Mode, encode_row, head_kwargs
from lmloss.train.token_store import TokenStore

# input kind -> (row columns, completion segments in the stacked batch)
LAYOUTS = {
    Pairs: (("prompt", "chosen", "rejected"), ("chosen", "rejected")),
    Unpaired: (("prompt", "completion", "label"), ("completion",)),
}
COLUMN_OF_INPUT = {"desirable": "label"}
STORE_KIND = "reference log-probs"


class PreferenceMode(Mode):
    family = "preference"
    description = "offline preference: prompt/chosen/rejected (paired) or prompt/completion/label"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.kind = kind_of(ctx.entry.spec)
        if self.kind not in LAYOUTS:
            raise ValueError(
                f"objective {ctx.entry.name!r} takes {self.kind.__name__} inputs; lmloss train "
                f"builds paired and unpaired batches only (objectives of kinds "
                f"{', '.join(k.__name__ for k in LAYOUTS)})"
            )
        self.columns, self.segments = LAYOUTS[self.kind]
        self.inputs = ctx.entry.spec.extra_inputs

    # ---- data

    def check_columns(self, rows: list[dict], source: str) -> None:
        extra = [COLUMN_OF_INPUT.get(name, name) for name in self.inputs]
        why = f"the preference objective {self.ctx.entry.name!r}"
        require_columns(rows, tuple(dict.fromkeys((*self.columns, *extra))), source, why)

    def encode(self, index: int, row: dict) -> Example | None:
        return encode_row(self.ctx.encoder, index, row, self.segments)

    def prepare(self, examples: list[Example]) -> Batch:
        return self._prepare(examples, examples[1:] + examples[:1])

    def prepare_shard(self, examples: list[Example], shard: slice) -> Batch:
        # KL partners are the next rows of the *global* micro-batch, so that the KL samples
        # of all ranks together are those a single process builds from the whole batch
        return self._prepare(examples[shard], (examples[1:] + examples[:1])[shard])

    def _prepare(self, examples: list[Example], partners: list[Example]) -> Batch:
        rows, trained = [], []
        for segment in self.segments:
            for ex in examples:
                ids, mask = prompt_completion(ex.tokens["prompt"], ex.tokens[segment])
                rows.append(ids)
                trained.append(mask)
        seqs = pad_sequences(rows, trained, self.ctx.pad_id)
        tensors = {"seqs": seqs, "examples": examples}
        if self.kind is Unpaired and (len(examples) > 1 or self.ctx.world.active):
            # KL samples: completion i after prompt i+1 (mismatched pairs, as TRL builds them)
            kl = [
                prompt_completion(b.tokens["prompt"], a.tokens["completion"])
                for a, b in zip(examples, partners)
            ]
            tensors["kl"] = pad_sequences([r for r, _ in kl], [m for _, m in kl], self.ctx.pad_id)
        return Batch(examples=len(examples), tokens=seqs.trained_tokens, tensors=tensors)

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

    def _reference(self, seqs: Sequences, examples: list[Example]) -> dict:
        if self.ctx.reference_store is not None:
            targets = seqs.targets.chunk(len(self.segments))
            return {
                f"ref_{self._prefix(segment)}logps": self.stored_per_token(
                    self.ctx.reference_store, examples, segment, part, segment
                )
                for segment, part in zip(self.segments, targets)
            }
        if self.ctx.reference is None:
            return {}
        hidden, head = self.reference_hidden(seqs)
        return {"ref_hidden": hidden, "ref_weight": head.weight, "ref_bias": head.bias}

    def _prefix(self, segment: str) -> str:
        return dict(zip(self.segments, self.kind.PRIMARY))[segment]

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
        seqs, examples = batch.tensors["seqs"], batch.tensors["examples"]
        extra = self._data_inputs(examples)
        if "kl" in batch.tensors:
            extra |= self._kl_samples(batch.tensors["kl"])
        return lmloss.fused_preference_loss(
            self.ctx.entry.name,
            hidden=self.policy_hidden(seqs),
            targets=seqs.targets,
            **head_kwargs(self.policy_head()),
            **self._reference(seqs, examples),
            **extra,
            **self.ctx.engine,
            **self.ctx.hyper,
        )

    # ---- lmloss precompute

    def precompute(self, examples: list[Example], path: Path) -> str:
        """Reference (= the initial model) log-probs of every completion token, to ``path``."""
        segments = {segment: [] for segment in self.segments}
        batch_size = self.ctx.recipe.train.batch_size
        head = self.policy_head()
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            for segment in self.segments:
                seqs = self.sequences_of(chunk, segment)
                with torch.no_grad():
                    logps = token_stats(
                        self.policy_hidden(seqs), **head_kwargs(head), targets=seqs.targets
                    ).logp
                for i, ex in enumerate(chunk):
                    keep = seqs.targets[i] != -100
                    segments[segment].append((ex.tokens[segment], logps[i][keep]))
        TokenStore.write(path, segments, STORE_KIND)
        return f"reference log-probs of {len(examples)} rows ({', '.join(self.segments)})"
