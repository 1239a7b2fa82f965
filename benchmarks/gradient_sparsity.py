"""How much of the logit gradient could be skipped on a trained model (Cut Cross-Entropy's idea).

The gradient of a per-token statistic w.r.t. the logits is, up to the target's one-hot,
proportional to the softmax ``p``. Cut Cross-Entropy skips a ``tokens × vocab`` block of
the backward when every ``p`` in it is below the precision of the gradient dtype (2^-12
for bf16). Whether that pays depends on how concentrated a trained model's softmax is and
on the block shape, so this script measures, on SmolLM2-135M-Instruct scoring text it wrote
itself, the fraction of blocks that are entirely below a threshold.

Run: ``.venv/bin/python benchmarks/gradient_sparsity.py``
"""

from __future__ import annotations

import torch

from _harness import greedy_chat
from lmloss.models import smollm2

PROMPTS = (
    "Explain how a rainbow forms.",
    "Write a short story about a lighthouse keeper.",
    "List three uses of copper and explain each.",
    "What is the difference between weather and climate?",
)
THRESHOLDS = {"2^-12 (bf16)": 2.0**-12, "2^-16": 2.0**-16}
TOKEN_TILES = (1, 16, 64)
VOCAB_TILES = (256, 1024, 8192)


def probabilities(model, tokenizer) -> torch.Tensor:
    rows = []
    for prompt in PROMPTS:
        ids, start = greedy_chat(model, tokenizer, prompt, 96)
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0, start - 1 : -1]
        rows.append(torch.softmax(logits.float(), -1))
    return torch.cat(rows)


def skippable_fraction(
    p: torch.Tensor, threshold: float, token_tile: int, vocab_tile: int
) -> float:
    n = p.shape[0] // token_tile * token_tile
    v = p.shape[1] // vocab_tile * vocab_tile
    blocks = p[:n, :v].reshape(n // token_tile, token_tile, v // vocab_tile, vocab_tile)
    return float((blocks.amax(dim=(1, 3)) < threshold).float().mean())


def main() -> None:
    model, tokenizer = smollm2()
    p = probabilities(model, tokenizer)
    print(f"{p.shape[0]} generated tokens, vocabulary {p.shape[1]}\n")
    print("| threshold | token tile | " + " | ".join(f"vocab tile {v}" for v in VOCAB_TILES) + " |")
    print("|---|---|" + "---|" * len(VOCAB_TILES))
    for label, threshold in THRESHOLDS.items():
        for t in TOKEN_TILES:
            cells = [f"{skippable_fraction(p, threshold, t, v):.1%}" for v in VOCAB_TILES]
            print(f"| {label} | {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
