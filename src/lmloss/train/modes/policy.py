"""Online policy optimization: the model samples G completions per prompt, rewards grade them.

Per micro-batch of prompts: ``model.generate`` samples ``group_size`` completions each
(left-padded prompts, so every completion starts at the same column), the reward
functions score the decoded text, :func:`lmloss.advantages` turns grouped rewards into
advantages, and :func:`lmloss.fused_policy_loss` scores the sampled tokens from the hidden
states of the completion columns only. Training is on-policy (one optimizer step per
generated batch, ratio 1); a reference model runs only when the objective's ``beta`` is
non-zero (the KL penalty).
"""

from __future__ import annotations

import lmloss
from lmloss._checks import require_choice
from lmloss.hf import hidden_states
from lmloss.output import LossOutput
from lmloss.policy import ADVANTAGE_ESTIMATORS
from lmloss.train.data import require_columns
from lmloss.train.judge import Judge
from lmloss.train.modes.base import (
    Batch,
    Context,
    Example,
    Mode,
    encode_row,
    head_kwargs,
    like_head,
)
from lmloss.train.modes.policy_sum import policy_with_terms


class PolicyMode(Mode):
    family = "policy"
    description = "online: prompt rows, G sampled completions per prompt, graded by rewards"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        policy = ctx.recipe.policy
        self.config = policy
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
        self.hyper = ctx.hyper
        if "max_tokens" in ctx.entry.hyper and "max_tokens" not in self.hyper:
            # Dr. GRPO's constant normalizer: the generation budget, the same every step
            self.hyper["max_tokens"] = policy.max_new_tokens
        if "group_size" in ctx.entry.hyper and "group_size" not in self.hyper:
            self.hyper["group_size"] = policy.group_size  # GTPO's groups: the sampled ones

    def check_columns(self, rows: list[dict], source: str) -> None:
        require_columns(rows, ("prompt",), source, f"the policy objective {self.ctx.entry.name!r}")

    def encode(self, index: int, row: dict) -> Example | None:
        # demonstrations (the validated completion column) feed the likelihood terms
        answers = ("completion",) if self.ctx.recipe.terms else ()
        return encode_row(self.ctx.encoder, index, row, answers)

    def uses_reference(self) -> bool:
        """Policy objectives take the reference optionally: only the ``beta`` KL needs it."""
        if self.ctx.entry.spec.reference == "none":
            return False
        return float(self.hyper.get("beta", self.ctx.entry.hyper.get("beta", 0.0)) or 0.0) != 0.0

    # ---- sampling and grading

    def grade(self, examples: list[Example], texts: list[str], group_size: int):
        return self.judge.grade([ex.row for ex in examples], texts, group_size)

    def prepare(self, examples: list[Example]) -> Batch:
        group = self.config.group_size
        proxy = "proxy_logps" in self.ctx.entry.spec.inputs
        out, generate_seconds = self.sample(
            examples, self.config, group, proxy_min_p=self.config.proxy_min_p if proxy else None
        )
        texts = out.texts(self.ctx.tokenizer)
        total, means = self.grade(examples, texts, group)
        advantages = self._advantages(total, group)
        groups = total.reshape(-1, group)
        metrics = {
            "reward": float(total.mean()),
            **{f"reward/{name}": value for name, value in means.items()},
            "reward_std": float(groups.std(dim=1).mean()) if group > 1 else 0.0,
            "groups_all_equal": float((groups == groups[:, :1]).all(dim=1).float().mean()),
            "completion_length": float(out.mask.sum(1).float().mean()),
            "truncated_completions": float(out.mask.all(dim=1).float().mean()),
            "generate_seconds": generate_seconds,
        }
        mask = out.mask
        targets = out.completions.masked_fill(~mask, -100)
        tensors = {
            "ids": out.ids,
            "attention": out.attention,
            "start": out.start,
            "targets": targets,
        }
        tensors["advantages"] = advantages
        if out.proxy_logps is not None:  # Lp-Reg: the sampling policy's min-p proxy
            tensors["proxy_logps"] = out.proxy_logps
        if self.ctx.recipe.terms:
            tensors["demonstrations"] = self.sequences_of(examples)
        return Batch(examples=len(texts), tokens=int(mask.sum()), tensors=tensors, metrics=metrics)

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

    def loss(self, batch: Batch, num_items: int | None) -> LossOutput:
        if self.ctx.recipe.terms:
            return policy_with_terms(self, batch, num_items)
        t = batch.tensors
        positions = (t["attention"].cumsum(1) - 1).clamp(min=0)
        scored = slice(
            t["start"] - 1, t["ids"].shape[1] - 1
        )  # hidden states that predict completions
        with self.ctx.autocast():
            hidden = hidden_states(self.ctx.model, t["ids"], t["attention"], position_ids=positions)
        reference = {}
        if self.ctx.reference is not None:
            with self.ctx.autocast():
                ref_hidden, ref_head = self.ctx.reference.hidden(
                    t["ids"], t["attention"], position_ids=positions
                )
            reference = {
                "ref_hidden": like_head(ref_hidden[:, scored], ref_head),
                "ref_weight": ref_head.weight,
                "ref_bias": ref_head.bias,
            }
        inputs = {"num_items": num_items} if num_items is not None else {}
        if "proxy_logps" in t:
            inputs["proxy_logps"] = t["proxy_logps"]
        head = self.policy_head()
        return lmloss.fused_policy_loss(
            self.ctx.entry.name,
            hidden=like_head(hidden[:, scored], head),
            targets=t["targets"],
            advantages=t["advantages"],
            want_entropy=True,
            **head_kwargs(head),
            **reference,
            **inputs,
            **self.ctx.engine,
            **self.hyper,
        )
