"""The Triton backend equals the PyTorch backend, on CPU tensors under Triton's interpreter.

Run by ``test_triton_backend.py`` in a fresh process with ``TRITON_INTERPRET=1`` (it must be
set before ``triton`` is first imported; other test modules import it through Liger and
TRL), or directly: ``TRITON_INTERPRET=1 pytest tests/stats/triton_interpreter_cases.py``.

Shapes are such that neither the tokens (13) nor the vocabulary (37) nor the hidden size
(20) is a multiple of the interpreter's 16-wide tiles, so every masked edge is crossed.
Each test checks that the Triton path really ran (a ``route_*`` function returned a result).
"""

from __future__ import annotations

import pytest
import torch

import lmloss
from lmloss.stats import backend
from lmloss.stats.chunking import plan_chunks
from lmloss.stats.divergence import PairSpec, pair_plan, pair_terms_autograd
from lmloss.stats.divergence_api import token_pair_loss, token_pair_terms
from lmloss.stats.divergence_terms import resolve_hyper
from lmloss.stats.model_input import ModelInput, PairSettings
from lmloss.stats.single_model import eager_token_loss
from lmloss.stats.transform import LogitTransform

pytest.importorskip("triton")
from lmloss.stats.triton.launch import interpreting

if not interpreting():
    raise RuntimeError(
        "triton_interpreter_cases.py needs TRITON_INTERPRET=1 set before triton is imported"
    )

N, H, V = 13, 20, 37
# Two softmaxes and a log-mixture in float32, summed in another order than on torch.
PAIR_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
TRANSFORMS = [{}, {"softcap": 2.5, "logit_scale": 0.8, "temperature": 1.6}]


@pytest.fixture
def routed(monkeypatch):
    """Which ``route_*`` functions handed their call to Triton, in this test."""
    calls: list[str] = []
    for name in ("route_token_stats", "route_token_loss", "route_pair_terms", "route_pair_loss"):
        original = getattr(backend, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            result = _original(*args, **kwargs)
            if result is not None:
                calls.append(_name)
            return result

        monkeypatch.setattr(backend, name, spy)
    return calls


@pytest.fixture
def use(monkeypatch):
    """``use("triton")`` / ``use("torch")``: the backend of the calls that follow."""
    return lambda name: monkeypatch.setenv("LMLOSS_BACKEND", name)


def _head(dtype=torch.float32, bias=True, seed=0, n=N + 2):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g) / 2).to(dtype).requires_grad_()
    b = torch.randn(V, generator=g).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (n,), generator=g)
    targets[[2, 9]] = -100  # N = 13 rows reach the engine
    return hidden, weight, b, targets


def _grads(loss, head):
    return torch.autograd.grad(loss, [t for t in head if t is not None and t.requires_grad])


def _stats_and_grads(head, transform, want):
    hidden, weight, bias, targets = head
    stats = lmloss.token_stats(hidden, weight, targets, bias, want=want, **transform)
    g = torch.Generator().manual_seed(1)
    loss = sum(
        (stats[name] * torch.randn(targets.shape, generator=g)).sum()
        for name in want
        if name != "is_argmax"
    )
    return [stats[name] for name in want], _grads(loss, (hidden, weight, bias))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_token_stats_match_torch(use, routed, transform):
    head = _head()
    want = ("logp", "entropy", "lse", "mean_logit", "sum_sq_probs", "is_argmax")
    use("triton")
    values, grads = _stats_and_grads(head, transform, want)
    assert routed == ["route_token_stats"]
    use("torch")
    ref_values, ref_grads = _stats_and_grads(head, transform, want)
    for got, ref in zip(values + list(grads), ref_values + list(ref_grads)):
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=2e-5)
    assert bool((values[0][[2, 9]] == 0).all())  # ignored targets: exact zeros


