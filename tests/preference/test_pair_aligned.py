"""The pair-aligned one-pass schedule of fused_preference_loss (lmloss.stats.example_blocks).

Every registered per-pair objective is run three ways on the same random head: the new
path (blocks of whole pairs, gradients in the forward), the recompute path
(``LMLOSS_PAIR_ONE_PASS=0``) and ``preference_loss`` on log-probs from materialized logits
(the independent reference). Loss, per-example losses, metrics and the gradients of
hidden, weight and bias must agree, for blocks of one pair and of uneven pair counts.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from preference_testkit import HYPER, case

import lmloss
import one_pass_testkit
from lmloss import registry
from lmloss.objectives.preference import pair_blocks
from lmloss.stats import example_blocks
from lmloss.stats.tiles import HeadSource
from one_pass_testkit import (
    assert_central_differences,
    assert_outputs_equal,
    matmul_flops,
    spy_on_blocks,
    with_grads,
)

IGNORE = -100
H, V, T = 6, 23, 12
MIN_ROWS = 5  # rows of 5..9 trained tokens: any two pairs outgrow a block of the largest
FAMILY = "preference"


def spec_of(name):
    return registry.get(name, family=FAMILY).spec


def takes_pair_path(name):
    return pair_blocks.separable(spec_of(name), {})


PER_PAIR = [n for n in sorted(lmloss.list_objectives(family=FAMILY)) if takes_pair_path(n)]
TWO_MODEL = {n for n in PER_PAIR if "forward_kl" in spec_of(n).stats}


def budget_for(rows, dtype=torch.float32):
    return one_pass_testkit.budget_for(rows, V, dtype)


class Batch:
    """``pairs`` pairs of [T]-token rows (prompt and padding ignored), a head with bias."""

    def __init__(self, pairs, seed=0, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        self.pairs, self.dtype = pairs, dtype
        rows = 2 * pairs
        start = torch.randint(0, 3, (rows, 1), generator=g)
        length = torch.randint(MIN_ROWS, T - 2, (rows, 1), generator=g)
        position = torch.arange(T)
        self.mask = (position >= start) & (position < start + length)
        self.targets = torch.randint(0, V, (rows, T), generator=g).masked_fill(~self.mask, IGNORE)

        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

        self.hidden = randn(rows, T, H).requires_grad_()
        self.weight = randn(V, H).requires_grad_()
        self.bias = randn(V).requires_grad_()
        self.ref_hidden, self.ref_weight = randn(rows, T, H), randn(V, H)

    @property
    def leaves(self):
        return [self.hidden, self.weight, self.bias]

    def pair_rows(self):
        """Trained rows of each pair."""
        return self.mask.reshape(2, self.pairs, T).sum((0, 2))

    def logps(self, hidden, weight, bias=None):
        """Per-token log-probs from the full float64 logits, zero where ignored."""
        logits = hidden.double() @ weight.double().T
        if bias is not None:
            logits = logits + bias.double()
        logp = torch.log_softmax(logits, -1)
        return logp.gather(-1, self.targets.clamp(min=0)[..., None]).squeeze(-1) * self.mask

    def reference(self):
        with torch.no_grad():
            return self.logps(self.ref_hidden, self.ref_weight)

    def extras(self, name):
        """The objective's per-pair inputs (OSP strength, SparsePO token weights, per-token KL)."""
        kw = case(name, batch=self.pairs, length=T, seed=1)
        return {k: v for k, v in kw.items() if not k.endswith(("logps", "mask"))}

    def fused(self, name, *, ref_given=False, **kw):
        ref = {"ref_hidden": self.ref_hidden, "ref_weight": self.ref_weight}
        if ref_given:
            chosen, rejected = self.reference().chunk(2)
            ref = {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
        return lmloss.fused_preference_loss(
            name, hidden=self.hidden, weight=self.weight, bias=self.bias,
            targets=self.targets, **ref, **kw,
        )  # fmt: skip

    def plain(self, name, **kw):
        policy = self.logps(self.hidden, self.weight, self.bias)
        chosen, rejected = policy.chunk(2)
        ref_chosen, ref_rejected = self.reference().chunk(2)
        m_chosen, m_rejected = self.mask.chunk(2)
        return lmloss.preference_loss(
            name, chosen_logps=chosen, rejected_logps=rejected, chosen_mask=m_chosen,
            rejected_mask=m_rejected, ref_chosen_logps=ref_chosen,
            ref_rejected_logps=ref_rejected, **kw,
        )  # fmt: skip


@pytest.fixture
def blocks_seen(monkeypatch):
    """The row blocks of every pair-aligned call (an empty list: the path was not taken)."""
    return spy_on_blocks(monkeypatch)


def recompute(batch, name, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setenv(example_blocks.SWITCH_VARIABLE, "0")
        return batch.fused(name, **kw)


@pytest.mark.parametrize("name", PER_PAIR)
@pytest.mark.parametrize("one_pair", [True, False], ids=["one_pair", "uneven"])
def test_every_per_pair_objective(name, one_pair, blocks_seen, monkeypatch):
    """New path == recompute path == plain formula on materialized logits (fp32, 1e-5)."""
    batch = Batch(pairs=5, seed=sum(map(ord, name)))
    rows = int(batch.pair_rows().max()) if one_pair else 40  # 2 or 3 pairs
    kw = {**HYPER.get(name, {}), **batch.extras(name), "memory_budget": budget_for(rows)}
    ref_given = not one_pair  # reference hidden states once, precomputed once
    new = with_grads(batch.fused(name, ref_given=ref_given, **kw), batch.leaves)
    assert blocks_seen, "the pair-aligned path was not taken"
    (blocks,) = blocks_seen
    assert len(blocks) == 5 if one_pair else 1 < len(blocks) < 5
    old = with_grads(recompute(batch, name, monkeypatch, ref_given=ref_given, **kw), batch.leaves)
    assert len(blocks_seen) == 1  # the switch turned it off
    kw.pop("memory_budget")
    plain = with_grads(batch.plain(name, **kw), batch.leaves)
    assert_outputs_equal(new, plain, rtol=1e-5, atol=1e-5)
    assert_outputs_equal(new, old, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [2 * T, 3 * T, 100])
def test_blocks_hold_whole_pairs(rows, blocks_seen):
    """Every block ends where a pair ends, and no block exceeds the budget's rows."""
    batch = Batch(pairs=6, seed=3)
    ends = torch.cumsum(batch.pair_rows(), 0).tolist()
    batch.fused("dpo", memory_budget=budget_for(rows))
    (blocks,) = blocks_seen
    assert blocks[0][0] == 0 and blocks[-1][1] == ends[-1]
    assert all(t1 in ends and t1 - t0 <= rows for t0, t1 in blocks)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))


