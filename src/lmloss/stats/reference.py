"""The materializing reference: statistics from a full ``[N, V]`` logits tensor.

Plain differentiable PyTorch, written independently of the tiled engine; the tests hold
the engine to it. Also the public ``token_stats_from_logits`` for users who already have
logits.
"""

from __future__ import annotations

import torch

from lmloss.stats.tiles import compute_dtype

Tensor = torch.Tensor


def stats_of_logits(
    logits: Tensor, targets: Tensor, names: tuple[str, ...], expect: Tensor | None = None
) -> dict[str, Tensor]:
    """Statistics of already-transformed 2-D ``logits`` at valid (in-range) ``targets``.

    ``expect``: the ``[V, D]`` table of the ``expectation`` statistic, when it is wanted.
    """
    z = logits.to(compute_dtype(logits.dtype))
    log_probs = torch.log_softmax(z, dim=-1)
    target_logp = log_probs.gather(1, targets[:, None]).squeeze(1)
    formulas = {
        "logp": lambda: target_logp,
        "lse": lambda: torch.logsumexp(z, dim=-1),
        "entropy": lambda: -(log_probs.exp() * log_probs).sum(-1),
        "sum_sq_probs": lambda: torch.logsumexp(2 * log_probs, dim=-1),
        "mean_logit": lambda: z.mean(-1),
        "is_argmax": lambda: (z.gather(1, targets[:, None]).squeeze(1) >= z.amax(-1)).to(z.dtype),
        "expectation": lambda: log_probs.exp() @ expect.to(z.dtype),
    }
    return {name: formulas[name]() for name in names}
