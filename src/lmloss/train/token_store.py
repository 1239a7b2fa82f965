"""Per-example token tensors on disk: precomputed reference log-probs, teacher top-k.

One safetensors file holds, per named segment (``chosen``, ``rejected``, ``completion``),
every example's values concatenated along dim 0 with an offsets table, and the token ids
they belong to, so a file made for another tokenization or data file is detected instead
of being silently misaligned. Read with ``safetensors`` (no pickle).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmloss.train.data import HOST


class TokenStore:
    """``values(segment, i)``: the ``[n_i, ...]`` tensor of example ``i``'s segment."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        self.tensors, self.source = tensors, source

    @classmethod
    def write(
        cls, path: Path, segments: dict[str, list[tuple[list[int], torch.Tensor]]], kind: str
    ) -> None:
        """``segments[name][i] = (token ids, values [n_i, ...])``; written atomically."""
        tensors = {}
        for name, rows in segments.items():
            lengths = torch.tensor([len(ids) for ids, _ in rows], dtype=torch.long, device=HOST)
            tensors[f"{name}.offsets"] = torch.cat(
                [torch.zeros(1, dtype=torch.long, device=HOST), lengths.cumsum(0)]
            )
            tensors[f"{name}.ids"] = torch.tensor(
                [t for ids, _ in rows for t in ids], dtype=torch.long, device=HOST
            )
            values = torch.cat([v.detach().to(HOST) for _, v in rows])  # a file: host memory
            tensors[f"{name}.values"] = values.float() if values.is_floating_point() else values
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"kind": kind})
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path, kind: str) -> TokenStore:
        if not path.is_file():
            raise ValueError(f"{str(path)!r} does not exist: run `lmloss precompute` first")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            found = (f.metadata() or {}).get("kind")
        if found != kind:
            raise ValueError(f"{str(path)!r} holds {found!r} values, expected {kind!r}")
        return cls(load_file(str(path)), str(path))

    def values(self, segment: str, index: int, ids: list[int]) -> torch.Tensor:
        """Example ``index``'s values of ``segment``; its token ids must equal ``ids``."""
        offsets = self.tensors.get(f"{segment}.offsets")
        if offsets is None or index + 1 >= len(offsets):
            raise ValueError(f"{self.source} has no {segment!r} values for example {index}")
        start, end = int(offsets[index]), int(offsets[index + 1])
        stored = self.tensors[f"{segment}.ids"][start:end].tolist()
        if stored != list(ids):
            raise ValueError(
                f"{self.source} was computed for other tokens (example {index}, {segment}): "
                "rerun `lmloss precompute` with this recipe"
            )
        return self.tensors[f"{segment}.values"][start:end]
