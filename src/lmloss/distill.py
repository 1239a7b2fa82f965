"""Front door of the distillation family: divergences between a student and a teacher.

* :func:`divergence_loss` — the plain path, from both models' logits ``[..., V]`` (or a
  sparse top-k teacher).
* :func:`fused_divergence_loss` — the same objectives from hidden states and LM-head
  weights: the two-model engine (:mod:`lmloss.stats.divergence`) never holds ``[N, V]``.
* :func:`token_divergence` — the per-token divergence itself (e.g. TDPO's per-token
  ``KL(π_ref ‖ π_θ)``: ``token_divergence("forward_kl", student_hidden=policy_hidden,
  student_head=policy_head, teacher_hidden=ref_hidden, teacher_head=ref_head,
  mask=mask)``).

Each model travels as one value below the doors: an :class:`lmloss.Head` with its hidden
states (:class:`~lmloss.stats.model_input.ModelInput`), or a teacher's raw logits
(:class:`~lmloss.stats.model_input.ModelLogits`); the per-keyword forms (``student_weight``,
``teacher_softcap`` ...) are turned into them at the top of each door.

Objectives are found by name in the registry (``lmloss.list_objectives("distill")``). What
an objective reads is declared by its ``stats``: pair terms (divergences and entropies,
defined once in :mod:`lmloss.stats.divergence_terms`) come from the engine, and a few
structured inputs (the Plackett–Luce ranking, the batch cost matrix) from the builders
below; ``hard_weight > 0`` adds the student's cross-entropy to ``labels``. The same
builders serve both paths through :mod:`lmloss.stats.divergence_models`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from lmloss import _checks, registry
from lmloss.head import Head, door_head
from lmloss.objectives.binding import (
    ObjectiveArgumentError,
    bind,
    positional_tensors,
    unknown_arguments,
)
from lmloss.objectives.distill.pld import plackett_luce_order
from lmloss.objectives.distill.sparse import check_sparse_teacher, sparse_support
from lmloss.output import LossOutput
from lmloss.stats.divergence_api import token_pair_terms
from lmloss.stats.divergence_models import HeadModels, LogitsModels
from lmloss.stats.divergence_terms import DIVERGENCES, PAIR_TERMS, resolve_hyper, term_values
from lmloss.stats.model_input import ModelInput, ModelLogits, PairSettings

Tensor = torch.Tensor
Models = LogitsModels | HeadModels

FAMILY = "distill"
_STUDENT_HEAD = ("student_hidden", "student_weight")
# The doors' per-keyword forms of each head: weight, bias, soft cap, logit scale.
_HEAD_KEYWORDS = {
    "student": ("student_weight", "student_bias", "softcap", "logit_scale"),
    "teacher": ("teacher_weight", "teacher_bias", "teacher_softcap", "teacher_logit_scale"),
}


def token_divergence(
    name: str,
    *args: Tensor,
    student_hidden: Tensor | None = None,
    student_head: Head | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_head: Head | None = None,
    teacher_logits: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    teacher_requires_grad: bool = False,
    memory_budget: int | None = None,
    head: Head | None = None,
    **hyper: float,
) -> Tensor:
    """The per-token divergence ``name`` between student and teacher, fused.

    Args:
        name: one of ``forward_kl`` (``KL(p_t ‖ p_s)``), ``reverse_kl``, ``jsd``, ``tvd``,
            ``skew_kl``, ``skew_reverse_kl``, ``alpha_beta``, ``hellinger``, ``chi2``.
        *args: deprecated: ``student_hidden, student_weight`` given by position.
        student_hidden: ``[N, H]`` or ``[B, T, H]``.
        student_head: the student's :class:`lmloss.Head` (weight ``[V, H]``, bias, soft cap,
            logit scale); ``head=`` is the same (the name :func:`lmloss.fused_loss` uses).
        teacher_hidden, teacher_head: the teacher's hidden states ``[..., H_t]`` and head
            (weight ``[V, H_t]``), or
        teacher_logits: its raw logits ``[..., V]`` instead (``teacher_softcap`` and
            ``teacher_logit_scale`` apply to them).
        mask: 0/1 or bool over the leading dimensions; masked positions give 0.
        temperature: divides both models' logits.
        teacher_requires_grad: also differentiate w.r.t. the teacher's inputs.
        memory_budget: bytes for the logit tiles (default 128 MiB).
        student_weight, student_bias, softcap, logit_scale: the student's head as keywords
            instead of ``student_head`` (as in :func:`lmloss.token_stats`);
        teacher_weight, teacher_bias, teacher_softcap, teacher_logit_scale: the teacher's,
            instead of ``teacher_head``.
        **hyper: the divergence's hyper-parameters (``beta`` for ``jsd``, ``alpha`` ...).

    Returns:
        Per-token values shaped like ``student_hidden.shape[:-1]``, zeros where
        ``mask == 0``; differentiable w.r.t. the student (and the teacher if asked).
    """
    _checks.require_choice("divergence", name, DIVERGENCES)
    student_hidden, hyper["student_weight"] = positional_tensors(
        "token_divergence", args, _STUDENT_HEAD, (student_hidden, hyper.get("student_weight"))
    )
    student, teacher = _two_models(
        (student_hidden, teacher_hidden, teacher_logits), (student_head, head, teacher_head), hyper
    )
    unknown = set(hyper) - set(PAIR_TERMS[name].defaults)
    if unknown:
        raise unknown_arguments("divergence", name, unknown, PAIR_TERMS[name].defaults)
    if teacher is None:
        raise ValueError(
            "a teacher is needed: pass teacher_hidden and teacher_weight (or teacher_head), "
            "or teacher_logits"
        )
    settings = PairSettings(temperature, memory_budget, teacher_requires_grad)
    values = token_pair_terms(student, teacher, (name,), mask=mask, hyper=hyper, settings=settings)
    return values[name]


# ---------------------------------------------------------------- the two models, one value each


def _two_models(
    tensors: tuple[object, object, object], heads: tuple[object, object, object], keywords: dict
) -> tuple[ModelInput, ModelInput | ModelLogits | None]:
    """The student and the teacher of a distillation door, one value each.

    ``tensors`` are the door's ``student_hidden``, ``teacher_hidden``, ``teacher_logits``;
    ``heads`` its ``student_head``, ``head`` (the same role, as :func:`lmloss.fused_loss`
    names it) and ``teacher_head``. The per-keyword forms of the heads are taken out of the
    door's other ``keywords``: what is left are hyper-parameters.
    """
    student_hidden, teacher_hidden, teacher_logits = tensors
    given = {
        model: {name: keywords.pop(name, None) for name in names}
        for model, names in _HEAD_KEYWORDS.items()
    }
    student_head, head, teacher_head = heads
    if student_head is not None and head is not None:
        raise ObjectiveArgumentError(
            "give student_head= or head=, not both (two names of one head)"
        )
    role, student = ("head", head) if head is not None else ("student_head", student_head)
    student = door_head(role, student, given["student"], required=True)
    teacher = _teacher(teacher_hidden, teacher_head, teacher_logits, given["teacher"])
    return ModelInput(student_hidden, student), teacher


def _teacher(
    hidden: object, teacher_head: object, logits: object, keywords: dict[str, object]
) -> ModelInput | ModelLogits | None:
    """The teacher as a head (``teacher_head=`` or its keywords) with its hidden states, as
    raw ``teacher_logits`` (the transform keywords apply to them), or None (absent)."""
    weight, bias, softcap, logit_scale = keywords.values()
    as_head = hidden is not None or weight is not None or teacher_head is not None
    if as_head and logits is not None:
        raise ValueError(
            "give the teacher either as teacher_hidden and teacher_weight (or teacher_head) "
            "or as teacher_logits, not both"
        )
    if logits is not None:
        if bias is not None:
            raise ValueError("teacher_bias applies to a teacher head, not to teacher_logits")
        return ModelLogits(logits, softcap, 1.0 if logit_scale is None else logit_scale)
    found = door_head("teacher_head", teacher_head, keywords)
    if (hidden is None) != (found is None):
        raise ValueError(
            "teacher_hidden and teacher_weight (or teacher_head) must be given together"
        )
    return None if found is None else ModelInput(hidden, found)


# ---------------------------------------------------------------- inputs of the objectives


def _checked_labels(labels: object, models: Models, why: str) -> Tensor:
    """Labels shaped like the rows, valid at every trained position; 0 elsewhere."""
    if labels is None:
        raise ValueError(f"{why} needs labels= (the gold token of each position)")
    labels = _checks.require_integer("labels", labels)
    _checks.require_shape("labels", labels, models.leading, "the student's rows")
    trained = torch.ones_like(labels, dtype=torch.bool) if models.mask is None else models.mask
    bad = trained & ((labels < 0) | (labels >= models.vocab))
    if bool(bad.any()):
        raise ValueError(
            f"labels must lie in [0, {models.vocab}) at trained positions (mask == 1); "
            f"found {int(labels[bad][0])}"
        )
    return torch.where(trained, labels, 0)


def _masked(values: dict[str, Tensor], mask: Tensor | None) -> dict[str, Tensor]:
    if mask is None:
        return values
    return {k: torch.where(mask, v, v.new_zeros(())) for k, v in values.items()}


def _pair_inputs(models: Models, names: tuple[str, ...], hyper: Mapping, sparse, tail: str) -> dict:
    if sparse is None:
        if not models.has_teacher:
            raise ValueError(
                "a teacher is needed: teacher_logits, teacher_hidden + teacher_weight, or a sparse "
                "teacher (teacher_topk_ids + teacher_topk_logprobs)"
            )
        return models.pair_terms(names, hyper)
    ids, logprobs = sparse
    lse = models.student_lse() if tail == "bucket" else None
    a, b = sparse_support(models.student_logits_at(ids), lse, logprobs.to(models.dtype), tail)
    values = term_values(a, b, names, {n: resolve_hyper(n, hyper) for n in names})
    return _masked(values, models.mask)


def _plackett_luce_inputs(models: Models, hyper: Mapping, labels: object, sparse) -> dict:
    if sparse is not None:
        raise ValueError(
            "pld ranks the gold label first with the teacher's probability of it, which a top-k "
            "list need not contain: give the teacher as logits or as a head"
        )
    if not models.has_teacher:
        raise ValueError("pld needs a teacher: teacher_logits, or teacher_hidden + teacher_weight")
    k = hyper["top_k"]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= models.vocab:
        raise ValueError(f"top_k must be an integer in [1, V = {models.vocab}], got {k!r}")
    gold = _checked_labels(labels, models, "pld")
    _, top_ids, teacher_lse = models.teacher_top_k(k)
    order = plackett_luce_order(top_ids, gold)
    # Untrained positions hold finite values (gold id 0): the objective masks them out.
    return {
        "plackett_luce_logits": models.student_logits_at(order),
        "plackett_luce_lse": models.student_lse(),
        "plackett_luce_teacher_logprobs": models.teacher_logits_at(order) - teacher_lse[..., None],
    }


def _batch_cost_inputs(models: Models, hyper: Mapping, labels: object, sparse) -> dict:
    if sparse is not None or not models.has_teacher:
        raise ValueError("sinkhorn_kd needs the teacher's full predictions: pass teacher_logits")
    cost = _checks.require_choice("cost", hyper["cost"], DIVERGENCES)
    return {"batch_cost": models.pairwise_terms(cost, hyper)}


# Structured inputs an objective can declare in its ``stats`` besides the pair terms.
_BUILDERS: dict[str, Callable[[Models, Mapping, object, object], dict]] = {
    "plackett_luce": _plackett_luce_inputs,
    "batch_cost": _batch_cost_inputs,
}


def _resolve(name: str, hyper: Mapping[str, object]) -> tuple[registry.Entry, dict]:
    entry = registry.get(name, family=FAMILY)
    _, given = bind(entry.spec, hyper, require=())
    return entry, {**entry.hyper, **given}


def _run(
    entry: registry.Entry, hyper: dict, models: Models, labels, sparse, tail: str
) -> LossOutput:
    stats = entry.spec.stats
    pair_names = tuple(s for s in stats if s in PAIR_TERMS)
    terms: dict[str, Tensor] = {}
    if pair_names:
        terms.update(_pair_inputs(models, pair_names, hyper, sparse, tail))
    for stat in stats:
        if stat not in PAIR_TERMS:
            terms.update(_BUILDERS[stat](models, hyper, labels, sparse))
    if hyper.get("hard_weight", 0) > 0:
        terms["nll"] = models.student_nll(_checked_labels(labels, models, "hard_weight > 0"))
    return entry(terms, models.mask, **hyper)


def _one_pass_applies(entry: registry.Entry, models: Models, sparse) -> bool:
    """A token-level objective of pair terms on the fused path: ``loss = Σ_t m_t ℓ_t / count``."""
    token_level = all(s in PAIR_TERMS for s in entry.spec.stats) and "num_items" in entry.hyper
    return isinstance(models, HeadModels) and sparse is None and token_level and models.has_teacher


def _run_one_pass(entry: registry.Entry, hyper: dict, models: HeadModels, labels) -> LossOutput:
    """Every block of tokens contributes independently (the token count is fixed up front),
    so the engine finishes each block's gradient as soon as its terms are known."""
    extra = {}
    if hyper.get("hard_weight", 0) > 0:
        extra["nll"] = models.student_nll(_checked_labels(labels, models, "hard_weight > 0"))
    count = hyper["num_items"]
    if count is None:
        count = math.prod(models.leading) if models.mask is None else int(models.mask.sum())
    block_hyper = {**hyper, "num_items": count}

    def block_loss(values: dict[str, Tensor], rows: slice) -> Tensor:
        return entry(values, None, **block_hyper).loss

    loss, values = models.pair_loss(entry.spec.stats, hyper, block_loss, extra)
    with torch.no_grad():
        summary = entry({**values, **extra}, models.mask, **hyper)
    return LossOutput(loss=loss, per_example=summary.per_example, metrics=summary.metrics)