def test_token_stats_frozen_weight_and_no_bias(use, routed):
    # 3 token blocks: the gradient kernel's grouped order ends on a partial group.
    hidden, weight, _, targets = _head(bias=False, n=47)
    weight = weight.detach()
    results = []
    for name in ("triton", "torch"):
        use(name)
        logp = lmloss.token_stats(hidden, weight, targets, want="logp").logp
        results.append((logp, *torch.autograd.grad(logp.sum(), hidden)))
    assert routed == ["route_token_stats"]
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=2e-5)


def focal_like(stats, rows):
    p = stats["logp"].exp()
    return (
        -((1 - p) ** 2) * stats["logp"] + 0.1 * stats["entropy"] + 1e-2 * stats["lse"] ** 2
    ).sum()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_one_pass_loss_matches_torch(use, routed, transform):
    hidden, weight, bias, targets = _head()
    keep = targets != -100
    plan = plan_chunks(N, V, 4, None, whole_vocab=True)
    results = []
    for name in ("triton", "torch"):
        use(name)
        rows, y = hidden[keep], targets[keep]
        total, values = eager_token_loss(
            rows, weight, bias, y, LogitTransform(**transform), ("logp", "entropy", "lse"),
            focal_like, plan,
        )  # fmt: skip
        results.append((total, values["entropy"], *_grads(1.7 * total, (hidden, weight, bias))))
    assert routed == ["route_token_loss"]
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_linear_cross_entropy_matches_torch(use, routed, transform):
    hidden, weight, bias, targets = _head()
    results = []
    for name in ("triton", "torch"):
        use(name)
        loss = lmloss.linear_cross_entropy(hidden, weight, targets, bias, **transform)
        results.append((loss, *_grads(loss, (hidden, weight, bias))))
    assert routed == ["route_token_loss"]
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_bf16_inputs_accumulate_in_float32(use, routed):
    """bf16 heads: float32 statistics, gradients in bf16, close to the float32 result of
    the same (bf16-representable) numbers."""
    head = _head(dtype=torch.bfloat16)
    transform = TRANSFORMS[1]
    want = ("logp", "entropy", "lse")
    use("triton")
    values, grads = _stats_and_grads(head, transform, want)
    assert routed == ["route_token_stats"]
    assert all(v.dtype == torch.float32 for v in values)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    use("torch")
    exact = tuple(t.detach().float().requires_grad_() if t.is_floating_point() else t for t in head)
    ref_values, ref_grads = _stats_and_grads(exact, transform, want)
    for got, ref in zip(values, ref_values):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    for got, ref in zip(grads, ref_grads):  # da enters the matmuls in bf16, as on torch
        torch.testing.assert_close(got.float(), ref, atol=3e-2, rtol=2e-2)


def _pair_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(dtype).requires_grad_()

    mask = torch.ones(N + 2, dtype=torch.bool)
    mask[[0, 7]] = False
    return {
        "student_hidden": leaf(N + 2, H),
        "student_weight": leaf(V, H),
        "student_bias": leaf(V),
        "teacher_hidden": leaf(N + 2, 12),  # the teacher's hidden size differs
        "teacher_weight": leaf(V, 12),
        "teacher_bias": leaf(V),
        "mask": mask,
    }


def _models(x, bias=True):
    """The student and the teacher of :func:`_pair_inputs` as the engine takes them."""

    def model(who):
        head = lmloss.Head(x[f"{who}_weight"], x[f"{who}_bias"] if bias else None)
        return ModelInput(x[f"{who}_hidden"], head)

    return model("student"), model("teacher")


def _pair_terms_on_both_backends(use, x, names, hyper, teacher_grad):
    """``[triton, torch]``: each backend's term values and the gradients of a weighted sum
    of them (w.r.t. the student's leaves, and the teacher's with ``teacher_grad``)."""
    leaves = [v for k, v in x.items() if k != "mask"]
    results = []
    for name in ("triton", "torch"):
        use(name)
        settings = PairSettings(temperature=1.3, teacher_requires_grad=teacher_grad)
        values = token_pair_terms(
            *_models(x), names, mask=x["mask"], hyper=hyper, settings=settings
        )
        loss = sum((values[n] * (i + 1.5)).sum() for i, n in enumerate(names))
        wanted = leaves if teacher_grad else leaves[:3]
        results.append([values[n] for n in names] + list(torch.autograd.grad(loss, wanted)))
    return results


