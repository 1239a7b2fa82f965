"""Numerical parity with TRL 1.16: DPOTrainer (every loss type, f-divergence, WPO, LD-DPO),
KTOTrainer, CPOTrainer (CPO, SimPO) and ORPOTrainer.

TRL computes its losses inside trainer methods; the tests call those methods on a light
stand-in for the trainer whose "models" return given per-token log-probs, so TRL's own code
runs on the same random inputs as lmloss. Values and gradients w.r.t. the per-token
log-probs are compared.
"""

from __future__ import annotations

import inspect
import os
import types
from collections import defaultdict

import pytest
import torch
import trl.trainer.dpo_trainer as trl_dpo
import trl.trainer.kto_trainer as trl_kto
from preference_testkit import logps, mask

import lmloss

B, T = 6, 7
MAX_ABS = {}  # loss name -> max abs difference (value, gradient)


@pytest.fixture(scope="module", autouse=True)
def parity_table():
    """With LMLOSS_PARITY_TABLE=path, write the max-abs-difference table there."""
    yield
    path = os.environ.get("LMLOSS_PARITY_TABLE")
    if path:
        lines = ["| TRL loss | max abs diff, loss | max abs diff, grad |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1e} | {g:.1e} |" for k, (v, g) in sorted(MAX_ABS.items())]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


class FakeModel(torch.nn.Module):
    """Stands in for a causal LM called with ``fused_lm_head=True``: returns given log-probs."""

    is_gradient_checkpointing = False

    def __init__(self, by_input: dict, sum_sq=None):
        super().__init__()
        self.by_input = by_input  # id(input_ids) -> per-token log-probs [rows, T]
        self.sum_sq = sum_sq

    def forward(self, input_ids, **kwargs):
        log_probs = self.by_input[id(input_ids)]
        zeros = torch.zeros_like(log_probs)
        return types.SimpleNamespace(
            log_probs=log_probs,
            log_sum_sq_probs=self.sum_sq,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
            aux_loss=None,
        )


def accelerator():
    same = lambda x: x  # noqa: E731
    return types.SimpleNamespace(device="cpu", gather=same, gather_for_metrics=same)


def dpo_data(seed, dtype=torch.float64, equal_chosen_lengths=False):
    g = torch.Generator().manual_seed(seed)
    m = mask((2 * B, T), g)
    if equal_chosen_lengths:
        m[:B] = torch.arange(T) < 5
    data = {
        "mask": m,
        "policy": logps((2 * B, T), g, dtype) * m,  # zeros outside, as a fused head returns
        "ref": logps((2 * B, T), g, dtype) * m,
        "sum_sq": -0.05 - 3 * torch.rand((2 * B, T), generator=g, dtype=dtype),
    }
    return data


