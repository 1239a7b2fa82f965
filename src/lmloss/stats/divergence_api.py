"""Entry points of the two-model engine: argument checks, masks and shapes.

* :func:`token_pair_terms` — per-token pair-term sums of a student and a teacher, each one
  value (:class:`~lmloss.stats.model_input.ModelInput`: hidden states and head; a teacher
  may be :class:`~lmloss.stats.model_input.ModelLogits`), with the shared
  :class:`~lmloss.stats.model_input.PairSettings` (fused, differentiable; the backward
  recomputes the tiles);
* :func:`token_pair_loss` — a loss that sums a function of those per-token values over
  tokens, with the gradients computed in the same pass when whole-vocabulary tiles fit;
* :func:`pair_terms_from_logits` — the materializing reference on full logits (plain
  differentiable PyTorch: the test oracle and the plain path of ``lmloss.divergence_loss``);
* :func:`pairwise_pair_terms` — every row against every other row (a batch cost matrix).

Per-token results are shaped like the leading dimensions, zeros where ``mask == 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch

from lmloss import _checks
from lmloss.stats.divergence import (
    BlockLoss,
    PairSpec,
    eager_pair_loss,
    pair_plan,
    pair_terms_autograd,
)
from lmloss.stats.divergence_terms import parse_terms, resolve_hyper, term_values
from lmloss.stats.model_input import ModelInput, ModelLogits, PairSettings
from lmloss.stats.rows import scatter_rows, zeros_connected
from lmloss.stats.tiles import compute_dtype
from lmloss.stats.transform import LogitTransform

Tensor = torch.Tensor
DEFAULT_SETTINGS = PairSettings()


def vocab_mismatch(student_vocab: int, teacher_vocab: int) -> ValueError:
    return ValueError(
        f"student and teacher vocabularies differ: student has {student_vocab} entries, teacher "
        f"{teacher_vocab}; both distributions must live on the same vocabulary (map or pad the "
        "teacher's vocabulary to the student's first)"
    )


def check_mask(mask: object, leading: tuple[int, ...]) -> Tensor | None:
    """A 0/1 or bool mask shaped like the leading dimensions, as bool; None stays None."""
    if mask is None:
        return None
    mask = _checks.require_tensor("mask", mask)
    _checks.require_shape("mask", mask, leading, "the leading dimensions of the inputs")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must hold only 0 and 1 (or be bool)")
    return mask.bool()


def _valid_rows(mask: Tensor | None, n: int, device: torch.device) -> Tensor:
    if mask is None:
        return torch.arange(n, device=device)
    return mask.reshape(-1).nonzero().squeeze(1)


def _check_model(prefix: str, model: object) -> tuple[Tensor, Tensor]:
    """A :class:`ModelInput`'s hidden states and weight, checked (``prefix`` names them)."""
    if not isinstance(model, ModelInput):
        raise TypeError(
            f"{prefix} must be a ModelInput(hidden, head) (lmloss.stats.model_input), got "
            f"{type(model).__name__}"
        )
    hidden = _checks.require_floating(f"{prefix}_hidden", model.hidden)
    weight = _checks.require_floating(f"{prefix}_weight", model.head.weight)
    _checks.require_ndim(f"{prefix}_hidden", hidden, (2, 3))
    _checks.require_ndim(f"{prefix}_weight", weight, (2,))
    _checks.require_nonempty(f"{prefix}_hidden", hidden)
    _checks.require_nonempty(f"{prefix}_weight", weight)
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{prefix}_weight must be [V, H] with H = {prefix}_hidden.shape[-1] = "
            f"{hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"{prefix}_weight dtype {weight.dtype} differs from "
            f"{prefix}_hidden dtype {hidden.dtype}"
        )
    bias = model.head.bias
    if bias is not None:
        _checks.require_floating(f"{prefix}_bias", bias)
        _checks.require_shape(
            f"{prefix}_bias", bias, (weight.shape[0],), f"{prefix}_weight.shape[0]"
        )
    return hidden, weight


def _resolve(
    names: str | Iterable[str], hyper: Mapping[str, float]
) -> tuple[tuple[str, ...], dict]:
    names = parse_terms(names)
    return names, {name: resolve_hyper(name, hyper) for name in names}


def check_student(student: object) -> tuple[tuple[int, ...], int]:
    """The student's leading dimensions and vocabulary size, its tensors checked."""
    hidden, weight = _check_model("student", student)
    return tuple(hidden.shape[:-1]), weight.shape[0]


