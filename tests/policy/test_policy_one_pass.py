"""The sequence-aligned one-pass schedule of fused_policy_loss (lmloss.stats.example_blocks).

Every registered policy objective whose loss adds up over sequences is run three ways on
the same random head: the one pass (blocks of whole sequences, gradients in the forward),
the recompute path (``LMLOSS_PAIR_ONE_PASS=0``) and ``policy_loss`` on log-probs from
materialized float64 logits (the independent reference). Loss, per-sequence losses,
metrics and the gradients of hidden, weight and bias must agree, for blocks of one
sequence and of uneven sequence counts, under every aggregation. The objectives that do
not add up over sequences must say so (``batch_coupled``): a test redraws the other
sequences' inputs and watches each sequence's gradient.
"""

from __future__ import annotations

import pytest
import torch
from policy_testkit import GROUP, extra_inputs, make_case

import lmloss
import one_pass_testkit
from lmloss import registry
from lmloss.objectives.policy import sequence_blocks
from lmloss.objectives.policy.aggregate import AGGREGATIONS
from lmloss.stats import example_blocks
from one_pass_testkit import (
    assert_central_differences,
    assert_outputs_equal,
    matmul_flops,
    spy_on_blocks,
    with_grads,
)

IGNORE = -100
H, V, T = 6, 23, 20
SEQUENCES = 6
# 9..16 trained tokens a sequence: any two outgrow a block of the largest (blocks are
# filled up to 16 rows at least)
MIN_ROWS = 9


def spec_of(name):
    return registry.get(name, family="policy").spec


NAMES = sorted(lmloss.list_objectives(family="policy"))
SEPARABLE = [n for n in NAMES if sequence_blocks.separable(spec_of(n))]
COUPLED = [n for n in NAMES if n not in SEPARABLE]
# the coupled objectives' settings under which a small batch shows the coupling
COUPLING_SHOWS = {"clip_cov": {"cov_low": 0.0}}


def budget_for(rows, dtype=torch.float32):
    return one_pass_testkit.budget_for(rows, V, dtype)


class Batch:
    """``SEQUENCES`` rows of ``length`` tokens (prompt and padding ignored; the rows of
    ``empty`` all masked), a head with bias, a reference head and old log-probs near the
    policy's, GRPO advantages."""

    def __init__(self, seed=0, dtype=torch.float32, length=T, empty=()):
        g = torch.Generator().manual_seed(seed)
        self.dtype = dtype
        start = torch.randint(0, 3, (SEQUENCES, 1), generator=g)
        size = torch.randint(MIN_ROWS, length - 3, (SEQUENCES, 1), generator=g)
        position = torch.arange(length)
        self.mask = (position >= start) & (position < start + size)
        self.mask[list(empty)] = False
        self.targets = torch.randint(0, V, (SEQUENCES, length), generator=g)
        self.targets = self.targets.masked_fill(~self.mask, IGNORE)

        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

        self.hidden = randn(SEQUENCES, length, H).requires_grad_()
        self.weight = randn(V, H).requires_grad_()
        self.bias = randn(V).requires_grad_()
        # a reference near the policy, as in training (its k3 KL stays small)
        self.ref_hidden = self.hidden.detach() + 0.1 * randn(SEQUENCES, length, H)
        self.ref_weight = self.weight.detach() + 0.1 * randn(V, H)
        rewards = torch.randint(0, 2, (SEQUENCES,), generator=g).double()
        rewards[0], rewards[1] = 1.0, 0.0  # an informative group
        self.advantages = lmloss.advantages("grpo", rewards, group_size=GROUP).float()
        with torch.no_grad():
            logps, _ = self.stats(self.hidden, self.weight, self.bias)
            shift = 0.3 * torch.randn(logps.shape, generator=g, dtype=torch.float64)
            self.old_logps = (logps + shift).clamp(max=0.0).float()  # log-probabilities

    @property
    def leaves(self):
        return [self.hidden, self.weight, self.bias]

    def stats(self, hidden, weight, bias=None):
        """Per-token log-probs and entropies from the full float64 logits, zero where ignored."""
        logits = hidden.double() @ weight.double().T
        if bias is not None:
            logits = logits + bias.double()
        logp = torch.log_softmax(logits, -1)
        picked = logp.gather(-1, self.targets.clamp(min=0)[..., None]).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return picked * self.mask, entropy * self.mask

    def reference(self):
        with torch.no_grad():
            return self.stats(self.ref_hidden, self.ref_weight)[0]

    def fused(self, name, *, ref_given=False, **kw):
        ref = {"ref_hidden": self.ref_hidden, "ref_weight": self.ref_weight}
        if ref_given:
            ref = {"ref_logps": self.reference()}
        return lmloss.fused_policy_loss(
            name, hidden=self.hidden, weight=self.weight, bias=self.bias, targets=self.targets,
            advantages=self.advantages, old_logps=self.old_logps, **ref, **kw,
        )  # fmt: skip

    def plain(self, name, *, entropy=False, **kw):
        logps, token_entropy = self.stats(self.hidden, self.weight, self.bias)
        return lmloss.policy_loss(
            name, logps=logps, mask=self.mask.double(), advantages=self.advantages,
            old_logps=self.old_logps, ref_logps=self.reference(),
            entropy=token_entropy if entropy else None, **kw,
        )  # fmt: skip

    def sequence_rows(self):
        return self.mask.sum(-1)