def trl_dpo_loss(
    data,
    policy,
    loss_type,
    *,
    beta,
    eps=0.0,
    f_div="reverse_kl",
    f_coef=0.5,
    weights=None,
    wpo=False,
    ld_alpha=None,
):
    input_ids = torch.zeros(2 * B, T + 1, dtype=torch.long)
    completion_mask = torch.cat(
        [torch.zeros(2 * B, 1, dtype=torch.long), data["mask"].long()], dim=1
    )
    loss_types = list(loss_type) if isinstance(loss_type, tuple) else [loss_type]
    trainer = types.SimpleNamespace(
        model=FakeModel({id(input_ids): policy}, data["sum_sq"] * data["mask"]),
        ref_model=FakeModel({id(input_ids): data["ref"]}),
        accelerator=accelerator(),
        aux_loss_enabled=False,
        ld_alpha=ld_alpha,
        precompute_ref_logps=False,
        f_divergence_type=f_div,
        f_alpha_divergence_coef=f_coef,
        loss_types=loss_types,
        loss_weights=weights or [1.0] * len(loss_types),
        beta=beta,
        label_smoothing=eps,
        use_weighting=wpo,
        args=types.SimpleNamespace(discopop_tau=0.05, gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "completion_mask": completion_mask,
    }
    return trl_dpo.DPOTrainer._compute_loss(
        trainer, trainer.model, inputs, return_outputs=False
    ), trainer._metrics["train"]


def ours_dpo_loss(data, policy, name, **hyper):
    m = data["mask"]
    kw = {
        "chosen_logps": policy[:B],
        "rejected_logps": policy[B:],
        "chosen_mask": m[:B],
        "rejected_mask": m[B:],
        "ref_chosen_logps": data["ref"][:B],
        "ref_rejected_logps": data["ref"][B:],
    }
    if hyper.get("wpo"):
        kw["chosen_sum_sq_probs"], kw["rejected_sum_sq_probs"] = (
            data["sum_sq"][:B],
            data["sum_sq"][B:],
        )
    return lmloss.preference_loss(name, **kw, **hyper)


def compare(key, data, trl_kwargs, name, ours_kwargs, tol):
    policy_trl = data["policy"].clone().requires_grad_()
    policy_ours = data["policy"].clone().requires_grad_()
    want, trl_metrics = trl_dpo_loss(data, policy_trl, **trl_kwargs)
    got = ours_dpo_loss(data, policy_ours, name, **ours_kwargs)
    want.backward()
    got.loss.backward()
    # TRL sums every position (a real fused head gives masked ones no gradient): compare inside
    inside = data["mask"]
    grad_ours, grad_trl = policy_ours.grad * inside, policy_trl.grad * inside
    torch.testing.assert_close(got.loss, want, rtol=tol, atol=tol)
    torch.testing.assert_close(grad_ours, grad_trl, rtol=tol, atol=tol)
    MAX_ABS[key] = ((got.loss - want).abs().item(), (grad_ours - grad_trl).abs().max().item())
    return got, trl_metrics


# TRL loss_type -> (lmloss name, hyper-parameters, TRL label_smoothing)
LOSS_TYPES = {
    "sigmoid": ("dpo", {}, 0.0),
    "hinge": ("hinge", {}, 0.0),
    "ipo": ("ipo", {}, 0.0),
    "exo_pair": ("exo", {"eps": 1e-3}, 1e-3),
    "nca_pair": ("nca", {}, 0.0),
    "robust": ("rdpo", {"eps": 0.1}, 0.1),
    "bco_pair": ("bco", {}, 0.0),
    "sppo_hard": ("sppo_hard", {}, 0.0),
    "aot": ("aot", {"eps": 0.1}, 0.1),
    "aot_unpaired": ("aot_unpaired", {"eps": 0.1}, 0.1),
    "apo_zero": ("apo_zero", {}, 0.0),
    "apo_down": ("apo_down", {}, 0.0),
    "discopop": ("discopop", {"tau": 0.05}, 0.0),
    "sigmoid_norm": ("ln_dpo", {}, 0.0),
}


def tolerance(loss_type):
    # TRL builds EXO's ε as a float32 tensor, so log(ε) and log(1 − ε) carry float32 error
    return 1e-7 if loss_type == "exo_pair" else 1e-12


F_DIVERGENCE_TYPES = ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"]


def test_every_trl_loss_type_is_covered():
    source = inspect.getsource(trl_dpo.DPOTrainer._compute_loss)
    listed = source[source.index("Unknown loss type") :].split("[", 1)[1].split("]", 1)[0]
    trl_types = {
        t.strip().strip("'\"") for t in listed.replace("\n", "").replace('"', "").split(",")
    }
    assert trl_types == set(LOSS_TYPES) | {"sft"}  # "sft" is covered by rpo below


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_dpo_trainer_loss_types(loss_type):
    name, hyper, eps = LOSS_TYPES[loss_type]
    beta = 0.3
    trl = {"loss_type": loss_type, "beta": beta, "eps": eps}
    got, metrics = compare(
        loss_type, dpo_data(1), trl, name, dict(hyper, beta=beta), tolerance(loss_type)
    )
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
    ):
        torch.testing.assert_close(got.metrics[key].item(), metrics[key][-1], rtol=1e-7, atol=1e-7)