def check_teacher(
    leading: tuple[int, ...], vocab: int, teacher: object, *, required: bool = True
) -> ModelInput | ModelLogits | None:
    """The teacher as a head (:class:`ModelInput`) or as raw logits (:class:`ModelLogits`),
    on the student's rows and vocabulary."""
    if teacher is None:
        if required:
            raise ValueError(
                "a teacher is needed: pass teacher_hidden and teacher_weight, or teacher_logits"
            )
        return None
    if isinstance(teacher, ModelLogits):
        logits = _checks.require_floating("teacher_logits", teacher.logits)
        if logits.shape[-1] != vocab:
            raise vocab_mismatch(vocab, logits.shape[-1])
        _checks.require_shape("teacher_logits", logits, (*leading, vocab), "the student's rows × V")
        return teacher
    hidden, weight = _check_model("teacher", teacher)
    if tuple(hidden.shape[:-1]) != leading:
        raise ValueError(
            f"teacher_hidden must have leading dimensions {leading} (matching student_hidden), "
            f"got shape {tuple(hidden.shape)}"
        )
    if weight.shape[0] != vocab:
        raise vocab_mismatch(vocab, weight.shape[0])
    return teacher


def _without_grad(teacher: ModelInput | ModelLogits) -> ModelInput | ModelLogits:
    if isinstance(teacher, ModelLogits):
        return replace(teacher, logits=teacher.logits.detach())
    return ModelInput(teacher.hidden.detach(), teacher.head.detached())


@dataclass(frozen=True)
class _Prepared:
    """Checked inputs of the fused entry points, restricted to the trained rows."""

    names: tuple[str, ...]
    leading: tuple[int, ...]
    dtype: torch.dtype
    rows: Tensor
    inputs: tuple[Tensor | None, ...]  # as pair_terms_autograd takes them
    spec: PairSpec | None  # None when no row is trained
    connected: tuple[Tensor | None, ...]  # tensors an all-masked result stays attached to


def _prepare(
    student: ModelInput,
    teacher: ModelInput | ModelLogits,
    names: str | Iterable[str],
    mask: Tensor | None,
    hyper: Mapping[str, float] | None,
    settings: PairSettings,
) -> _Prepared:
    """The inputs of :func:`token_pair_terms`, checked and restricted to the trained rows."""
    leading, vocab = check_student(student)
    teacher = check_teacher(leading, vocab, teacher)
    if not settings.teacher_requires_grad:
        teacher = _without_grad(teacher)
    mask = check_mask(mask, leading)
    names, resolved = _resolve(names, hyper or {})
    dtype = compute_dtype(student.hidden.dtype)
    n_all = student.hidden.numel() // student.hidden.shape[-1]
    rows = _valid_rows(mask, n_all, student.hidden.device)
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
    # Without a mask every row is trained: no copy of the hidden states (nor its backward).
    pick = (lambda x: flat(x)) if mask is None else (lambda x: flat(x).index_select(0, rows))
    if isinstance(teacher, ModelLogits):
        teacher_inputs = (None, None, None, flat(teacher.logits), rows)
        teacher_connected = (None, None)
    else:
        head = teacher.head
        teacher_inputs = (pick(teacher.hidden), head.weight, head.bias, None, None)
        teacher_connected = (teacher.hidden, head.weight)
    inputs = (pick(student.hidden), student.head.weight, student.head.bias)
    spec = None
    if rows.numel():
        spec = PairSpec(
            names=names,
            hyper=resolved,
            student_transform=student.head.transform(settings.temperature),
            teacher_transform=teacher.transform(settings.temperature),
            plan=pair_plan(rows.numel(), vocab, dtype.itemsize, settings.memory_budget),
            dtype=dtype,
        )
    connected = (student.hidden, student.head.weight, student.head.bias, *teacher_connected)
    return _Prepared(names, leading, dtype, rows, inputs + teacher_inputs, spec, connected)


def token_pair_terms(
    student: ModelInput,
    teacher: ModelInput | ModelLogits,
    names: str | Iterable[str],
    *,
    mask: Tensor | None = None,
    hyper: Mapping[str, float] | None = None,
    settings: PairSettings = DEFAULT_SETTINGS,
) -> dict[str, Tensor]:
    """Per-token sums over the vocabulary of the pair terms ``names``, without the logits.

    Args:
        student: the student's hidden states ``[N, H]`` or ``[B, T, H]`` and its head
            (weight ``[V, H]``, bias, soft cap, logit scale).
        teacher: the teacher's hidden states (the student's leading dimensions, any width)
            and head, or its raw logits ``[..., V]`` and the transform that applies to them.
        names: the pair terms (:data:`lmloss.stats.divergence_terms.PAIR_TERMS`).
        mask: 0/1 or bool over the leading dimensions; masked rows give 0 and cost nothing.
        hyper: the terms' hyper-parameters (``beta`` ...).
        settings: temperature, memory budget, and whether the teacher gets gradients.

    Returns:
        ``{name: tensor}``, each shaped like ``student.hidden.shape[:-1]`` in the compute
        dtype (float32, float64 for float64 students), zeros where ``mask == 0``.
    """
    prepared = _prepare(student, teacher, names, mask, hyper, settings)
    if prepared.spec is None:
        shapes = dict.fromkeys(prepared.names, prepared.leading)
        return zeros_connected(shapes, prepared.dtype, *prepared.connected)
    values = pair_terms_autograd(prepared.inputs, prepared.spec)
    return scatter_rows(values, prepared.rows, prepared.leading)


