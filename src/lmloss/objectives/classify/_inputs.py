"""Input checks shared by the classification objectives (clear errors, never broadcasts)."""

from __future__ import annotations

import torch

from lmloss import _checks

Tensor = torch.Tensor


def class_logits(logits: object, name: str = "logits") -> Tensor:
    """``[N, C]`` floating logits with N ≥ 1 and C ≥ 2."""
    logits = _checks.require_floating(name, logits)
    _checks.require_ndim(name, logits, (2,))
    _checks.require_nonempty(name, logits)
    if logits.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes, got shape {tuple(logits.shape)}")
    return logits


def class_labels(labels: object, logits: Tensor) -> Tensor:
    """``[N]`` integer class indices in ``[0, C)``."""
    labels = _checks.require_integer("labels", labels)
    _checks.require_shape("labels", labels, logits.shape[:1], "logits.shape[0]")
    classes = logits.shape[1]
    bad = (labels < 0) | (labels >= classes)
    if bool(bad.any()):
        raise ValueError(f"labels must lie in [0, {classes}), found {int(labels[bad][0])}")
    return labels


def binary_labels(labels: object, like: Tensor, name: str = "labels") -> Tensor:
    """0/1 (or bool) labels shaped like ``like``, returned as bool."""
    labels = _checks.require_tensor(name, labels)
    _checks.require_shape(name, labels, like.shape, "the scores")
    if labels.dtype != torch.bool and bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError(
            f"{name} must be binary (0/1 or bool), "
            f"found {labels[(labels != 0) & (labels != 1)][0].item()}"
        )
    return labels.bool()


def scores(values: object, name: str = "logits", ndims: tuple[int, ...] = (1, 2)) -> Tensor:
    """Non-empty floating scores of the given dimensions."""
    values = _checks.require_floating(name, values)
    _checks.require_ndim(name, values, ndims)
    _checks.require_nonempty(name, values)
    return values


def positives(labels: object, logits: Tensor) -> Tensor:
    """``[N, C]`` bool positives from class indices ``[N]`` or multi-hot ``[N, C]`` labels."""
    labels = _checks.require_tensor("labels", labels)
    if labels.dim() == 1:
        index = class_labels(labels, logits)
        return torch.nn.functional.one_hot(index, logits.shape[1]).bool()
    return binary_labels(labels, logits)


def binary_scores(logits: object) -> Tensor:
    """Binary-classification scores: ``[N]`` or ``[N, 1]`` → ``[N]``."""
    values = scores(logits, ndims=(1, 2))
    if values.dim() == 2:
        if values.shape[1] != 1:
            raise ValueError(
                f"logits for a binary loss must be [N] or [N, 1], got {tuple(values.shape)}"
            )
        values = values[:, 0]
    return values