def test_rpo_is_sigmoid_plus_sft():
    # TRL averages the SFT term over all chosen tokens of the batch; per pair it is the same
    # when every chosen completion has the same length
    data = dpo_data(2, equal_chosen_lengths=True)
    trl = {"loss_type": ("sigmoid", "sft"), "weights": [1.0, 0.7], "beta": 0.2}
    compare("sigmoid+sft (rpo)", data, trl, "rpo", {"beta": 0.2, "nll_weight": 0.7}, 1e-12)


@pytest.mark.parametrize("loss_type", F_DIVERGENCE_TYPES)
@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergences(loss_type, divergence):
    name, hyper, eps = LOSS_TYPES[loss_type]
    ours = {"forward_kl": "forward_kl", "js_divergence": "js", "alpha_divergence": "alpha"}[
        divergence
    ]
    coef = 0.35  # TRL's f_alpha_divergence_coef; ours (the paper's α) is 1 − coef
    # TRL's alpha-divergence clamp table has no float64 entry: compare it in float32
    dtype, tol = (
        (torch.float32, 2e-5)
        if divergence == "alpha_divergence"
        else (torch.float64, tolerance(loss_type))
    )
    trl = {"loss_type": loss_type, "beta": 0.3, "eps": eps, "f_div": divergence, "f_coef": coef}
    hyper = dict(hyper, beta=0.3, divergence=ours, alpha=1 - coef)
    compare(f"{loss_type} + {divergence}", dpo_data(3, dtype), trl, name, hyper, tol)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero"])
def test_wpo_and_ld_dpo(loss_type):
    name, hyper, eps = LOSS_TYPES[loss_type]
    data = dpo_data(4)
    trl = {"loss_type": loss_type, "beta": 0.3, "eps": eps, "wpo": True, "ld_alpha": 0.4}
    hyper = dict(hyper, beta=0.3, wpo=True, ld_alpha=0.4)
    compare(f"{loss_type} + WPO + LD-DPO", data, trl, name, hyper, tolerance(loss_type))


