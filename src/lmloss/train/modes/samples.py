"""Answers the trainer samples for offline preference objectives, as trained sequences.

D2O compares each negative with ``K`` answers sampled from the reference policy for the same
prompt; HyPO adds a KL term estimated on answers sampled from the current policy. Both
draw with :func:`lmloss.train.generation.generate` (the one sampler) and get right-padded
prompt + answer rows back, ``K`` consecutive rows per prompt, whose answers are trained.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from lmloss.train.config import PreferenceConfig
from lmloss.train.data import Sequences, pad_sequences, prompt_completion
from lmloss.train.generation import generate


def sample_answers(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[list[int]],
    config: PreferenceConfig,
    autocast: AbstractContextManager | None = None,
    context: AbstractContextManager | None = None,
) -> list[list[int]]:
    """``config.samples`` sampled answers (token ids, up to the end-of-sequence) per prompt,
    prompt-major. ``context``: how ``model`` runs (a reference with its adapters off)."""
    sampling = {"temperature": config.temperature}
    with context or nullcontext():
        out = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=config.max_new_tokens,
            group_size=config.samples,
            sampling=sampling,
            autocast=autocast,
        )
    return [row[keep].tolist() for row, keep in zip(out.completions.cpu(), out.mask.cpu())]


def answer_rows(prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> Sequences:
    """Prompt + answer rows, ``len(answers) // len(prompts)`` answers per prompt, in order."""
    per_prompt = len(answers) // len(prompts)
    rows = [prompt_completion(prompts[i // per_prompt], a) for i, a in enumerate(answers)]
    return pad_sequences([r for r, _ in rows], [m for _, m in rows], pad_id)
