"""Packing (``data.packing = true``): several short rows in one sequence, none seeing another.

Rows are packed in data order, greedily, into sequences of at most ``data.max_length``
tokens. Each packed row keeps its own positions (``position_ids`` restart at 0) and the
model runs without a 2-D attention mask: Hugging Face models then build a block-diagonal
causal mask from where the positions restart (the "padding-free" batches of
``transformers``), so no token attends across rows. The first token of each row is never
a target (it would be predicted from the previous row), exactly as in an unpacked batch;
packed and unpacked batches give the same loss (tested).
"""

from __future__ import annotations

import torch

from lmloss.train.data import HOST
from lmloss.train.modes.base import Example

POSITIONS = "positions"


def _row(example: Example) -> tuple[list[int], list[bool]]:
    if example.trained is not None:
        return example.tokens["conversation"], example.trained
    prompt, completion = example.tokens["prompt"], example.tokens["completion"]
    return prompt + completion, [False] * len(prompt) + [True] * len(completion)


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Examples packed into sequences of at most ``max_length`` tokens."""
    packs: list[Example] = []
    ids: list[int] = []
    trained: list[bool] = []
    positions: list[int] = []
    members: list[int] = []

    def close() -> None:
        if ids:
            tokens = {"conversation": list(ids), POSITIONS: list(positions)}
            packs.append(Example(members[0], {"packed_rows": list(members)}, tokens, list(trained)))
            ids.clear(), trained.clear(), positions.clear(), members.clear()

    for example in examples:
        row, mask = _row(example)
        if len(ids) + len(row) > max_length:
            close()
        ids += row
        trained += [False, *mask[1:]]  # the first token has nothing of its own before it
        positions += range(len(row))
        members.append(example.index)
    close()
    return packs


def position_ids(examples: list[Example], width: int) -> torch.Tensor:
    """``[B, width]`` positions of packed examples; the padding is one more row of its own."""
    out = torch.zeros(len(examples), width, dtype=torch.long, device=HOST)
    for i, example in enumerate(examples):
        positions = example.tokens[POSITIONS]
        out[i, : len(positions)] = torch.tensor(positions, device=HOST)
        out[i, len(positions) :] = torch.arange(width - len(positions), device=HOST)
    return out


def is_packed(examples: list[Example]) -> bool:
    return bool(examples) and POSITIONS in examples[0].tokens