# --------------------------------------------------------------------------- KTO


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_trainer(loss_type):
    g = torch.Generator().manual_seed(5)
    m, kl_mask = mask((B, T), g), mask((B, T), g)
    policy = (logps((B, T), g) * m).requires_grad_()
    ref = logps((B, T), g) * m
    kl_policy = logps((B, T), g) * kl_mask
    kl_ref = (logps((B, T), g) - 0.3) * kl_mask  # a positive KL estimate: z0 is not clamped
    labels = torch.tensor([True, False, True, True, False, False])
    ids, kl_ids = torch.zeros(B, T + 1, dtype=torch.long), torch.zeros(B, T + 1, dtype=torch.long)
    pad = torch.zeros(B, 1, dtype=torch.long)
    batch = {
        "label": labels,
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": torch.cat([pad, m.long()], 1),
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones_like(kl_ids),
        "KL_completion_mask": torch.cat([pad, kl_mask.long()], 1),
    }
    trainer = types.SimpleNamespace(
        model=FakeModel({id(ids): policy, id(kl_ids): kl_policy}),
        ref_model=FakeModel({id(ids): ref, id(kl_ids): kl_ref}),
        accelerator=accelerator(),
        calculate_KL=loss_type == "kto",
        loss_type=loss_type,
        beta=0.4,
        desirable_weight=1.3,
        undesirable_weight=0.7,
        precompute_ref_logps=False,
        aux_loss_enabled=False,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    trainer._compute_kl_logps = types.MethodType(trl_kto.KTOTrainer._compute_kl_logps, trainer)
    want = trl_kto.KTOTrainer._compute_loss(trainer, trainer.model, batch, return_outputs=False)
    ours_policy = policy.detach().clone().requires_grad_()
    hyper = {"beta": 0.4, "desirable_weight": 1.3, "undesirable_weight": 0.7}
    kl = (
        {"kl_logps": kl_policy, "kl_mask": kl_mask, "ref_kl_logps": kl_ref}
        if loss_type == "kto"
        else {}
    )
    got = lmloss.preference_loss(
        loss_type, logps=ours_policy, mask=m, ref_logps=ref, desirable=labels, **kl, **hyper
    )
    want.backward()
    got.loss.backward()
    torch.testing.assert_close(got.loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_policy.grad, policy.grad * m, rtol=1e-12, atol=1e-12)
    if loss_type == "kto":
        torch.testing.assert_close(got.metrics["kl"].item(), trainer._metrics["train"]["kl"][-1])
    MAX_ABS[f"KTOTrainer {loss_type}"] = (
        (got.loss - want).abs().item(),
        (ours_policy.grad - policy.grad * m).abs().max().item(),
    )


# --------------------------------------------------------------------------- CPO / SimPO / ORPO


def reference_free_data(seed):
    g = torch.Generator().manual_seed(seed)
    m = mask((2, B, T), g)
    m[0] = torch.arange(T) < 4  # equal chosen lengths: TRL's batch-level NLL equals ours
    return m, logps((2, B, T), g) * m


def test_cpo_and_simpo():
    import trl.experimental.cpo.cpo_trainer as trl_cpo

    m, lp = reference_free_data(6)
    for loss_type, name, hyper in (
        ("sigmoid", "cpo", {"beta": 0.3, "nll_weight": 0.8}),
        ("simpo", "simpo", {"beta": 2.0, "gamma": 0.6}),
    ):
        policy = lp.clone().requires_grad_()
        average = loss_type == "simpo"
        sums = (policy * m).sum(-1)
        seq = sums / m.sum(-1) if average else sums
        trainer = types.SimpleNamespace(
            alpha=0.0, loss_type=loss_type, beta=hyper["beta"], simpo_gamma=hyper.get("gamma"),
            label_smoothing=0.0, accelerator=accelerator(),
        )  # fmt: skip
        losses, _, _ = trl_cpo.CPOTrainer.cpo_loss(trainer, seq[0], seq[1])
        nll = -(policy[0] * m[0]).sum() / m[0].sum()  # TRL's cross-entropy over chosen tokens
        want = losses.mean() + hyper.get("nll_weight", 0.0) * nll
        ours = lp.clone().requires_grad_()
        got = lmloss.preference_loss(
            name,
            chosen_logps=ours[0],
            rejected_logps=ours[1],
            chosen_mask=m[0],
            rejected_mask=m[1],
            **hyper,
        )
        want.backward()
        got.loss.backward()
        torch.testing.assert_close(got.loss, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.grad, policy.grad, rtol=1e-12, atol=1e-12)
        MAX_ABS[f"CPOTrainer {loss_type} ({name})"] = (
            (got.loss - want).abs().item(),
            (ours.grad - policy.grad).abs().max().item(),
        )


def test_orpo():
    import trl.experimental.orpo.orpo_trainer as trl_orpo

    m, lp = reference_free_data(7)
    policy = lp.clone().requires_grad_()
    average = (policy * m).sum(-1) / m.sum(-1)
    trainer = types.SimpleNamespace(beta=0.25, accelerator=accelerator())
    losses, *_ = trl_orpo.ORPOTrainer.odds_ratio_loss(trainer, average[0], average[1])
    want = -(policy[0] * m[0]).sum() / m[0].sum() - losses.mean()
    ours = lp.clone().requires_grad_()
    got = lmloss.preference_loss(
        "orpo",
        chosen_logps=ours[0],
        rejected_logps=ours[1],
        chosen_mask=m[0],
        rejected_mask=m[1],
        lam=0.25,
    )
    want.backward()
    got.loss.backward()
    # TRL casts the log-probs to float32 for the odds ratio: float32 agreement
    torch.testing.assert_close(got.loss, want, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ours.grad, policy.grad, rtol=1e-6, atol=1e-7)
    MAX_ABS["ORPOTrainer (orpo)"] = (
        (got.loss - want).abs().item(),
        (ours.grad - policy.grad).abs().max().item(),
    )
