"""The reference model of KL-regularized objectives: a frozen copy, or the adapters turned off.

Either way the reference gives hidden states and its head, under ``torch.no_grad``; the
objectives' front doors turn them into log-probs with the fused engine. A third kind,
``precomputed``, replaces the model by log-probs read from a file (see
:mod:`lmloss.train.token_store`), handled by the modes.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from lmloss.hf import Head, head_of, hidden_states


class ModelReference:
    """Runs a frozen model (a copy of the policy at the start, or the policy without adapters)."""

    def __init__(self, model: torch.nn.Module, disable=None) -> None:
        self.model = model
        self._disable = disable  # context manager factory turning LoRA adapters off

    @classmethod
    def frozen_copy(cls, model: torch.nn.Module) -> ModelReference:
        clone = copy.deepcopy(model)
        clone.requires_grad_(False)
        clone.eval()
        return cls(clone)

    @classmethod
    def adapters_off(cls, peft_model: torch.nn.Module) -> ModelReference:
        return cls(peft_model.get_base_model(), disable=peft_model.disable_adapter)

    def active(self) -> contextlib.AbstractContextManager:
        """A context in which ``self.model`` runs as the reference (LoRA adapters off)."""
        return self._disable() if self._disable is not None else contextlib.nullcontext()

    @torch.no_grad()
    def mix_in(self, policy: torch.nn.Module, alpha: float) -> None:
        """A moving reference: ``ref ← α·policy + (1−α)·ref`` for every parameter (TR-DPO,
        Gorbatovski et al. 2024, arXiv:2404.09656; α = 1 copies the policy)."""
        if self._disable is not None:
            raise ValueError("the adapters-off reference is the policy's own base: it cannot move")
        mine, theirs = dict(self.model.named_parameters()), dict(policy.named_parameters())
        if mine.keys() != theirs.keys():
            raise ValueError("the reference and the policy have different parameters")
        for name, ref in mine.items():
            ref.lerp_(theirs[name].detach().to(ref.dtype), alpha)

    def hidden(
        self, ids: torch.Tensor, attention: torch.Tensor, **kwargs
    ) -> tuple[torch.Tensor, Head]:
        """Hidden states ``[B, T, H]`` and the head of the reference, without gradients."""
        with torch.no_grad(), self.active():
            hidden = hidden_states(self.model, ids, attention, **kwargs)
        head = head_of(self.model)
        detached = Head(
            weight=head.weight.detach(),
            bias=None if head.bias is None else head.bias.detach(),
            softcap=head.softcap,
            logit_scale=head.logit_scale,
        )
        return hidden, detached