@pytest.mark.parametrize(
    "options",
    [{"wpo": True}, {"wpo": True, "wpo_clamp": True}, {"ld_alpha": 0.4}, {"lcpo_noise": 0.2}],
    ids=["wpo", "wpo_clamp", "ld_alpha", "lcpo"],
)
def test_per_pair_options(options, blocks_seen, monkeypatch):
    batch = Batch(pairs=5, seed=7)
    new = with_grads(batch.fused("ipo", memory_budget=budget_for(2 * T), **options), batch.leaves)
    assert blocks_seen
    old = recompute(batch, "ipo", monkeypatch, memory_budget=budget_for(2 * T), **options)
    assert_outputs_equal(new, with_grads(old, batch.leaves), rtol=1e-5, atol=1e-5)


def test_hypo_online_rows_join_their_pair(blocks_seen, monkeypatch):
    """HyPO's on-policy samples are rows of the same example: they go in its block."""
    batch, online = Batch(pairs=3, seed=8), Batch(pairs=3, seed=9)
    kw = {
        "hypo_weight": 0.3,
        "online_hidden": online.hidden[:3],
        "online_targets": online.targets[:3],
        "ref_online_hidden": online.ref_hidden[:3],
        "memory_budget": budget_for(3 * T),
    }
    leaves = [*batch.leaves, online.hidden]
    new = with_grads(batch.fused("dpo", **kw), leaves)
    assert blocks_seen
    old = with_grads(recompute(batch, "dpo", monkeypatch, **kw), leaves)
    assert_outputs_equal(new, old, rtol=1e-5, atol=1e-5)


def test_bf16_matches_recompute_and_plain(blocks_seen, monkeypatch):
    batch = Batch(pairs=5, seed=11, dtype=torch.bfloat16)
    kw = {"memory_budget": budget_for(2 * T + 3), "beta": 0.5}
    new = with_grads(batch.fused("dpo", **kw), batch.leaves)
    assert blocks_seen
    old = with_grads(recompute(batch, "dpo", monkeypatch, **kw), batch.leaves)
    assert_outputs_equal(new, old, rtol=2e-2, atol=2e-2)
    kw.pop("memory_budget")
    plain = with_grads(batch.plain("dpo", **kw), batch.leaves)
    assert_outputs_equal(new, plain, rtol=2e-2, atol=2e-2)


def test_three_vocabulary_matmuls_instead_of_four(monkeypatch):
    """One pass: logits, dH, dW (3 × 2·N·H·V FLOPs); recompute adds the logits again."""
    batch = Batch(pairs=4, seed=12)
    ref = batch.reference()
    batch.reference = lambda: ref  # its materialized logits are the test's, not counted
    kw = {"ref_given": True, "memory_budget": budget_for(3 * T)}
    per_matmul = 2 * int(batch.mask.sum()) * H * V
    assert matmul_flops(lambda: batch.fused("dpo", **kw)) == 3 * per_matmul
    assert matmul_flops(lambda: recompute(batch, "dpo", monkeypatch, **kw)) == 4 * per_matmul


