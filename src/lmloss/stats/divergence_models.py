"""A student and a teacher seen through the per-token quantities distillation objectives need.

Two implementations with one interface, so every objective's inputs are assembled once:

* :class:`LogitsModels` — the plain path, from full ``[..., V]`` logits (materializing);
* :class:`HeadModels` — the fused path, from hidden states and head weights (never
  ``[N, V]``): pair terms from the two-model engine, the student's log-sum-exp and label
  log-probabilities from :func:`lmloss.token_stats`, a few logits per row by gathering
  weight rows, the teacher's top-k by a tiled pass.

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
    check_student_head,
    check_teacher,
    head_transforms,
    pair_terms_from_logits,
    pairwise_pair_terms,
    token_pair_loss,
    token_pair_terms,
    vocab_mismatch,
)
from lmloss.stats.divergence_gather import head_logits_at, top_k_with_lse
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
        student: tuple[object, object, object],
        teacher_head: tuple[object, object, object],
        teacher_logits: object,
        mask: object,
        temperature: float,
        teacher_requires_grad: bool,
        memory_budget: int | None,
        softcaps: tuple[float | None, float | None] = (None, None),
        logit_scales: tuple[float, float] = (1.0, 1.0),
    ):
        """``softcaps`` and ``logit_scales``: (student, teacher) head transforms."""
        hidden, weight, leading, vocab = check_student_head(*student)
        self.student_hidden, self.student_weight, self.student_bias = hidden, weight, student[2]
        self.leading, self.vocab = leading, vocab
        t_hidden, t_weight, t_logits = check_teacher(
            leading, vocab, *teacher_head, teacher_logits, required=False
        )
        self.teacher_hidden, self.teacher_weight, self.teacher_logits = t_hidden, t_weight, t_logits
        self.teacher_bias = teacher_head[2]
        self.mask = check_mask(mask, leading)
        self.transform, self.teacher_transform = head_transforms(
            temperature, softcaps[0], logit_scales[0], softcaps[1], logit_scales[1]
        )
        self.teacher_requires_grad = teacher_requires_grad
        self.memory_budget = memory_budget
        self.dtype = compute_dtype(hidden.dtype)

    @property
    def has_teacher(self) -> bool:
        return self.teacher_weight is not None or self.teacher_logits is not None

    def _rows(self, x: Tensor) -> Tensor:
        return x.reshape(-1, x.shape[-1])

    def _engine_options(self, hyper: Mapping[str, float]) -> dict:
        """Both heads, the mask and the transforms, as :func:`token_pair_terms` takes them."""
        return {
            "student_bias": self.student_bias,
            "teacher_hidden": self.teacher_hidden,
            "teacher_weight": self.teacher_weight,
            "teacher_bias": self.teacher_bias,
            "teacher_logits": self.teacher_logits,
            "mask": self.mask,
            "temperature": self.transform.temperature,
            "softcap": self.transform.softcap,
            "logit_scale": self.transform.logit_scale,
            "teacher_softcap": self.teacher_transform.softcap,
            "teacher_logit_scale": self.teacher_transform.logit_scale,
            "teacher_requires_grad": self.teacher_requires_grad,
            "hyper": hyper,
            "memory_budget": self.memory_budget,
        }

    def pair_terms(self, names: tuple[str, ...], hyper: Mapping[str, float]) -> dict[str, Tensor]:
        options = self._engine_options(hyper)
        return token_pair_terms(self.student_hidden, self.student_weight, names, **options)

    def pair_loss(
        self,
        names: tuple[str, ...],
        hyper: Mapping[str, float],
        block_loss: BlockLoss,
        extra: Mapping[str, Tensor],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """A sum over blocks of trained tokens (see :func:`token_pair_loss`), in one pass."""
        return token_pair_loss(
            self.student_hidden,
            self.student_weight,
            names,
            block_loss,
            extra=extra,
            **self._engine_options(hyper),
        )

    def pairwise_terms(self, name: str, hyper: Mapping[str, float]) -> Tensor:
        raise ValueError(
            "a batch-level ground cost compares every row with every other over the whole "
            "vocabulary; it is offered on the plain path only: use lmloss.divergence_loss with "
            "[B, C] logits"
        )

    def student_logits_at(self, ids: Tensor) -> Tensor:
        k = ids.shape[-1]
        raw = head_logits_at(
            self._rows(self.student_hidden),
            self.student_weight,
            self.student_bias,
            ids.reshape(-1, k),
            self.memory_budget,
        )
        return self.transform.apply(raw).reshape(*self.leading, k)

    def _student_stats(self, targets: Tensor, want: str, temperature: float) -> Tensor:
        stats = token_stats(
            self.student_hidden,
            self.student_weight,
            _masked_targets(targets, self.mask),
            self.student_bias,
            ignore_index=IGNORE,
            temperature=temperature,
            softcap=self.transform.softcap,
            logit_scale=self.transform.logit_scale,
            want=(want,),
            memory_budget=self.memory_budget,
        )
        return stats[want]

    def student_lse(self) -> Tensor:
        any_target = self.student_hidden.new_zeros(self.leading, dtype=torch.long)
        return self._student_stats(any_target, "lse", self.transform.temperature)

    def student_nll(self, targets: Tensor) -> Tensor:
        return -self._student_stats(targets, "logp", 1.0)

    def _teacher_source(self) -> HeadSource | LogitsSource:
        if self.teacher_logits is not None:
            logits = self._rows(self.teacher_logits).detach()
            rows = torch.arange(logits.shape[0], device=logits.device)
            return LogitsSource(logits, rows, self.teacher_transform)
        return HeadSource(
            self._rows(self.teacher_hidden).detach(),
            self.teacher_weight.detach(),
            None if self.teacher_bias is None else self.teacher_bias.detach(),
            self.teacher_transform,
        )

    @torch.no_grad()
    def teacher_top_k(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        n = self._rows(self.student_hidden).shape[0]
        plan = pair_plan(n, self.vocab, self.dtype.itemsize, self.memory_budget)
        values, ids, lse = top_k_with_lse(self._teacher_source(), n, k, plan)
        return (
            values.reshape(*self.leading, k),
            ids.reshape(*self.leading, k),
            lse.reshape(self.leading),
        )

    @torch.no_grad()
    def teacher_logits_at(self, ids: Tensor) -> Tensor:
        k = ids.shape[-1]
        if self.teacher_logits is not None:
            raw = self.teacher_logits.to(self.dtype).gather(-1, ids)
            return self.teacher_transform.apply(raw)
        raw = head_logits_at(
            self._rows(self.teacher_hidden),
            self.teacher_weight,
            self.teacher_bias,
            ids.reshape(-1, k),
        )
        return self.teacher_transform.apply(raw).reshape(*self.leading, k)