def token_pair_loss(
    student: ModelInput,
    teacher: ModelInput | ModelLogits,
    names: str | Iterable[str],
    block_loss: BlockLoss,
    *,
    extra: Mapping[str, Tensor] | None = None,
    mask: Tensor | None = None,
    hyper: Mapping[str, float] | None = None,
    settings: PairSettings = DEFAULT_SETTINGS,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A loss that is a sum over trained tokens of a function of their pair-term sums.

    ``block_loss(values, rows)`` gets, for a block of trained rows (1-D, in row order of
    the flattened leading dimensions restricted to ``mask``), the term sums ``names`` and
    the rows of each ``extra`` tensor (shaped like the leading dimensions, e.g. a label
    cross-entropy), and returns the block's scalar contribution; contributions must not
    depend on other blocks (close over any batch normalizer). When whole-vocabulary tiles
    fit the memory budget the gradients are computed during this call in one pass
    (:func:`lmloss.stats.divergence.eager_pair_loss`); otherwise the recompute schedule is
    used. ``student``, ``teacher``, ``mask``, ``hyper`` and ``settings`` as for
    :func:`token_pair_terms`.

    Returns:
        The scalar loss (differentiable w.r.t. the student, the teacher when asked, and the
        ``extra`` tensors) and the detached term sums, shaped like the leading dimensions.
    """
    prepared = _prepare(student, teacher, names, mask, hyper, settings)
    names, leading, dtype, rows = prepared.names, prepared.leading, prepared.dtype, prepared.rows
    if prepared.spec is None:
        zeros = zeros_connected(dict.fromkeys(names, leading), dtype, *prepared.connected)
        return zeros[names[0]].sum(), {k: v.detach() for k, v in zeros.items()}
    extra_rows = {
        k: v.reshape(-1, *v.shape[len(leading) :]).index_select(0, rows)
        for k, v in (extra or {}).items()
    }
    if prepared.spec.plan.vocab < student.head.weight.shape[0]:
        values = pair_terms_autograd(prepared.inputs, prepared.spec)
        loss = block_loss({**values, **extra_rows}, slice(0, rows.numel()))
        detached = {k: v.detach() for k, v in values.items()}
    else:
        loss, detached = eager_pair_loss(prepared.inputs, prepared.spec, block_loss, extra_rows)
    return loss, scatter_rows(detached, rows, leading)


def pair_terms_from_logits(
    student_logits: Tensor,
    teacher_logits: Tensor,
    names: str | Iterable[str],
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    hyper: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """The sums of :func:`token_pair_terms` from full ``[..., V]`` logits of both models.

    Materializes both distributions (the plain path); differentiable w.r.t. both logits
    through autograd.
    """
    student_logits = _checks.require_floating("student_logits", student_logits)
    teacher_logits = _checks.require_floating("teacher_logits", teacher_logits)
    _checks.require_nonempty("student_logits", student_logits)
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise vocab_mismatch(student_logits.shape[-1], teacher_logits.shape[-1])
    _checks.require_shape("teacher_logits", teacher_logits, student_logits.shape, "student_logits")
    leading = tuple(student_logits.shape[:-1])
    mask = check_mask(mask, leading)
    names, resolved = _resolve(names, hyper or {})
    transform = LogitTransform(temperature=temperature)
    dtype = compute_dtype(student_logits.dtype)
    a = torch.log_softmax(transform.apply(student_logits.to(dtype)), dim=-1)
    b = torch.log_softmax(transform.apply(teacher_logits.to(dtype)), dim=-1)
    values = term_values(a, b, names, resolved)
    if mask is None:
        return values
    return {name: torch.where(mask, value, value.new_zeros(())) for name, value in values.items()}


def pairwise_pair_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    name: str,
    *,
    temperature: float = 1.0,
    hyper: Mapping[str, float] | None = None,
) -> Tensor:
    """``C[i, j] = Σ_v f(log p_s[i, v], log p_t[j, v])`` for 2-D logits ``[n, V]`` (plain path).

    Every student row against every teacher row (the ground cost of batch-level optimal
    transport); materializes ``[n, n, V]`` and is meant for class-level predictions or small
    batches.
    """
    (name,), resolved = _resolve(name, hyper or {})
    transform = LogitTransform(temperature=temperature)
    dtype = compute_dtype(student_logits.dtype)
    a = torch.log_softmax(transform.apply(student_logits.to(dtype)), dim=-1)
    b = torch.log_softmax(transform.apply(teacher_logits.to(dtype)), dim=-1)
    n = a.shape[0]
    return term_values(
        a[:, None, :].expand(n, n, -1), b[None, :, :].expand(n, n, -1), (name,), resolved
    )[name]
