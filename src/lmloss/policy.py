"""Online policy optimization (the GRPO family): front door.

* :func:`advantages` — group advantage estimators (``grpo``, ``dr_grpo``, ``rloo``/``loop``,
  ``bnpo``, ``reinforce_pp``, ``token_group_mean``);
* :func:`policy_loss` — a registered policy objective on per-token log-probabilities;
* :func:`fused_policy_loss` — the same objective with the log-probabilities (and entropy,
  when declared) computed by the fused engine from hidden states and the LM-head weight;
* :func:`kl_estimate` — per-token KL estimators (k1, k2, k3, ...).

Helpers: :func:`dynamic_sampling_mask` (DAPO group filter) and :func:`kl_in_reward`
(fold −β·KL into the rewards).

Example:
    >>> import torch, lmloss
    >>> rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    >>> adv = lmloss.advantages("grpo", rewards, group_size=2)
    >>> logps = torch.randn(4, 5).clamp(max=0).requires_grad_()
    >>> out = lmloss.policy_loss("grpo", logps=logps, mask=torch.ones(4, 5), advantages=adv)
    >>> out.loss.backward()
"""

from __future__ import annotations

import torch

from lmloss import _checks, registry
from lmloss.head import Head, policy_and_reference_heads
from lmloss.objectives.binding import bind
from lmloss.objectives.policy import sequence_blocks
from lmloss.objectives.policy.advantages import (
    ADVANTAGE_ESTIMATORS,
    dynamic_sampling_mask,
    estimate_advantages,
)
from lmloss.objectives.policy.kl import KL_ESTIMATORS, kl_estimate, kl_in_reward
from lmloss.objectives.policy.rollouts import rollouts
from lmloss.output import LossOutput
from lmloss.stats import example_blocks, token_stats

Tensor = torch.Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "advantages",
    "dynamic_sampling_mask",
    "fused_policy_loss",
    "kl_estimate",
    "kl_in_reward",
    "policy_loss",
]

# Per-token inputs beyond (logps, mask, advantages) that some objectives take.
_FAMILY_INPUTS = ("old_logps", "ref_logps", "entropy", "token_ids", "proxy_logps")
_ROLLOUTS = ("logps", "mask", "advantages", "old_logps", "ref_logps", "entropy")


def advantages(
    name: str,
    rewards: Tensor,
    group_size: int | None = None,
    *,
    mask: Tensor | None = None,
    **options: object,
) -> Tensor:
    """Advantages of grouped rewards; see
    :func:`lmloss.objectives.policy.advantages.estimate_advantages`."""
    return estimate_advantages(name, rewards, group_size, mask=mask, **options)


def _run(name: str, given: dict) -> LossOutput:
    """Bind the keywords to the objective's spec, build its :class:`Rollouts`, run it."""
    entry = registry.get(name, family="policy")
    inputs, hyper = bind(entry.spec, given, family_inputs=_FAMILY_INPUTS)
    kind = rollouts(*(inputs.pop(k, None) for k in _ROLLOUTS))
    return entry(kind, **inputs, **hyper)


def policy_loss(
    name: str,
    *,
    logps: Tensor,
    mask: Tensor,
    advantages: Tensor,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    entropy: Tensor | None = None,
    token_ids: Tensor | None = None,
    proxy_logps: Tensor | None = None,
    **hyper: object,
) -> LossOutput:
    """The policy objective ``name`` on per-token log-probabilities.

    Args:
        name: a registry name of family ``policy`` (``lmloss.list_objectives("policy")``).
        logps: ``[B, T]`` log π_θ of the sampled completion tokens (differentiable).
        mask: ``[B, T]`` 0/1 completion mask.
        advantages: ``[B]`` or ``[B, T]``.
        old_logps: ``[B, T]`` log π_old; None means on-policy (ratio 1, whose gradient is
            the plain policy gradient).
        ref_logps: ``[B, T]`` log π_ref for the KL penalty (``beta``) and the ``kl`` metric.
        entropy: ``[B, T]`` token entropies (``gtpo``, ``steer``, ``entropy_coef``, metric).
        token_ids: ``[B, T]`` sampled token ids (``gtpo``).
        proxy_logps: ``[B, T]`` min-p proxy log-probs (``lp_reg``).
        hyper: the objective's hyper-parameters (``lmloss.describe(name)["hyper"]``), e.g.
            ``beta``, ``eps_low``, ``eps_high``, ``aggregation``, ``num_items``, ``max_tokens``.

    Returns:
        ``LossOutput(loss, per_example [B], metrics)``.
    """
    inputs = {
        "logps": logps,
        "mask": mask,
        "advantages": advantages,
        "old_logps": old_logps,
        "ref_logps": ref_logps,
        "entropy": entropy,
        "token_ids": token_ids,
        "proxy_logps": proxy_logps,
    }
    return _run(name, {**inputs, **hyper})