@pytest.mark.parametrize(
    ("names", "hyper", "teacher_grad"),
    [
        (("forward_kl", "reverse_kl"), {}, False),
        (("jsd", "tvd"), {"beta": 0.3}, True),
    ],
)
def test_pair_terms_match_torch(use, routed, names, hyper, teacher_grad):
    results = _pair_terms_on_both_backends(use, _pair_inputs(), names, hyper, teacher_grad)
    assert routed == ["route_pair_terms"]
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, **PAIR_TOLERANCE)


# ``-inf`` bias entries (a masked vocabulary): some in one head only, one (5) in both.
MASKED_ENTRIES = {"teacher": [1, 5, 30], "student": [5, 12, 36]}


def _masked_pair_inputs(masked: str) -> dict:
    x = _pair_inputs()
    with torch.no_grad():
        for head, entries in MASKED_ENTRIES.items():
            if masked in (head, "both"):
                x[f"{head}_bias"][entries] = float("-inf")
    return x


@pytest.mark.parametrize("masked", ["teacher", "student", "both"])
@pytest.mark.parametrize(
    ("names", "hyper"),
    [(("forward_kl", "reverse_kl"), {}), (("jsd", "tvd"), {"beta": 0.3})],
)
def test_minus_inf_logits_are_probability_zero_as_on_torch(use, routed, masked, names, hyper):
    """A ``-inf`` logit is probability 0 on both backends: finite values and gradients (of
    both heads), equal to the PyTorch engine's (log-probabilities floored at -1e9)."""
    results = _pair_terms_on_both_backends(use, _masked_pair_inputs(masked), names, hyper, True)
    assert routed == ["route_pair_terms"]
    for got, ref in zip(*results):
        assert bool(torch.isfinite(got).all())
        # Mass on an entry the other head masks costs ~1e9 per unit of probability: gradients
        # then sum terms that large, and float32 leaves an error relative to the largest.
        largest = ref.abs().max().item()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=max(1e-4, 1e-5 * largest))


@pytest.mark.parametrize("masked", ["teacher", "student", "both"])
def test_minus_inf_logits_in_the_one_pass_loss(use, routed, masked):
    x = _masked_pair_inputs(masked)
    results = []
    for name in ("triton", "torch"):
        use(name)
        loss, values = token_pair_loss(
            *_models(x), ("jsd",), lambda v, rows: v["jsd"].sum(),
            mask=x["mask"], hyper={"beta": 0.5},
        )  # fmt: skip
        grads = torch.autograd.grad(loss, [x["student_hidden"], x["student_bias"]])
        results.append((loss, values["jsd"], *grads))
    assert routed == ["route_pair_loss"]
    for got, ref in zip(*results):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, ref, **PAIR_TOLERANCE)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_pair_loss_one_pass_matches_torch(use, routed, beta):
    x = _pair_inputs()
    results = []
    for name in ("triton", "torch"):
        use(name)
        loss, values = token_pair_loss(
            *_models(x), ("jsd",), lambda v, rows: (v["jsd"] ** 2).sum(),
            mask=x["mask"], hyper={"beta": beta},
        )  # fmt: skip
        grads = torch.autograd.grad(loss, [x["student_hidden"], x["student_weight"]])
        results.append((loss, values["jsd"], *grads))
    assert routed == ["route_pair_loss"]
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, **PAIR_TOLERANCE)