@pytest.mark.parametrize(
    "why",
    ["batch_coupled", "two_model_kl", "other_kind", "no_grad", "switched_off", "budget"],
)
def test_falls_back_where_not_exact_or_not_fitting(why, blocks_seen, monkeypatch):
    batch = Batch(pairs=3, seed=13)
    name, kw = "dpo", {}  # every case below would take the path with these
    if why == "batch_coupled":
        name = "aot"
    elif why == "two_model_kl":
        name = sorted(TWO_MODEL)[0]  # the per-token KL between the heads is not per block
        kw = {k: v for k, v in batch.extras(name).items() if not k.endswith("_kl")}
    elif why == "switched_off":
        monkeypatch.setenv(example_blocks.SWITCH_VARIABLE, "0")
    elif why == "budget":
        kw["memory_budget"] = budget_for(1)  # 16 rows at least, less than these pairs
        batch.targets[:, :] = torch.randint(0, V, batch.targets.shape)
        batch.mask[:] = True
    if why == "other_kind":  # NPO: each row is an example of its own, not half a pair
        out = lmloss.fused_preference_loss(
            "npo", hidden=batch.hidden, weight=batch.weight, targets=batch.targets,
            ref_hidden=batch.ref_hidden, ref_weight=batch.ref_weight,
        )  # fmt: skip
    elif why == "no_grad":
        with torch.no_grad():
            out = batch.fused(name, **kw)
    else:
        out = batch.fused(name, **kw)
    assert torch.isfinite(out.loss)
    assert blocks_seen == []


def test_bad_switch_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(example_blocks.SWITCH_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match="LMLOSS_PAIR_ONE_PASS"):
        Batch(pairs=2).fused("dpo")


def test_bad_inputs_keep_the_recompute_path_errors():
    """An empty completion or a tensor that is not per pair: the usual clear error."""
    batch = Batch(pairs=3, seed=14)
    batch.targets[1] = IGNORE
    with pytest.raises(ValueError, match="empty completion"):
        batch.fused("dpo")
    batch = Batch(pairs=3, seed=14)
    with pytest.raises(ValueError, match="strength"):
        batch.fused("osp", strength=torch.rand(4))


def test_float64_gradcheck(blocks_seen):
    """Gradients against central differences of the loss (float64, blocks of one pair)."""
    g = torch.Generator().manual_seed(15)
    lengths = torch.tensor([[6], [7], [5], [6]])  # pairs of 11 and 13 rows: one block each
    targets = torch.randint(0, 5, (4, 9), generator=g)
    targets = targets.masked_fill(torch.arange(9) >= lengths, IGNORE)
    ref = -3 * torch.rand(4, generator=g, dtype=torch.float64)  # summed log-probs

    def loss(hidden, weight, bias):
        return lmloss.fused_preference_loss(
            "dpo", hidden=hidden, weight=weight, bias=bias, targets=targets, beta=0.7,
            ref_chosen_logps=ref[:2], ref_rejected_logps=ref[2:], memory_budget=budget_for(1),
        ).loss  # fmt: skip

    inputs = [
        torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
        for shape in ((4, 9, 2), (5, 2), (5,))
    ]
    grads = torch.autograd.grad(loss(*inputs), inputs)
    assert blocks_seen and len(blocks_seen[0]) == 2
    assert_central_differences(loss, inputs, grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("default_budget", [False, True], ids=["explicit", "default"])
def test_pairs_longer_than_a_tile_are_kept_and_walked(dtype, default_budget, monkeypatch):
    """Pairs of 24 rows, tiles of 16: a block (one pair, or all three) is multiplied once,
    kept by the head and walked in tiles twice (values, then gradients); the result is the
    recompute path's and the plain formula's (float32 1e-5, bf16 2e-2)."""
    batch = Batch(pairs=3, seed=16, dtype=dtype)
    batch.mask[:] = True
    batch.targets = torch.randint(
        0, V, batch.targets.shape, generator=torch.Generator().manual_seed(17)
    )
    kept = []
    keep_rows = HeadSource.keep_rows

    def spy(self, t0, t1):
        kept.append((t0, t1))
        return keep_rows(self, t0, t1)

    monkeypatch.setattr(HeadSource, "keep_rows", spy)
    kw = {"beta": 0.5}
    if default_budget:  # tiles of 16 rows, blocks filled up to the default (all 3 pairs)
        monkeypatch.setattr(example_blocks, "KEPT_TILE_BYTES", budget_for(16, dtype) // 4)
    else:  # tiles and blocks of 16 rows: each pair is a block of its own, kept
        kw["memory_budget"] = budget_for(16, dtype)
    new = with_grads(batch.fused("dpo", **kw), batch.leaves)
    assert kept == (
        [(0, 6 * T)] if default_budget else [(0, 2 * T), (2 * T, 4 * T), (4 * T, 6 * T)]
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    old = with_grads(recompute(batch, "dpo", monkeypatch, **kw), batch.leaves)
    assert_outputs_equal(new, old, rtol=tol, atol=tol)
    kw.pop("memory_budget", None)
    assert_outputs_equal(
        new, with_grads(batch.plain("dpo", **kw), batch.leaves), rtol=tol, atol=tol
    )