def _engine_mask(mask: Tensor | None, targets: Tensor, ignore_index: int) -> Tensor:
    has_target = targets != ignore_index
    if mask is None:
        return has_target.to(torch.float32)
    mask = _checks.require_tensor("mask", mask)
    _checks.require_shape("mask", mask, targets.shape, "targets")
    if bool(((mask != 0) & ~has_target).any()):
        raise ValueError(f"mask selects tokens whose target is ignore_index={ignore_index}")
    return mask


def fused_policy_loss(
    name: str,
    *,
    hidden: Tensor,
    targets: Tensor,
    advantages: Tensor,
    head: Head | None = None,
    mask: Tensor | None = None,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    ref_hidden: Tensor | None = None,
    ref_head: Head | None = None,
    proxy_logps: Tensor | None = None,
    want_entropy: bool = False,
    temperature: float = 1.0,
    ignore_index: int = -100,
    memory_budget: int | None = None,
    **hyper: object,
) -> LossOutput:
    """:func:`policy_loss` with log-probabilities computed from hidden states, fused.

    Calls :func:`lmloss.token_stats` for the statistics the objective declares (``logp``, and
    ``entropy`` for entropy-driven objectives, a non-zero ``entropy_coef`` or
    ``want_entropy=True`` for the metric), then the same registered objective function.
    The ``[B·T, V]`` logits are never materialized.

    Args:
        hidden: ``[B, T, H]`` policy hidden states at the completion positions.
        head: the policy's :class:`lmloss.Head` (weight ``[V, H]``, bias, soft cap, logit
            scale), or by keyword: ``weight``, ``bias``, ``softcap``, ``logit_scale`` (as in
            :func:`lmloss.token_stats`); not both.
        targets: ``[B, T]`` sampled token ids, ``ignore_index`` outside completions; they
            are also ``token_ids`` for objectives that take them.
        advantages: ``[B]`` or ``[B, T]``.
        mask: ``[B, T]`` completion mask; default ``targets != ignore_index``.
        old_logps, proxy_logps: per-token tensors as in :func:`policy_loss`.
        ref_logps: ``[B, T]`` reference log-probs, or give ``ref_hidden`` (``[B, T, H]``)
            with ``ref_head`` (or ``ref_weight``/``ref_bias``; default: the policy's head,
            detached; its soft cap and logit scale are the policy's) to compute them fused
            without gradient.
        want_entropy: also compute the entropy (for the ``entropy`` metric).
        temperature, ignore_index, memory_budget: engine options.
        hyper: the objective's hyper-parameters.

    Returns:
        ``LossOutput``, differentiable w.r.t. ``hidden`` and the head's weight and bias. For
        an objective whose loss adds up over sequences (not ``batch_coupled``) and whose
        sequences fit the memory budget, the gradients are computed during this call in
        blocks of whole sequences (3 vocabulary matmuls instead of 4; see
        ``docs/engine.md``) and only ``loss`` carries them: ``per_example`` is detached.
    """
    head, ref_head = policy_and_reference_heads("policy", (head, ref_head), hyper)
    if ref_head is None:  # the policy's own head (detached below)
        ref_head = head
    entry = registry.get(name, family="policy")
    targets = _checks.require_integer("targets", targets)
    mask = _engine_mask(mask, targets, ignore_index)
    engine = {
        "ignore_index": ignore_index,
        "temperature": temperature,
        **head.transform_kwargs(),
        "memory_budget": memory_budget,
    }
    entropy_coef = hyper.get("entropy_coef", entry.hyper.get("entropy_coef", 0.0))
    want = list(entry.spec.stats)
    if (want_entropy or entropy_coef != 0) and "entropy" not in want:
        want.append("entropy")

    if ref_hidden is not None:
        if ref_logps is not None:
            raise ValueError("give ref_logps or ref_hidden, not both")
        ref_head = ref_head.detached()
        with torch.no_grad():
            ref_logps = token_stats(
                ref_hidden.detach(),
                ref_head.weight,
                targets,
                ref_head.bias,
                want=("logp",),
                **engine,
            ).logp

    inputs = {
        "mask": mask,
        "advantages": advantages,
        "old_logps": old_logps,
        "ref_logps": ref_logps,
        "token_ids": targets if "token_ids" in entry.spec.takes else None,
        "proxy_logps": proxy_logps,
    }
    out = _sequence_aligned_loss(entry, {**inputs, **hyper}, hidden, targets, head, want, engine)
    if out is not None:
        return out
    stats = token_stats(hidden, head.weight, targets, head.bias, want=want, **engine)
    return _run(name, {**inputs, "logps": stats.logp, "entropy": stats.entropy, **hyper})


