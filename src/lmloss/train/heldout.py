"""A held-out data file (``data.eval_path``): its loss and a few greedy answers, at each eval.

The file is read and checked like the training data and encoded by the same mode; its loss
is the objective's loss over the whole file (token mean over all its trained tokens for
token-mean objectives, the example mean otherwise), without gradients. A few of its
prompts are answered greedily and written to ``run_dir/samples.jsonl`` with the step, so
the run's outputs can be read as it learns.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch

from lmloss.train.device import to_device
from lmloss.train.generation import generate
from lmloss.train.modes import TOKENS, Example, Mode

SAMPLES = "samples.jsonl"


class HeldOut:
    def __init__(
        self,
        mode: Mode,
        rows: list[dict],
        batch_size: int,
        device: torch.device | None = None,
        shown: int = 3,
    ) -> None:
        if mode.family == "policy":
            raise ValueError(
                "data.eval_path: a held-out loss needs an offline objective, not a "
                "policy one (use eval.task for a verifiable held-out metric)"
            )
        encoded = [mode.encode(i, row) for i, row in enumerate(rows)]
        self.examples = [e for e in encoded if e is not None]
        if not self.examples:
            raise ValueError("data.eval_path: no row is left after the length limits")
        self.mode, self.batch_size, self.shown = mode, batch_size, shown
        self.device = torch.device("cpu") if device is None else device

    @torch.no_grad()
    def loss(self) -> float:
        model = self.mode.ctx.model
        was_training = model.training
        model.eval()
        try:
            chunks = [
                self.examples[i : i + self.batch_size]
                for i in range(0, len(self.examples), self.batch_size)
            ]
            batches = [self.mode.prepare(chunk) for chunk in chunks]
            for batch in batches:
                batch.tensors = to_device(batch.tensors, self.device)
            by_tokens = self.mode.normalizer() == TOKENS
            tokens = sum(b.tokens for b in batches)
            total = 0.0
            for batch in batches:
                out = self.mode.loss(batch, tokens if by_tokens else None)
                share = 1.0 if by_tokens else batch.examples / len(self.examples)
                total += float(out.loss) * share
        finally:
            model.train(was_training)
        return total

    def samples(self, max_new_tokens: int, autocast=None) -> list[dict]:
        """Greedy answers to the first prompts of the file (none for a reward model, which
        does not generate)."""
        if self.mode.model_kind != "causal_lm":
            return []
        chosen = self.examples[: self.shown]
        prompts = [_prompt_ids(e) for e in chosen]
        tokenizer = self.mode.ctx.tokenizer
        out = generate(
            self.mode.ctx.model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            autocast=autocast or nullcontext(),
        )
        return [
            {"prompt": tokenizer.decode(p), "output": text}
            for p, text in zip(prompts, out.texts(tokenizer))
        ]


def _prompt_ids(example: Example) -> list[int]:
    """The tokens before the first trained one (a conversation's first answer)."""
    if example.trained is None:
        return example.tokens["prompt"]
    ids = example.tokens["conversation"]
    first = example.trained.index(True) if any(example.trained) else len(ids)
    return ids[: max(first, 1)]


def append_samples(run_dir: Path, step: int, samples: list[dict]) -> None:
    with (run_dir / SAMPLES).open("a") as f:
        for sample in samples:
            f.write(json.dumps({"step": step, **sample}) + "\n")
