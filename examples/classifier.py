"""A text classifier (or a reward model) on a causal LM's backbone with an lmloss objective.

``lmloss train`` trains causal LMs; classification objectives (``lmloss list --family
classify``) take ``[N, C]`` scores from any model. Here the scores come from a linear head
on the backbone's last-token hidden state (how Hugging Face ``*ForSequenceClassification``
models and reward models pool), trained with ``lmloss.classification_loss``::

    python examples/classifier.py --model smollm2 --objective ldr_kl --steps 20

Rows of ``--data`` are ``{"text": ..., "label": <class index>}``. With two classes and
``label`` 1 for preferred answers, the head's score is a reward model's reward.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import lmloss
from lmloss.hf import hidden_states
from lmloss.train.model_loading import load_pretrained

HERE = Path(__file__).parent


def last_token_states(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """``[N, H]`` hidden state of each text's last token (right padding)."""
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"])
    last = batch["attention_mask"].sum(dim=1) - 1
    return hidden[torch.arange(len(texts), device=hidden.device), last]


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2' or a local model folder")
    parser.add_argument("--data", default=str(HERE / "data" / "sentiment.jsonl"))
    parser.add_argument("--objective", default="ldr_kl", help="a classify-family objective")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line]
    texts = [r["text"] for r in rows]
    labels = torch.tensor([int(r["label"]) for r in rows])
    model, tokenizer = load_pretrained(args.model)
    model.requires_grad_(False)  # a frozen backbone: only the head trains (a CPU-sized run)
    head = torch.nn.Linear(model.config.hidden_size, int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr)
    with torch.no_grad():
        features = last_token_states(model, tokenizer, texts)
    losses = []
    for step in range(args.steps):
        loss = lmloss.classification_loss(args.objective, logits=head(features), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        print(f"step {step + 1}: {args.objective} loss {losses[-1]:.4f}")
    return losses


if __name__ == "__main__":
    main()