def test_pair_terms_with_soft_capped_heads(use, routed):
    """Each model's own scale, soft cap and temperature (the engine level takes them)."""
    x = _pair_inputs()
    inputs = (
        x["student_hidden"][:N], x["student_weight"], x["student_bias"],
        x["teacher_hidden"][:N], x["teacher_weight"], x["teacher_bias"], None, None,
    )  # fmt: skip
    spec = PairSpec(
        names=("reverse_kl", "jsd"),
        hyper={"reverse_kl": {}, "jsd": resolve_hyper("jsd", {"beta": 0.7})},
        student_transform=LogitTransform(logit_scale=1.3, softcap=2.0, temperature=0.8),
        teacher_transform=LogitTransform(logit_scale=0.6, softcap=4.0, temperature=1.1),
        plan=pair_plan(N, V, 4),
        dtype=torch.float32,
    )
    results = []
    for name in ("triton", "torch"):
        use(name)
        values = pair_terms_autograd(inputs, spec)
        loss = values["reverse_kl"].sum() + 2 * values["jsd"].sum()
        results.append([values["jsd"], *torch.autograd.grad(loss, inputs[:6])])
    assert routed == ["route_pair_terms"]
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, **PAIR_TOLERANCE)


def test_unsupported_statistics_fall_back_to_torch(use, routed):
    hidden, weight, bias, targets = _head()
    table = torch.randn(V, 3)
    results = []
    for name in ("triton", "torch"):
        use(name)
        stats = lmloss.token_stats(
            hidden, weight, targets, bias, want=("logp", "expectation"), expect=table
        )
        results.append(stats.expectation)
    assert routed == []
    torch.testing.assert_close(*results)


def test_gradient_filter_skips_small_tiles(use, routed, monkeypatch):
    hidden, weight, bias, targets = _head()
    use("triton")
    monkeypatch.setenv("LMLOSS_TRITON_GRAD_FILTER", "1e30")  # every tile is "small"
    logp = lmloss.token_stats(hidden, weight, targets, bias).logp
    grads = torch.autograd.grad(logp.sum(), (hidden, weight, bias))
    assert all(bool((g == 0).all()) for g in grads)
    monkeypatch.setenv("LMLOSS_TRITON_GRAD_FILTER", "-1")
    logp = lmloss.token_stats(hidden, weight, targets, bias).logp
    with pytest.raises(ValueError, match="LMLOSS_TRITON_GRAD_FILTER"):
        logp.sum().backward()


def test_front_doors_route_through_triton(use, routed):
    """``fused_divergence_loss`` and ``fused_preference_loss("dpo", wpo=True)`` (policy and
    reference heads; WPO needs ``sum_sq_probs``) reach the kernels and equal PyTorch."""
    x = _pair_inputs()
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 7, H, generator=g, requires_grad=True)
    ref_hidden = torch.randn(2, 7, H, generator=g)
    targets = torch.randint(0, V, (2, 7), generator=g)
    targets[:, :2] = -100  # the prompt
    results = []
    for name in ("triton", "torch"):
        use(name)
        jsd = lmloss.fused_divergence_loss(
            "jsd", x["student_hidden"], x["student_weight"],
            teacher_hidden=x["teacher_hidden"], teacher_weight=x["teacher_weight"],
            mask=x["mask"], beta=0.4,
        )  # fmt: skip
        dpo = lmloss.fused_preference_loss(
            "dpo", hidden=hidden, weight=x["student_weight"], targets=targets,
            ref_hidden=ref_hidden, ref_weight=x["student_weight"].detach(), softcap=3.0, wpo=True,
        )  # fmt: skip
        loss = jsd.loss + dpo.loss
        results.append((loss, *torch.autograd.grad(loss, (x["student_hidden"], hidden))))
    assert "route_pair_loss" in routed or "route_pair_terms" in routed
    assert "route_token_stats" in routed
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, **PAIR_TOLERANCE)


# ------------------------------------------------------------------ issue 24


def _mean_ce_grads(hidden, weight, targets):
    loss = lmloss.linear_cross_entropy(hidden, weight, targets)
    return (loss, *torch.autograd.grad(loss, (hidden, weight)))


# Few, large tiles: the interpreter's cost is per program, and these rows are many.
LARGE_TILES = "block_n=512,block_v=64,target_programs=1"


