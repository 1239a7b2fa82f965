"""Chunk sizes chosen from a memory budget.

The engine works on tiles of ``tokens × vocab`` logits in the compute dtype. A handful of
tiles are alive at once (the logits, their exponentials or softmax, the logit gradient and
one temporary), so a tile gets a quarter of the budget. Vocabulary tiles are capped so that
the matmul stays large enough to run at full speed while the working set stays in cache-
friendly sizes; tokens take what is left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BUDGET_VARIABLE = "LMLOSS_MEMORY_BUDGET_MB"
DEFAULT_BUDGET_BYTES = 128 * 2**20
VOCAB_TILE = 8192
MIN_TOKEN_TILE = 16
LIVE_TILES = 4
# One-pass tiles span the vocabulary and each adds its [V, H] share to the weight gradient;
# with fewer rows than this that update is bound by memory traffic, not arithmetic.
ONE_PASS_MIN_TOKENS = 256


def default_budget() -> int:
    """``LMLOSS_MEMORY_BUDGET_MB`` from the environment, else 128 MiB."""
    value = os.environ.get(BUDGET_VARIABLE)
    if value is None:
        return DEFAULT_BUDGET_BYTES
    try:
        megabytes = float(value)
    except ValueError:
        raise ValueError(f"LMLOSS_MEMORY_BUDGET_MB must be a number, got {value!r}") from None
    if megabytes <= 0:
        raise ValueError(f"LMLOSS_MEMORY_BUDGET_MB must be > 0, got {value!r}")
    return int(megabytes * 2**20)


@dataclass(frozen=True)
class ChunkPlan:
    tokens: int
    vocab: int


def plan_chunks(
    n_tokens: int,
    vocab: int,
    itemsize: int,
    budget_bytes: int | None = None,
    *,
    whole_vocab: bool = False,
) -> ChunkPlan:
    """Tile sizes for ``n_tokens × vocab`` logits of ``itemsize`` bytes within the budget.

    ``whole_vocab`` asks for tiles that span the vocabulary (the one-pass path that computes
    gradients during the forward needs every logit of a row at once). Without an explicit
    budget (argument or environment) such tiles get at least :data:`ONE_PASS_MIN_TOKENS`
    rows, so that the weight-gradient update stays compute-bound: about 0.5 GiB for a 128k
    vocabulary.
    """
    if budget_bytes is not None:
        budget = int(budget_bytes)
    elif whole_vocab and BUDGET_VARIABLE not in os.environ:
        budget = max(DEFAULT_BUDGET_BYTES, ONE_PASS_MIN_TOKENS * vocab * itemsize * LIVE_TILES)
    else:
        budget = default_budget()
    if budget <= 0:
        raise ValueError(f"memory_budget must be > 0 bytes, got {budget_bytes}")
    vocab_tile = vocab if whole_vocab else min(vocab, VOCAB_TILE)
    per_token = vocab_tile * itemsize * LIVE_TILES
    token_tile = max(MIN_TOKEN_TILE, budget // per_token)
    return ChunkPlan(tokens=max(1, min(n_tokens, token_tile)), vocab=vocab_tile)
