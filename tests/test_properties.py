"""Property-based tests (hypothesis) over every registered objective.

* Random valid inputs — any seed, logits scaled from 0.1x to 1000x — give a finite loss and
  finite gradients, and the fused path (hidden states + head) equals the plain one
  (materialized logits).
* A NaN or infinite float hyper-parameter is refused with ``ValueError``/``TypeError``;
  it never comes back as a NaN loss.

Examples are few, derandomized (the same on every CI run) and without a deadline, to keep
the suite's budget. How each family is called lives in :func:`losses`, in one place.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmloss
from lmloss import registry
from lmloss.objectives.likelihood.emo import emo_cost_table

# the fused-vs-plain builders of the family tests, reused with drawn seeds and scales
sys.path[:0] = [str(Path(__file__).parent / family) for family in ("preference", "policy")]
from test_policy_fused import hyper_for, plain_stats  # noqa: E402
from test_preference_fused import TOKEN_KL, build, plain_only  # noqa: E402

PROPERTY = settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
F64 = torch.float64
B, T, H, V, GROUP = 6, 5, 4, 23, 3
NO_FUSED_PATH = {"sinkhorn_kd"}  # transport plan over the whole vocabulary: logits only
CLASSIFY_LABELS = {
    "multi_hot": ("infonce", "decoupled_softmax", "multi_similarity"),
    "value": ("hl_gauss",),
    "binary": ("anyloss", "ensloss"),
    "pairs": ("auc",),
    "scored_pair": ("bradley_terry",),  # [N, 2] scores of a pair, the preferred column
}


def _head(seed: int, scale: float, rows: int = B):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(rows, T, H, generator=g, dtype=F64) * scale).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=F64).requires_grad_()
    targets = torch.randint(0, V, (rows, T), generator=g)
    targets[0, : T // 2] = -100  # a prompt prefix
    targets[-1, -2:] = -100  # padding
    return g, hidden, weight, targets


# Each family's calling convention: (name, seed, scale, hyper) -> (fused, plain, leaves),
# fused None where the objective has no fused path.


def _likelihood(name, seed, scale, hyper):
    g, hidden, weight, targets = _head(seed, scale)
    want, expect, extra_plain, extra_fused = ("logp", "lse", "mean_logit"), {}, {}, {}
    if name == "emo":
        table = emo_cost_table(torch.randn(V, 3, generator=g, dtype=F64))
        want, expect = (*want, "expectation"), {"expect": table}
        extra_fused = {"embedding_table": table}
        extra_plain = {"target_embedding": table[targets.clamp(min=0)]}
    stats = lmloss.token_stats_from_logits(hidden @ weight.T, targets, want=want, **expect)
    plain = lmloss.likelihood_loss(
        name, **stats.asdict(), mask=targets != -100, **extra_plain, **hyper
    )
    fused = lmloss.fused_likelihood_loss(name, hidden, weight, targets, **extra_fused, **hyper)
    return fused, plain, (hidden, weight)


def _policy(name, seed, scale, hyper):
    g, hidden, weight, targets = _head(seed, scale)
    ref_hidden = hidden.detach() + 0.1 * torch.randn(B, T, H, generator=g, dtype=F64)
    rewards = torch.randint(0, 2, (B,), generator=g).to(F64)
    rewards[0], rewards[1] = 1.0, 0.0  # one informative group at least
    logp, entropy, mask = plain_stats(hidden, weight, targets)
    with torch.no_grad():
        ref_logp, _, _ = plain_stats(ref_hidden, weight, targets)
        # a log-probability stays <= 0 (the inputs refuse a probability above 1)
        old = (logp + 0.2 * torch.randn(B, T, generator=g, dtype=F64)).clamp(max=0.0)
    common = {"old_logps": old, "advantages": lmloss.advantages("grpo", rewards, GROUP)}
    if name == "lp_reg":
        common["proxy_logps"] = logp.detach() + 0.3
    plain = lmloss.policy_loss(
        name,
        logps=logp,
        ref_logps=ref_logp,
        entropy=entropy,
        mask=mask,
        token_ids=targets if name == "gtpo" else None,
        **common,
        **{**hyper_for(name), **hyper},
    )
    fused = lmloss.fused_policy_loss(
        name,
        hidden=hidden,
        weight=weight,
        targets=targets,
        ref_hidden=ref_hidden,
        want_entropy=True,
        **common,
        **{**hyper_for(name), **hyper},
    )
    return fused, plain, (hidden, weight)


def _distill(name, seed, scale, hyper):
    g, hidden, weight, targets = _head(seed, scale, rows=2)
    teacher_hidden = torch.randn(2, T, 3, generator=g, dtype=F64) * scale
    teacher_weight = torch.randn(V, 3, generator=g, dtype=F64)
    common = {"mask": targets != -100, "labels": targets.clamp(min=0), **hyper}
    plain = lmloss.divergence_loss(
        name, hidden @ weight.T, teacher_hidden @ teacher_weight.T, **common
    )
    fused = None
    if name not in NO_FUSED_PATH:
        fused = lmloss.fused_divergence_loss(
            name,
            hidden,
            weight,
            teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight,
            **common,
        )
    return fused, plain, (hidden, weight)


def _preference(name, seed, scale, hyper):
    model, fused_kw, plain_kw = build(name, seed)
    with torch.no_grad():
        for value in model.hidden.values():
            value.mul_(scale)
    fused = lmloss.fused_preference_loss(name, **fused_kw, **hyper)
    plain_kw = plain_only(plain_kw(), keep_kl=name in TOKEN_KL)
    plain = lmloss.preference_loss(name, **plain_kw, **hyper)
    return fused, plain, (model.weight, *model.hidden.values())


def _classify(name, seed, scale, hyper):
    g = torch.Generator().manual_seed(seed)
    kind = next((k for k, names in CLASSIFY_LABELS.items() if name in names), "index")
    shape = {"binary": (8,), "pairs": (2, 4), "scored_pair": (5, 2)}.get(kind, (5, 4))
    logits = (torch.randn(*shape, generator=g, dtype=F64) * scale).requires_grad_()
    labels = {
        "index": lambda: torch.randint(0, 4, (5,), generator=g),
        "multi_hot": lambda: torch.randint(0, 2, (5, 4), generator=g),
        "value": lambda: torch.rand(5, generator=g, dtype=F64),
        "binary": lambda: torch.tensor([1, 0, 1, 1, 0, 0, 1, 0]),
        "pairs": lambda: torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]]),
        "scored_pair": lambda: torch.randint(0, 2, (5,), generator=g),
    }[kind]()
    if name == "ensloss":
        hyper = {"generator": torch.Generator().manual_seed(seed), **hyper}
    plain = lmloss.classification_loss(name, logits=logits, labels=labels, **hyper)
    return None, plain, (logits,)


CALLS = {
    "likelihood": _likelihood,
    "policy": _policy,
    "distill": _distill,
    "preference": _preference,
    "classify": _classify,
}


def losses(family: str, name: str, seed: int, scale: float, hyper: dict | None = None):
    """(fused, plain, leaves): objective ``name`` on one random case, both ways."""
    return CALLS[family](name, seed, scale, dict(hyper or {}))


FAMILY_OF = {n: registry.get(n).family for n in lmloss.list_objectives()}
SEEDS = st.integers(min_value=0, max_value=2**16)
SCALES = st.sampled_from([0.1, 1.0, 10.0, 1000.0])


def _finite_grads(loss, leaves):
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)
    return all(g is None or bool(torch.isfinite(g).all()) for g in grads), grads


@pytest.mark.parametrize("name", sorted(FAMILY_OF))
@PROPERTY
@given(seed=SEEDS, scale=SCALES)
def test_valid_inputs_give_finite_loss_and_gradients_fused_equal_plain(name, seed, scale):
    fused, plain, leaves = losses(FAMILY_OF[name], name, seed, scale)
    assert bool(torch.isfinite(plain.loss)), f"{name}: loss {plain.loss}"
    finite, plain_grads = _finite_grads(plain.loss, leaves)
    assert finite, f"{name}: non-finite gradient"
    if fused is None:
        return
    tol = {"rtol": 1e-7, "atol": 1e-9 * max(1.0, scale)}
    torch.testing.assert_close(fused.loss, plain.loss, **tol)
    _, fused_grads = _finite_grads(fused.loss, leaves)
    for got, want in zip(fused_grads, plain_grads):
        if want is None or got is None:
            assert (got is None or not got.any()) and (want is None or not want.any())
        else:
            torch.testing.assert_close(got, want, **tol)


def _float_hyper(name: str) -> list[str]:
    return [k for k, v in registry.get(name).hyper.items() if type(v) is float]


WITH_FLOAT_HYPER = [n for n in sorted(FAMILY_OF) if _float_hyper(n)]
BAD = st.sampled_from([math.nan, math.inf, -math.inf])


@pytest.mark.parametrize("name", WITH_FLOAT_HYPER)
@PROPERTY
@given(data=st.data(), bad=BAD, seed=SEEDS)
def test_non_finite_hyper_parameter_is_refused(name, data, bad, seed):
    key = data.draw(st.sampled_from(_float_hyper(name)), label="hyper-parameter")
    with pytest.raises((ValueError, TypeError), match=key):
        losses(FAMILY_OF[name], name, seed, 1.0, {key: bad})