def test_gradient_filter_is_relative_to_the_upstream_gradient(use, routed, monkeypatch):
    """A mean over N > 4096 rows scales every logit gradient by 1/N < 2^-12: the filter
    compares with each row's upstream gradient, so the gradients stay (CCE's trade: tiles
    whose softmax gradient is under 2^-12 everywhere are dropped)."""
    monkeypatch.setenv("LMLOSS_TRITON_TILES", LARGE_TILES)
    g = torch.Generator().manual_seed(7)
    n, h, v = 4200, 16, 40
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (3 * torch.randn(v, h, generator=g)).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    use("triton")
    exact = _mean_ce_grads(hidden, weight, targets)
    monkeypatch.setenv("LMLOSS_TRITON_GRAD_FILTER", str(2**-12))
    filtered = _mean_ce_grads(hidden, weight, targets)
    assert routed == ["route_token_loss"] * 2
    assert torch.equal(filtered[0], exact[0])  # the loss is never filtered
    for got, ref in zip(filtered[1:], exact[1:]):
        assert ref.norm() > 0
        assert (got - ref).norm() <= 1e-2 * ref.norm()


def test_pair_gradient_filter_is_relative_to_the_upstream_gradient(use, routed, monkeypatch):
    monkeypatch.setenv("LMLOSS_TRITON_TILES", LARGE_TILES)
    g = torch.Generator().manual_seed(8)
    n, h, v = 4200, 16, 40
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = torch.randn(v, h, generator=g).requires_grad_()
    teacher = {
        "teacher_hidden": torch.randn(n, h, generator=g),
        "teacher_weight": 2 * torch.randn(v, h, generator=g),
    }
    use("triton")
    results = []
    for eps in ("0", str(2**-12)):
        monkeypatch.setenv("LMLOSS_TRITON_GRAD_FILTER", eps)
        loss = lmloss.fused_divergence_loss("jsd", hidden, weight, beta=0.5, **teacher).loss
        results.append(torch.autograd.grad(loss, (hidden, weight)))
    assert "route_pair_loss" in routed or "route_pair_terms" in routed
    for got, ref in zip(results[1], results[0]):
        assert ref.norm() > 0
        assert (got - ref).norm() <= 1e-2 * ref.norm()


def test_deterministic_mode_sweeps_without_atomics(use, routed, monkeypatch):
    """``torch.use_deterministic_algorithms(True)``: one sweep per owner (token blocks for
    the hidden gradient, vocabulary blocks for the weight's), equal to the atomic sweep."""
    from lmloss.stats.triton import launch, pair, single

    sweeps: list[tuple] = []

    def spy(need_dh, need_weight):
        result = launch.grad_sweeps(need_dh, need_weight)
        sweeps.append(tuple(s[0] for s in result))
        return result

    monkeypatch.setattr(single, "grad_sweeps", spy)
    monkeypatch.setattr(pair, "grad_sweeps", spy)
    head = _head(n=47)  # 3 token blocks, 3 vocabulary blocks
    x = _pair_inputs()
    use("triton")

    def run():
        stats = lmloss.token_stats(head[0], head[1], head[3], head[2], want=("logp", "entropy"))
        loss = stats.logp.sum() + 0.3 * stats.entropy.sum()
        kl = token_pair_terms(
            *_models(x, bias=False), ("jsd",), hyper={"beta": 0.3},
            settings=PairSettings(teacher_requires_grad=True),
        )["jsd"].sum()  # fmt: skip
        leaves = (*head[:3], x["student_hidden"], x["student_weight"], x["teacher_hidden"])
        return torch.autograd.grad(loss + kl, leaves)

    atomic = run()
    assert sweeps == [(0,), (0,)]
    torch.use_deterministic_algorithms(True)
    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(False)
    assert sweeps[2:] == [(1, 2)] * 4
    for a, b, c in zip(atomic, first, second):
        assert torch.equal(b, c)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_float16_gradients_are_scaled_before_rounding(use, routed):
    """A one-pass loss whose logit gradients sit under float16's normal range (a small
    loss weight, a mean over many rows): the kernels scale each tile before rounding it
    to float16 and keep float32 gradients until the GradScaler-like upstream scale."""
    hidden, weight, _, targets = _head(dtype=torch.float16, bias=False)
    keep = targets != -100
    rows, y = hidden[keep], targets[keep]
    plan = plan_chunks(N, V, 4, None, whole_vocab=True)
    scale = 2.0**16

    def tiny_mean(stats, rows):
        return -1e-5 * stats["logp"].sum() / N

    use("triton")
    total, _ = eager_token_loss(rows, weight, None, y, LogitTransform(), ("logp",), tiny_mean, plan)
    got = torch.autograd.grad(total * scale, (hidden, weight))
    assert routed == ["route_token_loss"]
    assert [t.dtype for t in got] == [torch.float16] * 2
    exact = [t.detach().double().requires_grad_() for t in (hidden, weight)]
    logp = torch.log_softmax(exact[0][keep] @ exact[1].T, -1).gather(1, y[:, None])
    ref = torch.autograd.grad(-1e-5 * logp.sum() / N * scale, exact)
    for g, r in zip(got, ref):
        assert r.abs().max() > 1e-2  # in float16's normal range once scaled
        torch.testing.assert_close(g.double(), r, atol=2e-3 * r.abs().max(), rtol=1e-2)


