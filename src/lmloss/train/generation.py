"""Sampling from the model being trained (online modes) and greedy answers (evaluation).

Prompts are left-padded so that every completion starts at the same column; the
completion mask keeps each row's tokens up to and including its first end-of-sequence.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from lmloss.train.data import left_pad


@dataclass
class Generated:
    """``ids [N, P + C]`` (prompt then completion), ``attention`` covering both, ``start = P``."""

    ids: torch.Tensor
    attention: torch.Tensor
    start: int
    mask: torch.Tensor  # [N, C] completion tokens

    @property
    def completions(self) -> torch.Tensor:
        return self.ids[:, self.start :]

    def texts(self, tokenizer) -> list[str]:
        return [
            tokenizer.decode(c[m], skip_special_tokens=True)
            for c, m in zip(self.completions, self.mask)
        ]


def completion_mask(completions: torch.Tensor, eos: int | None) -> torch.Tensor:
    """True up to and including each row's first end-of-sequence token."""
    if eos is None:
        return torch.ones_like(completions, dtype=torch.bool)
    is_eos = (completions == eos).long()
    return (is_eos.cumsum(1) - is_eos) == 0


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    group_size: int = 1,
    sampling: dict | None = None,
    autocast: AbstractContextManager | None = None,
) -> Generated:
    """``group_size`` completions per prompt; greedy when ``sampling`` is None.

    ``sampling``: ``temperature``, ``top_p``, ``top_k`` (the torch global RNG draws).
    """
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids, attention = (t.to(device) for t in left_pad(prompts, pad))
    options = {"do_sample": False} if sampling is None else {"do_sample": True, **sampling}
    was_training = model.training
    model.eval()
    try:
        with autocast or nullcontext():
            out = model.generate(
                input_ids=ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                num_return_sequences=group_size,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                **options,
            )
    finally:
        model.train(was_training)
    start = ids.shape[1]
    mask = completion_mask(out[:, start:], tokenizer.eos_token_id)
    full_attention = torch.cat([attention.repeat_interleave(group_size, 0), mask.long()], dim=1)
    return Generated(ids=out, attention=full_attention, start=start, mask=mask)