@pytest.fixture
def blocks_seen(monkeypatch):
    """The row blocks of every one-pass call (an empty list: the path was not taken)."""
    return spy_on_blocks(monkeypatch)


def recompute(batch, name, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setenv(example_blocks.SWITCH_VARIABLE, "0")
        return batch.fused(name, **kw)


def three_ways(batch, name, monkeypatch, blocks_seen, *, ref_given=False, **kw):
    """The one pass, the recompute path and the plain formula, each with its gradients."""
    leaves = batch.leaves
    new = with_grads(batch.fused(name, ref_given=ref_given, **kw), leaves)
    assert len(blocks_seen) == 1, "the sequence-aligned path was not taken"
    old = with_grads(recompute(batch, name, monkeypatch, ref_given=ref_given, **kw), leaves)
    assert len(blocks_seen) == 1  # the switch turned it off
    kw.pop("memory_budget", None)
    entropy = kw.pop("want_entropy", False) or kw.get("entropy_coef", 0) != 0
    return new, old, with_grads(batch.plain(name, entropy=entropy, **kw), leaves)


def test_the_separable_objectives():
    """Every policy objective but those that pick or weigh tokens by the whole batch."""
    assert set(COUPLED) == {"clip_cov", "kl_cov", "steer", "lp_reg", "gtpo"}


@pytest.mark.parametrize("name", SEPARABLE)
@pytest.mark.parametrize("one_sequence", [True, False], ids=["one_sequence", "uneven"])
def test_every_separable_objective(name, one_sequence, blocks_seen, monkeypatch):
    """One pass == recompute path == plain formula on materialized logits (fp32, 1e-5),
    with a KL penalty and an entropy bonus."""
    batch = Batch(seed=sum(map(ord, name)))
    rows = int(batch.sequence_rows().max()) if one_sequence else 40  # 2 to 4 sequences
    kw = {"beta": 0.05, "entropy_coef": 0.01, "memory_budget": budget_for(rows)}
    new, old, plain = three_ways(
        batch, name, monkeypatch, blocks_seen, ref_given=not one_sequence, **kw
    )
    (blocks,) = blocks_seen
    assert len(blocks) == SEQUENCES if one_sequence else 1 < len(blocks) < SEQUENCES
    assert_outputs_equal(new, plain, rtol=1e-5, atol=1e-5)
    assert_outputs_equal(new, old, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ppo", "gspo"])
@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
@pytest.mark.parametrize("normalizers", ["default", "given", "tensor"])
def test_every_aggregation(name, aggregation, normalizers, blocks_seen, monkeypatch):
    """Blocks of uneven sequence counts keep the batch's ``num_items`` (its token count by
    default) and ``max_tokens`` (its padded length); an all-masked sequence weighs 0."""
    batch = Batch(seed=5, empty=[2])
    kw = {"aggregation": aggregation, "want_entropy": True, "memory_budget": budget_for(40)}
    if normalizers != "default":
        kw.update(num_items=37.0, max_tokens=20.0)
    if normalizers == "tensor":
        kw["num_items"] = torch.tensor(37.0)
    new, old, plain = three_ways(batch, name, monkeypatch, blocks_seen, **kw)
    assert 1 < len(blocks_seen[0]) < SEQUENCES - 1
    assert float(new[0].per_example[2]) == 0.0
    assert_outputs_equal(new, plain, rtol=1e-5, atol=1e-5)
    assert_outputs_equal(new, old, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("empty", [[0], [5], [0, 1, 4]], ids=["first", "last", "several"])
def test_all_masked_sequences_join_a_block(empty, blocks_seen, monkeypatch):
    batch = Batch(seed=6, empty=empty)
    kw = {"entropy_coef": 0.02, "aggregation": "token_mean", "memory_budget": budget_for(16)}
    new, old, plain = three_ways(batch, "grpo", monkeypatch, blocks_seen, **kw)
    assert len(blocks_seen[0]) == SEQUENCES - len(empty)
    assert_outputs_equal(new, plain, rtol=1e-5, atol=1e-5)
    assert_outputs_equal(new, old, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["grpo", "gspo"])
def test_bf16_matches_recompute_and_plain(name, blocks_seen, monkeypatch):
    batch = Batch(seed=11, dtype=torch.bfloat16)
    kw = {"beta": 0.05, "entropy_coef": 0.01, "memory_budget": budget_for(40, torch.bfloat16)}
    new, old, plain = three_ways(batch, name, monkeypatch, blocks_seen, **kw)
    assert_outputs_equal(new, old, rtol=2e-2, atol=2e-2)
    assert_outputs_equal(new, plain, rtol=2e-2, atol=2e-2)


def test_three_vocabulary_matmuls_instead_of_four(monkeypatch):
    """One pass: logits, dH, dW (3 × 2·N·H·V FLOPs); recompute adds the logits again."""
    batch = Batch(seed=12)
    ref = batch.reference()
    batch.reference = lambda: ref  # its materialized logits are the test's, not counted
    kw = {"ref_given": True, "beta": 0.05, "memory_budget": budget_for(40)}
    per_matmul = 2 * int(batch.mask.sum()) * H * V
    assert matmul_flops(lambda: batch.fused("grpo", **kw)) == 3 * per_matmul
    assert matmul_flops(lambda: recompute(batch, "grpo", monkeypatch, **kw)) == 4 * per_matmul


@pytest.mark.parametrize("why", [*COUPLED, "no_grad", "switched_off", "budget"])
def test_falls_back_where_not_exact_or_not_fitting(why, blocks_seen, monkeypatch):
    batch = Batch(seed=13)
    name, kw = "grpo", {}  # every case below would take the path with these
    if why in COUPLED:
        name, kw = why, {"group_size": GROUP} if why == "gtpo" else {}
        if why == "lp_reg":
            kw["proxy_logps"] = batch.old_logps - 0.5
    elif why == "switched_off":
        monkeypatch.setenv(example_blocks.SWITCH_VARIABLE, "0")
    elif why == "budget":  # sequences of 24 rows, tiles of 16 that cannot keep one
        batch = Batch(seed=13, length=24)
        batch.mask[:] = True
        batch.targets = torch.randint(0, V, batch.targets.shape)
        kw["memory_budget"] = budget_for(1)
    if why == "no_grad":
        with torch.no_grad():
            out = batch.fused(name, **kw)
    else:
        out = batch.fused(name, **kw)
    assert torch.isfinite(out.loss)
    assert blocks_seen == []


def test_bad_inputs_keep_the_recompute_path_errors(blocks_seen):
    """A tensor that is not per sequence, or not an input: the usual clear error."""
    batch = Batch(seed=14)
    batch.advantages = torch.zeros(SEQUENCES + 1)
    with pytest.raises(ValueError, match="advantages must have shape"):
        batch.fused("grpo")
    batch = Batch(seed=14)
    with pytest.raises(ValueError, match="does not take proxy_logps"):
        batch.fused("grpo", proxy_logps=batch.old_logps)
    with pytest.raises(ValueError, match="num_items"):
        batch.fused("dapo", num_items=-1.0)
    assert blocks_seen == []


def test_float64_gradcheck(blocks_seen):
    """Gradients against central differences of the loss (float64, several blocks, an
    all-masked sequence; a KL penalty, an entropy bonus and clip bounds the ratios never
    reach: smooth in every input)."""
    g = torch.Generator().manual_seed(15)
    lengths = torch.tensor([[6], [7], [0], [5], [6]])  # 6 + 7 and 5 + 6 rows: two blocks
    targets = torch.randint(0, 5, (5, 9), generator=g)
    targets = targets.masked_fill(torch.arange(9) >= lengths, IGNORE)
    ref = -3 * torch.rand(5, 9, generator=g, dtype=torch.float64)
    advantages = torch.randn(5, generator=g, dtype=torch.float64)
    # off policy: on policy the ratio's value is 1 whatever the log-probs, only its gradient is not
    old = -3 * torch.rand(5, 9, generator=g, dtype=torch.float64)

    def loss(hidden, weight, bias):
        return lmloss.fused_policy_loss(
            "grpo", hidden=hidden, weight=weight, bias=bias, targets=targets,
            advantages=advantages, old_logps=old, ref_logps=ref, eps_low=1.0, eps_high=100.0,
            beta=0.3, entropy_coef=0.2,
            aggregation="token_mean", memory_budget=budget_for(1),
        ).loss  # fmt: skip

    inputs = [
        torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
        for shape in ((5, 9, 2), (5, 2), (5,))
    ]
    grads = torch.autograd.grad(loss(*inputs), inputs)
    assert blocks_seen and len(blocks_seen[0]) == 2
    assert_central_differences(loss, inputs, grads)


def moved_gradients(name, seed=0):
    """The sequences whose log-prob gradient changes when the inputs of every other
    sequence are redrawn (the mask kept): none for a loss that adds up over sequences."""
    case, other = make_case(seed), make_case(seed + 1)
    values = ("logps", "old_logps", "ref_logps", "proxy_logps", "entropy", "token_ids",
              "advantages")  # fmt: skip
    hyper = {"beta": 0.05, "entropy_coef": 0.01, **COUPLING_SHOWS.get(name, {})}

    def gradient(keep):
        """The gradient of the loss w.r.t. logps, the rows of ``keep`` from ``case``."""
        row = torch.zeros(case.logps.shape[0], dtype=torch.bool)
        row[keep] = True
        kw = {}
        for key in values:
            mine, theirs = getattr(case, key).detach(), getattr(other, key)
            kw[key] = torch.where(row.reshape(-1, *[1] * (mine.dim() - 1)), mine, theirs)
        kw["logps"].requires_grad_()
        inputs = {k: v for k, v in kw.items() if k in spec_of(name).takes}
        settings = {k: v for k, v in extra_inputs(name, case).items() if k not in values}
        out = lmloss.policy_loss(name, mask=case.mask, **inputs, **settings, **hyper)
        return torch.autograd.grad(out.loss, kw["logps"])[0][keep]

    rows = range(case.logps.shape[0])
    whole = gradient(list(rows))
    return [i for i in rows if not torch.allclose(gradient([i]), whole[i])]


@pytest.mark.parametrize("name", NAMES)
def test_coupled_objectives_say_so(name):
    """Redrawing the other sequences moves no sequence's gradient of a separable objective,
    and some sequence's gradient of every ``batch_coupled`` one (so the check can tell; a
    few seeds, since one small batch may hide a coupling: GTPO's conflicts need tokens
    that match)."""
    moved = {seed: moved_gradients(name, seed) for seed in range(0, 8, 2)}
    if name in SEPARABLE:
        assert not any(moved.values()), f"{name} couples sequences: declare batch_coupled=True"
    else:
        assert any(moved.values()), f"{name} is declared batch_coupled, but no gradient moved"