def test_pair_backward_reuses_the_forward_moments(use, routed, monkeypatch):
    """One sweep over both heads in the forward gives both KLs; the backward reuses it."""
    from lmloss.stats.triton import pair

    calls = []
    original = pair.pair_moments
    monkeypatch.setattr(pair, "pair_moments", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(pair, "pair_sums_kernel", None)  # the KLs need no second forward sweep
    x = _pair_inputs()
    use("triton")
    values = token_pair_terms(*_models(x, bias=False), ("forward_kl", "reverse_kl"))
    assert calls == [1]
    (values["forward_kl"].sum() + values["reverse_kl"].sum()).backward()
    assert calls == [1]
    assert routed == ["route_pair_terms"]


def test_opt_in_autotune_times_candidates_and_keeps_one(use, routed, monkeypatch):
    """``LMLOSS_TRITON_AUTOTUNE=1``: every kernel kind times its candidates once per shape
    (the gradient candidates into scratch buffers) and the results stay exact."""
    from lmloss.stats.triton import tuning

    monkeypatch.setattr(tuning, "_kept", {})
    head = _head()
    use("torch")
    ref_values, ref_grads = _stats_and_grads(head, {}, ("logp", "entropy"))
    use("triton")
    monkeypatch.setenv("LMLOSS_TRITON_AUTOTUNE", "1")
    values, grads = _stats_and_grads(head, {}, ("logp", "entropy"))
    kept = tuning.chosen()
    assert {key[:2] for key in kept} == {("moments", "forward_fp32"), ("logit_grad", "grad_fp32")}
    assert all(t.block_n in (16, 32) for t in kept.values())
    for got, ref in zip(values + list(grads), ref_values + list(ref_grads)):
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=2e-5)
    x = _pair_inputs()
    terms = token_pair_terms(*_models(x, bias=False), ("jsd",))
    got = torch.autograd.grad(terms["jsd"].sum(), x["student_weight"])[0]
    use("torch")
    monkeypatch.delenv("LMLOSS_TRITON_AUTOTUNE")
    terms = token_pair_terms(*_models(x, bias=False), ("jsd",))
    ref = torch.autograd.grad(terms["jsd"].sum(), x["student_weight"])[0]
    torch.testing.assert_close(got, ref, **PAIR_TOLERANCE)
    pair_kernels = {key[0] for key in tuning.chosen()} - {key[0] for key in kept}
    assert pair_kernels == {"pair_moments", "pair_sums", "pair_grad"}
