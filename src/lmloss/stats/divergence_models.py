"""A student and a teacher seen through the per-token quantities distillation objectives need.

Two implementations with one interface, so every objective's inputs are assembled once:

* :class:`LogitsModels` — the plain path, from full ``[..., V]`` logits (materializing);
* :class:`HeadModels` — the fused path, from each model as one value
  (:class:`~lmloss.stats.model_input.ModelInput`, a teacher also as
  :class:`~lmloss.stats.model_input.ModelLogits`; never ``[N, V]``): pair terms from the
  two-model engine, the student's log-sum-exp and label log-probabilities from
  :func:`lmloss.token_stats`, a few logits per row by gathering weight rows, the teacher's
  top-k by a tiled pass.

Every tensor returned is shaped like the leading dimensions (plus ``k`` for per-id values)
in the compute dtype. ``temperature`` applies to every quantity except :meth:`student_nll`,
which is the student's own cross-entropy at temperature 1. A fused model's head transform
(soft cap, logit scale) applies to every quantity of that model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lmloss import _checks
from lmloss.stats.api import token_stats
from lmloss.stats.divergence import BlockLoss, pair_plan
from lmloss.stats.divergence_api import (
    check_mask,
    check_student,
    check_teacher,
    pair_terms_from_logits,
    pairwise_pair_terms,
    token_pair_loss,
    token_pair_terms,
    vocab_mismatch,
)
from lmloss.stats.divergence_gather import head_logits_at, top_k_with_lse
from lmloss.stats.model_input import ModelInput, ModelLogits, PairSettings
from lmloss.stats.tiles import HeadSource, LogitsSource, compute_dtype
from lmloss.stats.transform import LogitTransform

Tensor = torch.Tensor
IGNORE = -100


def _masked_targets(targets: Tensor, mask: Tensor | None) -> Tensor:
    return targets if mask is None else torch.where(mask, targets, IGNORE)


class LogitsModels:
    """Student (and optionally teacher) given as full logits ``[..., V]``."""

    def __init__(
        self, student_logits: object, teacher_logits: object, mask: object, temperature: float
    ):
        self.student_logits = _checks.require_floating("student_logits", student_logits)
        _checks.require_nonempty("student_logits", self.student_logits)
        self.leading, self.vocab = (
            tuple(self.student_logits.shape[:-1]),
            self.student_logits.shape[-1],
        )
        if teacher_logits is not None:
            teacher_logits = _checks.require_floating("teacher_logits", teacher_logits)
            if teacher_logits.shape[-1] != self.vocab:
                raise vocab_mismatch(self.vocab, teacher_logits.shape[-1])
            _checks.require_shape(
                "teacher_logits", teacher_logits, self.student_logits.shape, "student_logits"
            )
        self.teacher_logits = teacher_logits
        self.mask = check_mask(mask, self.leading)
        self.transform = LogitTransform(temperature=temperature)
        self.dtype = compute_dtype(self.student_logits.dtype)

    @property
    def has_teacher(self) -> bool:
        return self.teacher_logits is not None

    def _z(self, logits: Tensor) -> Tensor:
        return self.transform.apply(logits.to(self.dtype))

    def pair_terms(self, names: tuple[str, ...], hyper: Mapping[str, float]) -> dict[str, Tensor]:
        return pair_terms_from_logits(
            self.student_logits,
            self.teacher_logits,
            names,
            mask=self.mask,
            temperature=self.transform.temperature,
            hyper=hyper,
        )

    def pairwise_terms(self, name: str, hyper: Mapping[str, float]) -> Tensor:
        """Every row's student distribution against every row's teacher: ``[n, n]``."""
        return pairwise_pair_terms(
            self.student_logits.reshape(-1, self.vocab),
            self.teacher_logits.reshape(-1, self.vocab),
            name,
            temperature=self.transform.temperature,
            hyper=hyper,
        )

    def student_logits_at(self, ids: Tensor) -> Tensor:
        return self._z(self.student_logits).gather(-1, ids)

    def student_lse(self) -> Tensor:
        return torch.logsumexp(self._z(self.student_logits), dim=-1)

    def student_nll(self, targets: Tensor) -> Tensor:
        log_probs = torch.log_softmax(self.student_logits.to(self.dtype), dim=-1)
        targets = _masked_targets(targets, self.mask)
        picked = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        return torch.where(targets != IGNORE, -picked, picked.new_zeros(()))

    @torch.no_grad()
    def teacher_top_k(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        z = self._z(self.teacher_logits)
        values, ids = z.topk(k, dim=-1)
        return values, ids, torch.logsumexp(z, dim=-1)

    @torch.no_grad()
    def teacher_logits_at(self, ids: Tensor) -> Tensor:
        return self._z(self.teacher_logits).gather(-1, ids)


class HeadModels:
    """Student given as a head; teacher as a head, as logits, or absent (sparse teacher)."""

    def __init__(
        self,
        student: ModelInput,
        teacher: ModelInput | ModelLogits | None,
        mask: object,
        settings: PairSettings,
    ):
        self.leading, self.vocab = check_student(student)
        self.student = student
        self.teacher = check_teacher(self.leading, self.vocab, teacher, required=False)
        self.mask = check_mask(mask, self.leading)
        self.settings = settings
        self.transform = student.transform(settings.temperature)
        self.teacher_transform = (
            None if teacher is None else teacher.transform(settings.temperature)
        )
        self.dtype = compute_dtype(student.hidden.dtype)

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def _rows(self, x: Tensor) -> Tensor:
        return x.reshape(-1, x.shape[-1])

    def pair_terms(self, names: tuple[str, ...], hyper: Mapping[str, float]) -> dict[str, Tensor]:
        return token_pair_terms(
            self.student, self.teacher, names, mask=self.mask, hyper=hyper, settings=self.settings
        )

    def pair_loss(
        self,
        names: tuple[str, ...],
        hyper: Mapping[str, float],
        block_loss: BlockLoss,
        extra: Mapping[str, Tensor],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """A sum over blocks of trained tokens (see :func:`token_pair_loss`), in one pass."""
        return token_pair_loss(
            self.student,
            self.teacher,
            names,
            block_loss,
            extra=extra,
            mask=self.mask,
            hyper=hyper,
            settings=self.settings,
        )

    def pairwise_terms(self, name: str, hyper: Mapping[str, float]) -> Tensor:
        raise ValueError(
            "a batch-level ground cost compares every row with every other over the whole "
            "vocabulary; it is offered on the plain path only: use lmloss.divergence_loss with "
            "[B, C] logits"
        )

    def student_logits_at(self, ids: Tensor) -> Tensor:
        k = ids.shape[-1]
        head = self.student.head
        raw = head_logits_at(
            self._rows(self.student.hidden),
            head.weight,
            head.bias,
            ids.reshape(-1, k),
            self.settings.memory_budget,
        )
        return self.transform.apply(raw).reshape(*self.leading, k)

    def _student_stats(self, targets: Tensor, want: str, temperature: float) -> Tensor:
        head = self.student.head
        stats = token_stats(
            self.student.hidden,
            head.weight,
            _masked_targets(targets, self.mask),
            head.bias,
            ignore_index=IGNORE,
            temperature=temperature,
            **head.transform_kwargs(),
            want=(want,),
            memory_budget=self.settings.memory_budget,
        )
        return stats[want]

    def student_lse(self) -> Tensor:
        any_target = self.student.hidden.new_zeros(self.leading, dtype=torch.long)
        return self._student_stats(any_target, "lse", self.transform.temperature)

    def student_nll(self, targets: Tensor) -> Tensor:
        return -self._student_stats(targets, "logp", 1.0)

    def _teacher_source(self) -> HeadSource | LogitsSource:
        if isinstance(self.teacher, ModelLogits):
            logits = self._rows(self.teacher.logits).detach()
            rows = torch.arange(logits.shape[0], device=logits.device)
            return LogitsSource(logits, rows, self.teacher_transform)
        head = self.teacher.head.detached()
        hidden = self._rows(self.teacher.hidden).detach()
        return HeadSource(hidden, head.weight, head.bias, self.teacher_transform)

    @torch.no_grad()
    def teacher_top_k(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        n = self._rows(self.student.hidden).shape[0]
        plan = pair_plan(n, self.vocab, self.dtype.itemsize, self.settings.memory_budget)
        values, ids, lse = top_k_with_lse(self._teacher_source(), n, k, plan)
        return (
            values.reshape(*self.leading, k),
            ids.reshape(*self.leading, k),
            lse.reshape(self.leading),
        )

    @torch.no_grad()
    def teacher_logits_at(self, ids: Tensor) -> Tensor:
        k = ids.shape[-1]
        if isinstance(self.teacher, ModelLogits):
            raw = self.teacher.logits.to(self.dtype).gather(-1, ids)
            return self.teacher_transform.apply(raw)
        head = self.teacher.head
        raw = head_logits_at(
            self._rows(self.teacher.hidden), head.weight, head.bias, ids.reshape(-1, k)
        )
        return self.teacher_transform.apply(raw).reshape(*self.leading, k)
