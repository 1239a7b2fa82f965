"""Sampling from the model being trained (online modes) and greedy answers (evaluation).

Prompts are left-padded so that every completion starts at the same column; the
completion mask keeps each row's tokens up to and including its first end-of-sequence.
The decoding loop is our own (a key/value cache, one token per step) rather than
``model.generate``: a group's prompt is encoded once for all its samples, and the draw
costs one random number per row instead of one per vocabulary entry.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from lmloss.train.data import left_pad


@dataclass
class Generated:
    """``ids [N, P + C]`` (prompt then completion), ``attention`` covering both, ``start = P``."""

    ids: torch.Tensor
    attention: torch.Tensor
    start: int
    mask: torch.Tensor  # [N, C] completion tokens
    # per-token values of the sampling-time distribution, [N, C] each (see ``record``)
    recorded: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def completions(self) -> torch.Tensor:
        return self.ids[:, self.start :]

    def texts(self, tokenizer) -> list[str]:
        return [
            tokenizer.decode(c[m], skip_special_tokens=True)
            for c, m in zip(self.completions, self.mask)
        ]


def select_rows(generated: Generated, rows: torch.Tensor) -> Generated:
    """The completions ``rows`` (indices) of ``generated``."""
    return Generated(
        ids=generated.ids[rows],
        attention=generated.attention[rows],
        start=generated.start,
        mask=generated.mask[rows],
        recorded={k: v[rows] for k, v in generated.recorded.items()},
    )


def concat_generated(parts: list[Generated], pad: int) -> Generated:
    """Completions of several generate calls as one batch: prompts left-padded and
    completions right-padded to the longest (padding outside the attention and the mask)."""
    start = max(p.start for p in parts)
    width = max(p.mask.shape[1] for p in parts)

    def widen(t: torch.Tensor, left: int, right: int, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (left, right), value=value)

    ids, attention, masks, recorded = [], [], [], {}
    for p in parts:
        left, right = start - p.start, width - p.mask.shape[1]
        ids.append(widen(p.ids, left, right, pad))
        attention.append(widen(p.attention, left, right, 0))
        masks.append(widen(p.mask, 0, right, False))
        for name, values in p.recorded.items():
            recorded.setdefault(name, []).append(widen(values, 0, right, 0.0))
    return Generated(
        ids=torch.cat(ids),
        attention=torch.cat(attention),
        start=start,
        mask=torch.cat(masks),
        recorded={k: torch.cat(v) for k, v in recorded.items()},
    )


def completion_mask(completions: torch.Tensor, eos: int | None) -> torch.Tensor:
    """True up to and including each row's first end-of-sequence token."""
    if eos is None:
        return torch.ones_like(completions, dtype=torch.bool)
    is_eos = (completions == eos).long()
    return (is_eos.cumsum(1) - is_eos) == 0


def pick_tokens(logits: torch.Tensor, sampling: dict | None) -> torch.Tensor:
    """The next token of each row of ``logits [N, V]``: greedy (``sampling`` None) or a
    draw from ``softmax(logits / temperature)`` restricted to ``top_k`` / ``top_p``.

    The draw inverts the cumulative distribution with one uniform number per row (the
    torch global RNG): the same distribution as ``torch.multinomial``, without the
    ``V`` random numbers per row it spends on the CPU (the largest sampling cost).
    """
    if sampling is None:
        return logits.argmax(-1)
    temperature = sampling.get("temperature", 1.0)
    top_k, top_p = sampling.get("top_k", 0), sampling.get("top_p", 1.0)
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = scores.softmax(-1)
    if top_p < 1.0:
        # drop the tail outside the smallest set whose mass reaches top_p (keep the top token)
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp(max=cdf.shape[-1] - 1)


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
    record: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> Generated:
    """``group_size`` completions per prompt; greedy when ``sampling`` is None.

    ``sampling``: ``temperature``, ``top_p``, ``top_k`` (the torch global RNG draws).
    Each prompt is encoded once and its key/value cache copied to its ``group_size``
    rows (the group shares the prefix: ``group_size`` times less prompt compute than
    repeating the prompt); decoding stops when every row has ended.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    ids, attention = (t.to(device) for t in left_pad(prompts, pad))
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    was_training = model.training
    model.eval()
    try:
        with autocast or nullcontext():
            out = model(
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1]
            if group_size > 1:
                cache.batch_repeat_interleave(group_size)
                logits = logits.repeat_interleave(group_size, 0)
                attention = attention.repeat_interleave(group_size, 0)
                positions = positions.repeat_interleave(group_size, 0)
            position = positions[:, -1:]
            done = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
            tokens, recorded = [], []
            for step in range(max_new_tokens):
                token = pick_tokens(logits, sampling)
                if pad is not None:
                    token = token.masked_fill(done, pad)
                tokens.append(token)
                if record is not None:
                    recorded.append(record(logits, token))
                if eos is not None:
                    done = done | (token == eos)
                if step == max_new_tokens - 1 or bool(done.all()):
                    break
                attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], 1)
                position = position + 1
                out = model(
                    input_ids=token[:, None],
                    attention_mask=attention,
                    position_ids=position,
                    past_key_values=cache,
                    use_cache=True,
                )
                logits = out.logits[:, -1]
    finally:
        model.train(was_training)
    start = ids.shape[1]
    full = torch.cat([ids.repeat_interleave(group_size, 0), torch.stack(tokens, 1)], 1)
    mask = completion_mask(full[:, start:], eos)
    prompt_attention = attention[:, :start]
    return Generated(
        ids=full,
        attention=torch.cat([prompt_attention, mask.long()], 1),
        start=start,
        mask=mask,
        recorded={
            name: torch.stack([step[name] for step in recorded], 1).float()
            for name in (recorded[0] if recorded else {})
        },
    )