def _sparse_teacher(ids, logprobs, models: Models, teacher_requires_grad: bool):
    if ids is None and logprobs is None:
        return None
    if ids is None or logprobs is None:
        raise ValueError("teacher_topk_ids and teacher_topk_logprobs must be given together")
    if models.has_teacher:
        raise ValueError("give either a dense teacher or a sparse one (teacher_topk_*), not both")
    ids, logprobs = check_sparse_teacher(ids, logprobs, models.leading, models.vocab, models.mask)
    return ids, logprobs if teacher_requires_grad else logprobs.detach()


def divergence_loss(
    name: str,
    *args: Tensor,
    student_logits: Tensor | None = None,
    teacher_logits: Tensor | None = None,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    teacher_topk_ids: Tensor | None = None,
    teacher_topk_logprobs: Tensor | None = None,
    sparse_tail: str = "bucket",
    teacher_requires_grad: bool = False,
    **hyper: object,
) -> LossOutput:
    """A distillation objective from logits (the plain path; materializes the distributions).

    Args:
        name: registry name (``lmloss.list_objectives("distill")``): a divergence
            (``forward_kl``, ``reverse_kl``, ``jsd``, ``tvd``, ``skew_kl``,
            ``skew_reverse_kl``, ``alpha_beta``, ``hellinger``, ``chi2``), ``bdkd``, ``pld``
            or ``sinkhorn_kd``.
        *args: deprecated: ``student_logits, teacher_logits`` given by position.
        student_logits: ``[N, V]`` or ``[B, T, V]`` raw student logits.
        teacher_logits: the teacher's raw logits, same shape; or a sparse teacher:
        teacher_topk_ids, teacher_topk_logprobs: ``[..., k]`` ids and the teacher's
            log-probs of them (e.g. from an inference server).
        sparse_tail: ``"bucket"`` (a (k+1)-th entry holds the unseen mass, TRL's default)
            or ``"renormalize"`` (both distributions renormalized over the k ids); see
            :mod:`lmloss.objectives.distill.sparse`.
        mask: 0/1 or bool over the leading dimensions: the trained positions.
        labels: gold ids over the leading dimensions (``pld``, ``hard_weight > 0``).
        temperature: divides both models' logits (not the cross-entropy to the labels).
        teacher_requires_grad: let gradients reach the teacher's logits (off by default).
        **hyper: the objective's hyper-parameters (``beta``, ``alpha``, ``hard_weight``,
            ``num_items``, ``top_k``, ``epsilon``, ...; see ``lmloss.describe(name)``).

    Returns:
        :class:`~lmloss.output.LossOutput`.
    """
    student_logits, teacher_logits = positional_tensors(
        "divergence_loss",
        args,
        ("student_logits", "teacher_logits"),
        (student_logits, teacher_logits),
    )
    entry, full = _resolve(name, hyper)
    if (
        teacher_logits is not None
        and not teacher_requires_grad
        and isinstance(teacher_logits, Tensor)
    ):
        teacher_logits = teacher_logits.detach()
    models = LogitsModels(student_logits, teacher_logits, mask, temperature)
    sparse = _sparse_teacher(teacher_topk_ids, teacher_topk_logprobs, models, teacher_requires_grad)
    if _one_pass_applies(entry, models, sparse):
        return _run_one_pass(entry, full, models, labels)
    return _run(entry, full, models, labels, sparse, sparse_tail)


