"""Random inputs for the preference tests, by objective name (imported by the test files)."""

from __future__ import annotations

import torch

import lmloss

UNPAIRED = {"kto", "apo_zero_unpaired"}
NEGATIVES = {"npo", "d2o"}
LISTS = {"lipo"}
TOKEN_KL = {"tdpo1", "tdpo2", "sparsepo"}
COUPLED = {"aot", "aot_unpaired"}  # sort the batch: no per-pair options
ALL = sorted(lmloss.list_objectives(family="preference"))
PAIRWISE = [n for n in ALL if n not in UNPAIRED | NEGATIVES | LISTS]
# objectives whose loss is a function of the DPO margin: they take divergence=
MARGIN_BASED = ["cdpo", "discopop", "dpo", "exo", "hinge", "ipo", "ln_dpo", "osp", "rdpo", "rpo"]
MARGIN_BASED += ["rpo_liu", "rso_hinge", "rso_sigmoid", "lipo"]

# hyper-parameters that make every term of a formula matter in the tests
HYPER = {
    "cdpo": {"eps": 0.2},
    "rdpo": {"eps": 0.2},
    "exo": {"eps": 0.05},
    "aot": {"eps": 0.15},
    "aot_unpaired": {"eps": 0.15},
    "rpo": {"nll_weight": 0.7},
    "rpo_liu": {"eta": 0.3},
    "cpo": {"nll_weight": 0.6},
    "orpo": {"lam": 0.4},
    "simpo": {"beta": 2.0, "gamma": 0.3},
    "kto": {"desirable_weight": 1.3, "undesirable_weight": 0.8},
    "apo_zero_unpaired": {"desirable_weight": 0.9, "undesirable_weight": 1.2},
    "d2o": {"alpha": 0.2},
    "discopop": {"tau": 0.3},
    "tdpo2": {"alpha": 0.4},
    "sparsepo": {"alpha": 0.6},
}


def logps(shape, g, dtype=torch.float64):
    """Log-probs of plausible size, in (−3, −0.05)."""
    return -0.05 - 2.95 * torch.rand(shape, generator=g, dtype=dtype)


def mask(shape, g, *, prompt: bool = True):
    """A completion mask: an optional prompt prefix, then 1..T' completion tokens, then padding."""
    *lead, t = shape
    start = torch.randint(0, 2 if prompt else 1, lead, generator=g)
    length = torch.randint(1, t - 1 + 1, lead, generator=g)
    position = torch.arange(t)
    return (position >= start[..., None]) & (position < (start + length)[..., None])


def group(prefix, shape, g, dtype, *, ref=True):
    out = {f"{prefix}logps": logps(shape, g, dtype), f"{prefix}mask": mask(shape, g)}
    if ref:
        out[f"ref_{prefix}logps"] = logps(shape, g, dtype)
    return out


def case(name, *, batch=4, length=6, list_size=3, seed=0, dtype=torch.float64):
    """Keyword tensors for ``preference_loss(name, **case(name))``."""
    g = torch.Generator().manual_seed(seed)
    b, t = batch, length
    if name in UNPAIRED:
        kw = group("", (b, t), g, dtype) | group("kl_", (b, t), g, dtype)
        kw["desirable"] = torch.arange(b) % 2 == 0
        return kw
    if name in NEGATIVES:
        return group("", (b, t), g, dtype) | group("sample_", (b, list_size, t), g, dtype)
    if name in LISTS:
        kw = group("", (b, list_size, t), g, dtype)
        kw["scores"] = torch.randint(0, 4, (b, list_size), generator=g).to(dtype)
        return kw
    kw = group("chosen_", (b, t), g, dtype) | group("rejected_", (b, t), g, dtype)
    if name in TOKEN_KL:
        for side in ("chosen_", "rejected_"):
            kw[f"{side}kl"] = 0.5 * torch.rand((b, t), generator=g, dtype=dtype)
    if name == "sparsepo":
        for side in ("chosen_", "rejected_"):
            kw[f"{side}reward_weights"] = torch.rand((b, t), generator=g, dtype=dtype)
            kw[f"{side}kl_weights"] = torch.rand((b, t), generator=g, dtype=dtype)
    if name == "osp":
        kw["strength"] = torch.rand(b, generator=g, dtype=dtype)
    return kw


def differentiable(kw):
    """The policy log-prob tensors of a case (the leaves a loss differentiates)."""
    return [k for k in kw if k.endswith("logps") and not k.startswith(("ref_", "kl_"))]