def _sequence_aligned_loss(
    entry: registry.Entry,
    given: dict,
    hidden: Tensor,
    targets: Tensor,
    head: Head,
    want: list[str],
    engine: dict,
) -> LossOutput | None:
    """The loss on the one-pass schedule with blocks of whole sequences, or None where that
    is not exact (see :mod:`lmloss.objectives.policy.sequence_blocks`), not needed (no
    gradient), switched off (``LMLOSS_PAIR_ONE_PASS=0``) or does not fit the memory budget:
    the recompute schedule then runs.

    Each block runs the objective on its sequences (with the batch's normalizers, times its
    share) for the gradients; the returned loss, per-sequence losses and metrics come from
    one run on the whole batch of the blocks' detached statistics, so they never depend on
    the blocks. A sequence without unmasked tokens has no rows: it joins a neighbouring
    block, where its loss is 0 as in the whole batch.
    """
    trained = (hidden, head.weight, head.bias)
    if not (
        example_blocks.wanted(trained)
        and sequence_blocks.separable(entry.spec)
        and isinstance(hidden, Tensor)
        and hidden.dim() == 3
        and hidden.shape[:-1] == targets.shape
    ):  # a misshapen input: the recompute path's checks name it
        return None
    per_sequence = sequence_blocks.per_sequence_inputs(entry.spec, given, targets.shape[0])
    if per_sequence is None:
        return None
    mask = given["mask"]
    shares = sequence_blocks.SequenceShares.of(mask, {**entry.hyper, **given})

    def as_inputs(values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The engine's flat statistics as the objective's ``[B, T]`` keywords."""
        names = {"logp": "logps", "entropy": "entropy"}
        return {names[stat]: value.reshape(targets.shape) for stat, value in values.items()}

    def loss_of_sequences(values: dict[str, Tensor], e0: int, e1: int) -> Tensor:
        block = {k: v[e0:e1] for k, v in {**per_sequence, **as_inputs(values)}.items()}
        loss = _run(entry.name, {**given, **block, **shares.block_hyper(e0, e1)}).loss
        return loss * shares.share(e0, e1)

    done = example_blocks.example_one_pass(
        hidden.reshape(-1, hidden.shape[-1]),
        head.weight,
        targets.reshape(-1),
        head.bias,
        example_blocks.ExampleRows.of([mask != 0]),
        loss_of_sequences,
        want=want,
        **engine,
    )
    if done is None:
        return None
    total, values = done
    with torch.no_grad():
        whole = _run(entry.name, {**given, **as_inputs(values)})
    return whole.with_gradients_of(total)