def fused_divergence_loss(
    name: str,
    *args: Tensor,
    student_hidden: Tensor | None = None,
    student_head: Head | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_head: Head | None = None,
    teacher_logits: Tensor | None = None,
    teacher_topk_ids: Tensor | None = None,
    teacher_topk_logprobs: Tensor | None = None,
    sparse_tail: str = "bucket",
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    teacher_requires_grad: bool = False,
    memory_budget: int | None = None,
    head: Head | None = None,
    **hyper: object,
) -> LossOutput:
    """A distillation objective from hidden states and LM-head weights, without ``[N, V]``.

    The same objectives and arguments as :func:`divergence_loss`, with the student given as
    ``student_hidden= [..., H]`` and ``student_head=`` an :class:`lmloss.Head` (``head=``
    is the same, as :func:`lmloss.fused_loss` names it) and the teacher as a head
    (``teacher_hidden``, ``teacher_head``), as ``teacher_logits [..., V]``, or sparse
    (``teacher_topk_ids``/``teacher_topk_logprobs``). Each head carries its own transform
    (Gemma's soft cap, Cohere's scale), applied before ``temperature``. The heads may also
    be given by keyword, as in :func:`lmloss.token_stats`: ``student_weight``,
    ``student_bias``, ``softcap``, ``logit_scale`` (hidden and weight by position is
    deprecated) and ``teacher_weight``, ``teacher_bias``, ``teacher_softcap``,
    ``teacher_logit_scale`` (the last two also apply to ``teacher_logits``); a head and its
    keywords together are refused. Teacher gradients are off unless
    ``teacher_requires_grad=True`` (online distillation; PLD's teacher weights never carry
    one). ``memory_budget`` bounds the logit tiles
    (bytes; default 128 MiB). ``sinkhorn_kd`` compares every row with every other over the
    vocabulary and is offered on the plain path only.

    Token-level objectives of a dense teacher (the divergences, BD-KD) run in one pass:
    their loss is a sum over tokens with the token count fixed up front, so the engine
    computes the head gradients while it computes the terms (whole-vocabulary tiles when
    the memory budget allows, else the recomputing autograd path); their ``per_example``
    is then detached. With ``hard_weight > 0`` the label cross-entropy comes from
    :func:`lmloss.token_stats` (one more pass over the student's head).

    Returns:
        :class:`~lmloss.output.LossOutput`, equal to :func:`divergence_loss` on the
        materialized logits (values and gradients).
    """
    student_hidden, hyper["student_weight"] = positional_tensors(
        "fused_divergence_loss", args, _STUDENT_HEAD, (student_hidden, hyper.get("student_weight"))
    )
    student, teacher = _two_models(
        (student_hidden, teacher_hidden, teacher_logits), (student_head, head, teacher_head), hyper
    )
    entry, full = _resolve(name, hyper)
    settings = PairSettings(temperature, memory_budget, teacher_requires_grad)
    models = HeadModels(student, teacher, mask, settings)
    sparse = _sparse_teacher(teacher_topk_ids, teacher_topk_logprobs, models, teacher_requires_grad)
    if _one_pass_applies(entry, models, sparse):
        return _run_one_pass(entry, full, models, labels)
    return _run(entry, full, models, labels, sparse, sparse_tail)
