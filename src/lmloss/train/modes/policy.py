"""Online policy optimization: the model samples G completions per prompt, rewards grade them.

Per micro-batch of prompts: ``model.generate`` samples ``group_size`` completions each
(left-padded prompts, so every completion starts at the same column), the reward
functions score the decoded text, :func:`lmloss.advantages` turns grouped rewards into
advantages, and :func:`lmloss.fused_policy_loss` scores the sampled tokens from the hidden
states of the completion columns only. A reference model runs only when the objective's
``beta`` is non-zero (the KL penalty) or the reference moves (``reference.sync_steps``).

The loop's knobs (docs/policy.md): DAPO's dynamic sampling refills a batch with groups
whose rewards differ, truncated completions may get no loss, and the soft overlong
punishment joins the rewards; the sampling-time statistics recorded while decoding
(:mod:`lmloss.train.policy_tokens`) give the top-entropy token mask, Lp-Reg's proxy
log-probs and, against the old log-probs of :meth:`PolicyMode.record_old` (reused rollouts,
:mod:`lmloss.train.rollout_buffer`), truncated importance sampling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

import lmloss
from lmloss._checks import require_choice
from lmloss.hf import hidden_states
from lmloss.output import LossOutput
from lmloss.policy import ADVANTAGE_ESTIMATORS
from lmloss.stats import token_stats
from lmloss.train import policy_tokens
from lmloss.train import rewards as reward_fns
from lmloss.train.data import require_columns
from lmloss.train.generation import Generated, concat_generated, select_rows
from lmloss.train.judge import Judge
from lmloss.train.modes.base import (
    Batch,
    Context,
    Example,
    Mode,
    encode_row,
    like_head,
)
from lmloss.train.modes.policy_sum import policy_with_terms
from lmloss.train.rollout_buffer import RolloutBuffer

# objectives that need per-sequence advantages: token weights cannot be folded into them
_SEQUENCE_ADVANTAGES = {"gtpo"}


@dataclass
class Graded:
    """Sampled completions of ``examples`` (``group_size`` each) and their rewards."""

    examples: list[Example]
    out: Generated
    total: torch.Tensor  # [N] weighted reward
    means: dict[str, float]  # mean of each reward, for the logs


class PolicyMode(Mode):
    family = "policy"
    description = "online: prompt rows, G sampled completions per prompt, graded by rewards"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        policy = ctx.recipe.policy
        self.config = policy
        # log-probs at the sampling temperature: the distribution the tokens were drawn from
        # (TRL scores policy and reference the same way)
        self.scoring = {**ctx.engine, "temperature": policy.temperature}
        self.judge = Judge.from_section(
            policy,
            where="policy",
            data=ctx.recipe.data,
            device=next(ctx.model.parameters()).device,
            autocast=ctx.autocast,
        )
        require_choice("policy.advantage", policy.advantage, ADVANTAGE_ESTIMATORS)
        if policy.group_size < 2:
            raise ValueError(
                "policy.group_size must be >= 2: advantages compare samples of a prompt"
            )
        self.hyper = {**ctx.recipe.filled_hyper(), **ctx.hyper}
        self.wants_proxy = "proxy_logps" in ctx.entry.spec.inputs
        weighted = policy.tis_cap > 0 or policy.top_entropy_quantile < 1
        if weighted and ctx.entry.name in _SEQUENCE_ADVANTAGES:
            raise ValueError(
                f"policy.tis_cap and policy.top_entropy_quantile weight tokens; "
                f"{ctx.entry.name!r} needs one advantage per sequence"
            )
        if policy.dynamic_sampling and ctx.world.active:
            raise ValueError("policy.dynamic_sampling is not supported under torchrun yet")

    def check_columns(self, rows: list[dict], source: str) -> None:
        require_columns(rows, ("prompt",), source, f"the policy objective {self.ctx.entry.name!r}")

    def encode(self, index: int, row: dict) -> Example | None:
        # demonstrations (the validated completion column) feed the likelihood terms
        answers = ("completion",) if self.ctx.recipe.terms else ()
        return encode_row(self.ctx.encoder, index, row, answers)

    def uses_reference(self) -> bool:
        """Policy objectives take the reference optionally: the ``beta`` KL needs it, and a
        moving reference (``reference.sync_steps``) runs to log the KL to it."""
        if self.ctx.entry.spec.reference == "none":
            return False
        if self.ctx.recipe.reference.sync_steps > 0:
            return True
        return float(self.hyper.get("beta", self.ctx.entry.hyper.get("beta", 0.0)) or 0.0) != 0.0

    def rollout_buffer(self, grad_accum: int) -> RolloutBuffer:
        config = self.config
        buffer = RolloutBuffer(
            config.steps_per_generation or grad_accum, grad_accum, config.num_iterations
        )
        if buffer.reuses or config.tis_cap > 0:
            buffer.record_old = self.record_old
        return buffer

    # ---- sampling and grading

    def grade(self, examples: list[Example], texts: list[str], group_size: int):
        return self.judge.grade([ex.row for ex in examples], texts, group_size)

    def _sample(self, examples: list[Example]) -> Graded:
        """``group_size`` completions of each prompt, graded."""
        config = self.config
        out, _ = self.sample(
            examples,
            config,
            config.group_size,
            record=policy_tokens.sampling_recorder(
                config.temperature, config.proxy_min_p if self.wants_proxy else None
            ),
        )
        total, means = self.grade(examples, out.texts(self.ctx.tokenizer), config.group_size)
        if config.overlong_buffer > 0:
            punishment = reward_fns.soft_overlong_punishment(
                out.mask.sum(1), config.max_new_tokens, config.overlong_buffer
            )
            total = total + config.overlong_penalty * punishment
            means["soft_overlong"] = float(punishment.mean())
        return Graded(examples, out, total, means)

    def _sample_informative(self, examples: list[Example]) -> tuple[Graded, list[Graded], dict]:
        """DAPO's dynamic sampling (Yu et al. 2025, arXiv:2503.14476): groups whose rewards
        are all equal carry no advantage; they are dropped and more prompts sampled, up to
        ``max_num_gen_batches`` rounds. A batch still short trains on the groups it found
        (on every group of the first round if it found none), and says so.

        Returns the trained groups, every round sampled, and the filter's counts."""
        group, wanted = self.config.group_size, len(examples)
        rounds, flags, kept = [], [], 0
        while kept < wanted and len(rounds) < self.config.max_num_gen_batches:
            graded = self._sample(examples if not rounds else self.ctx.draw(wanted))
            informative = lmloss.dynamic_sampling_mask(graded.total, group)[::group]
            rounds.append(graded)
            flags.append(informative)
            kept += int(informative.sum())
        counts = {
            "groups_kept": kept,
            "groups_dropped": len(rounds) * wanted - kept,
            "sampling_rounds": len(rounds),
        }
        if kept == 0:
            self.ctx.echo(
                f"dynamic sampling: every group of {len(rounds)} rounds had equal rewards; "
                "training on the first round's groups"
            )
            return rounds[0], rounds, counts
        if kept < wanted:
            self.ctx.echo(
                f"dynamic sampling: {kept} of {wanted} groups with differing rewards after "
                f"{len(rounds)} rounds (policy.max_num_gen_batches); training on those"
            )
        chosen, parts, totals = [], [], []
        for graded, informative in zip(rounds, flags):
            keep = informative.nonzero().squeeze(1)[: wanted - len(chosen)]
            rows = (keep[:, None] * group + torch.arange(group, device=keep.device)).reshape(-1)
            chosen += [graded.examples[i] for i in keep.tolist()]
            parts.append(select_rows(graded.out, rows))
            totals.append(graded.total[rows])
        trained = Graded(chosen, concat_generated(parts, self.ctx.pad_id), torch.cat(totals), {})
        return trained, rounds, counts

    def prepare(self, examples: list[Example]) -> Batch:
        group, config = self.config.group_size, self.config
        started = time.perf_counter()
        if config.dynamic_sampling:
            graded, rounds, sampling = self._sample_informative(examples)
        else:
            graded = self._sample(examples)
            rounds, sampling = [graded], {}
        out, total = graded.out, graded.total
        generate_seconds = time.perf_counter() - started
        advantages = self._advantages(total, group)
        groups = total.reshape(-1, group)
        truncated = out.mask.all(dim=1)
        metrics = {  # the rewards of every completion sampled (the trained ones filtered)
            "reward": float(torch.cat([r.total for r in rounds]).mean()),
            **{
                f"reward/{name}": sum(r.means[name] for r in rounds) / len(rounds)
                for name in rounds[0].means
            },
            "reward_std": float(groups.std(dim=1).mean()),
            "groups_all_equal": float((groups == groups[:, :1]).all(dim=1).float().mean()),
            "completion_length": float(out.mask.sum(1).float().mean()),
            "truncated_completions": float(truncated.float().mean()),
            "generate_seconds": generate_seconds,
            **sampling,
        }
        mask = out.mask
        if config.mask_truncated_completions:
            mask = mask & ~truncated[:, None]
        recorded = out.recorded
        weights = None
        if config.top_entropy_quantile < 1:
            top = policy_tokens.top_entropy_mask(
                recorded["entropy"], mask, config.top_entropy_quantile
            )
            weights = top.float()
            metrics["trained_token_fraction"] = float(top.sum() / mask.sum().clamp(min=1))
        tensors = {
            "ids": out.ids,
            "attention": out.attention,
            "start": out.start,
            "targets": out.completions.masked_fill(~mask, -100),
            "advantages": advantages,
            "sampler_logps": recorded["logp"],
        }
        if weights is not None:
            tensors["advantages"] = advantages[:, None] * weights
        if self.wants_proxy:
            tensors["proxy_logps"] = recorded["proxy_logp"]
        if self.ctx.recipe.terms:
            tensors["demonstrations"] = self.sequences_of(graded.examples)
        return Batch(examples=len(total), tokens=int(mask.sum()), tensors=tensors, metrics=metrics)

    @torch.no_grad()
    def record_old(self, batch: Batch) -> None:
        """log π_old of the sampled tokens, by the trainer's forward pass before any update
        of this generation (the rollout buffer calls it); with ``tis_cap``, the truncated
        importance weights π_old/π_sampler multiply the advantages."""
        t = batch.tensors
        head = self.policy_head()
        hidden = self._completion_hidden(t)
        old = token_stats(
            hidden.detach(),
            head.weight.detach(),
            t["targets"],
            None if head.bias is None else head.bias.detach(),
            want=("logp",),
            **self.scoring,
            **head.transform_kwargs(),
        ).logp
        t["old_logps"] = old
        if self.config.tis_cap <= 0:
            return
        trained = t["targets"] != -100
        ratio = torch.exp((old - t["sampler_logps"]).clamp(-20, 20))
        weights = policy_tokens.truncated_importance_weights(
            old, t["sampler_logps"], trained, self.config.tis_cap
        )
        advantages = t["advantages"]
        t["advantages"] = (advantages if advantages.dim() == 2 else advantages[:, None]) * weights
        picked = ratio[trained]
        if picked.numel():
            batch.metrics.update(
                tis_ratio_mean=float(picked.mean()),
                tis_ratio_min=float(picked.min()),
                tis_ratio_max=float(picked.max()),
                tis_truncated=float((picked > self.config.tis_cap).float().mean()),
            )

    def _advantages(self, rewards, group: int):
        """Advantages of this rank's completions, estimated over the whole global micro-batch:
        groups never span ranks (a rank samples all G completions of its prompts), but
        batch-wide estimators (``reinforce_pp``, ``bnpo``'s Beta fit)
        see every rank's rewards, as one process would."""
        world = self.ctx.world
        if not world.active:
            return lmloss.advantages(self.config.advantage, rewards, group_size=group)
        every = world.gather_rows(rewards)
        mine = slice(world.rank * len(rewards), (world.rank + 1) * len(rewards))
        return lmloss.advantages(self.config.advantage, every, group_size=group)[mine]

    # ---- objective

    @staticmethod
    def _positions(t: dict):
        positions = (t["attention"].cumsum(1) - 1).clamp(min=0)
        scored = slice(t["start"] - 1, t["ids"].shape[1] - 1)  # states predicting completions
        return positions, scored

    def _completion_hidden(self, t: dict) -> torch.Tensor:
        positions, scored = self._positions(t)
        with self.ctx.autocast():
            hidden = hidden_states(self.ctx.model, t["ids"], t["attention"], position_ids=positions)
        return like_head(hidden[:, scored], self.policy_head())

    def loss(self, batch: Batch, num_items: int | None) -> LossOutput:
        if self.ctx.recipe.terms:
            return policy_with_terms(self, batch, num_items)
        t = batch.tensors
        positions, scored = self._positions(t)
        reference = {}
        if self.ctx.reference is not None:
            with self.ctx.autocast():
                ref_hidden, ref_head = self.ctx.reference.hidden(
                    t["ids"], t["attention"], position_ids=positions
                )
            reference = {
                "ref_hidden": like_head(ref_hidden[:, scored], ref_head),
                "ref_head": ref_head,
            }
        normalizer = {"num_items": num_items} if num_items is not None else {}
        head = self.policy_head()
        return lmloss.fused_policy_loss(
            self.ctx.entry.name,
            hidden=self._completion_hidden(t),
            targets=t["targets"],
            advantages=t["advantages"],
            old_logps=t.get("old_logps"),
            proxy_logps=t.get("proxy_logps"),
            want_entropy=True,
            head=head,
            **reference,
            **normalizer,
            **self.scoring,
            **self.hyper,
        )
