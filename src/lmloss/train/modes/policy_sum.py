"""A policy objective plus likelihood terms on demonstrations (``[[objective.add]]``).

GRPO + SFT (as in several of our sources): each prompt row also holds a demonstration in its
``completion`` column. The sampled rows (left-padded prompts, completions from column
``start``) and the demonstration rows (right-padded prompt + answer) go through the
backbone as one batch, and the engine computes the union of the statistics of every term
over the rows of both in one pass; then the policy objective runs on the sampled tokens and
each likelihood term on the demonstration tokens (the front doors' plain paths). Both are
scored at ``policy.temperature``: the policy being trained is the tempered distribution the
samples come from, and one engine pass has one temperature.

The likelihood terms are token means over the micro-batch's demonstration tokens, weighted
like the policy objective: by the micro-batch's share of the step's sampled tokens when the
objective averages over tokens (the loop then sums micro-batches), else as it is (the loop
weights each micro-batch by its share of the step's sequences).
"""

from __future__ import annotations

import torch

import lmloss
from lmloss.hf import hidden_states
from lmloss.output import LossOutput
from lmloss.stats import token_stats
from lmloss.train import objective_sum
from lmloss.train.data import IGNORE
from lmloss.train.modes.base import Batch, Mode, head_kwargs, like_head


def _side_by_side(first: torch.Tensor, second: torch.Tensor, fill: int) -> torch.Tensor:
    """Rows of ``first`` then of ``second``, right-padded with ``fill`` to one width."""
    width = max(first.shape[1], second.shape[1])

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)

    return torch.cat([pad(first), pad(second)])


def policy_with_terms(mode: Mode, batch: Batch, num_items: int | None) -> LossOutput:
    """The policy objective of ``mode`` and the recipe's likelihood terms, one backbone
    forward and one engine pass (see the module docstring)."""
    ctx, t = mode.ctx, batch.tensors
    demo = t["demonstrations"]
    ids = _side_by_side(t["ids"], demo.ids, ctx.pad_id)
    attention = _side_by_side(t["attention"], demo.attention, 0)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    with ctx.autocast():
        hidden = hidden_states(ctx.model, ids, attention, position_ids=positions)
    head = mode.policy_head()
    sampled = len(t["ids"])
    scored = slice(t["start"] - 1, t["ids"].shape[1] - 1)  # states that predict completions
    groups = [
        (hidden[:sampled, scored], t["targets"]),
        (hidden[sampled:, : demo.targets.shape[1]], demo.targets),
    ]
    terms = ctx.recipe.terms
    want = objective_sum.engine_statistics(
        [ctx.entry, *(term.entry for term in terms)], ("entropy",)
    )
    stats = token_stats(
        like_head(torch.cat([h.reshape(-1, h.shape[-1]) for h, _ in groups]), head),
        **head_kwargs(head),
        targets=torch.cat([targets.reshape(-1) for _, targets in groups]),
        want=want,
        **mode.scoring,
    ).asdict()
    split = {k: v.split([targets.numel() for _, targets in groups]) for k, v in stats.items()}
    policy_stats, demo_stats = (
        {k: parts[i].reshape(groups[i][1].shape) for k, parts in split.items()} for i in (0, 1)
    )
    parts = [(ctx.entry.name, 1.0, _policy_loss(mode, t, policy_stats, num_items))]
    share = 1.0 if num_items is None else batch.tokens / num_items
    demo_mask = demo.targets != IGNORE
    for term in terms:
        other = {k: v for k, v in demo_stats.items() if k != "logp"}
        out = lmloss.likelihood_loss(
            term.name, logps=demo_stats["logp"], mask=demo_mask, **other, **term.hyper
        )
        parts.append((term.name, term.weight * share, out))
    return objective_sum.total(parts)


def _policy_loss(mode: Mode, t: dict, stats: dict, num_items: int | None) -> LossOutput:
    ctx, targets = mode.ctx, t["targets"]
    inputs = {"num_items": num_items} if num_items is not None else {}
    for name in ("proxy_logps", "old_logps"):  # Lp-Reg's proxy; reused rollouts' π_old
        if name in t:
            inputs[name] = t[name]
    if "token_ids" in ctx.entry.spec.takes:
        inputs["token_ids"] = targets
    if ctx.reference is not None:
        positions = (t["attention"].cumsum(1) - 1).clamp(min=0)
        with ctx.autocast():
            ref_hidden, ref_head = ctx.reference.hidden(
                t["ids"], t["attention"], position_ids=positions
            )
        scored = slice(t["start"] - 1, t["ids"].shape[1] - 1)
        with torch.no_grad():
            inputs["ref_logps"] = token_stats(
                like_head(ref_hidden[:, scored], ref_head),
                **head_kwargs(ref_head),
                targets=targets,
                **mode.scoring,
            ).logp
    return lmloss.policy_loss(
        ctx.entry.name,
        logps=stats["logp"],
        mask=(targets != IGNORE).float(),
        advantages=t["advantages"],
        entropy=stats["entropy"],
        **inputs,
        **mode.hyper,
    )
