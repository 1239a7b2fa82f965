"""Data parallelism on ``torch.distributed``: the process group, rank shards, global sums.

``torchrun --nproc_per_node=N -m lmloss train recipe.toml`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :meth:`World.from_env` joins that group
with ``nccl`` for CUDA tensors (each rank on its ``LOCAL_RANK``-th GPU, set by the
trainer first) and ``gloo`` for CPU tensors. Without those variables the run is a world
of one and nothing here talks to anyone.

The recipe means the same thing at any world size: ``train.batch_size`` is the global
micro-batch; every rank draws the same seeded order and keeps its contiguous slice of
``batch_size / world_size`` examples. Gradients are summed over ranks once per optimizer
step (each rank's loss is already divided by the *global* normalizer, so the sum is the
gradient of the whole global batch).

* On a GPU the backbone is wrapped in ``DistributedDataParallel``
  (:func:`wrap_backbone`) so that its buckets are all-reduced while the backward is still
  running; its reducer sums instead of averaging (:func:`_sum_hook`). The fused engine
  reads the LM head outside any ``forward``, so an untied trainable head (and anything
  else outside the backbone) is summed after the backward by :meth:`World.sum_gradients`.
* On the CPU the gradients are summed explicitly after the backward, one flat buffer per
  dtype (gloo gains little from overlap on a few cores).
* ``train.parallel = "fsdp2"`` shards the transformer blocks with ``fully_shard`` instead
  (:meth:`World.shard_blocks`).

See docs/distributed.md for what is global per objective.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT = 300.0  # seconds


def _init_group(timeout: float) -> None:
    # nccl for the CUDA tensors of a GPU run; host scalars (counts, flags) stay on gloo
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))


@dataclass(frozen=True)
class World:
    """This process's place in the data-parallel group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> World:
        """Join the group torchrun describes in the environment (once per process): nccl
        carries CUDA tensors where there is CUDA, gloo CPU tensors (the scalar counts)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            _init_group(DEFAULT_TIMEOUT)
        return cls(rank=dist.get_rank(), size=dist.get_world_size())

    @classmethod
    def join(cls, timeout: float) -> World:
        """:meth:`from_env`, with collectives that fail after ``timeout`` seconds
        (``train.dist_timeout``) when a rank stalls, instead of gloo's 30 minutes."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            _init_group(timeout)
        return cls.from_env()

    # ---- sharding

    def per_rank(self, batch_size: int) -> int:
        """Examples per rank of a global micro-batch; the world size must divide it."""
        if batch_size % self.size:
            raise ValueError(
                f"train.batch_size = {batch_size} (the global micro-batch) is not divisible by "
                f"the world size {self.size}: every rank needs the same number of examples"
            )
        return batch_size // self.size

    def shard(self, batch_size: int) -> slice:
        """This rank's contiguous slice of a global micro-batch of ``batch_size``."""
        share = self.per_rank(batch_size)
        return slice(self.rank * share, (self.rank + 1) * share)

    # ---- collectives (no-ops in a world of one)

    def sum(self, value: float | int) -> float | int:
        """``value`` summed over ranks (an int stays an int: counts are exact)."""
        if not self.active:
            return value
        exact = isinstance(value, int)
        dtype = torch.int64 if exact else torch.float64
        tensor = torch.tensor([value], dtype=dtype, device="cpu")  # a host number: gloo
        dist.all_reduce(tensor)
        return int(tensor.item()) if exact else float(tensor.item())

    def sum_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over ranks (a key a rank lacks counts as 0 there)."""
        if not self.active:
            return values
        every: list[list[str]] = [[] for _ in range(self.size)]
        dist.all_gather_object(every, sorted(values))
        keys = sorted(set().union(*every))
        tensor = torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64, device="cpu")
        dist.all_reduce(tensor)
        return dict(zip(keys, tensor.tolist()))

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` ``[n, ...]`` of every rank, concatenated in rank order (same ``n``)."""
        if not self.active:
            return rows
        local = rows.detach().contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local)
        return torch.cat(parts)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum ``.grad`` of replicated parameters over ranks in place, one flat buffer per
        dtype (a missing grad is 0)."""
        if not self.active:
            return
        params = [p for p in params if not _is_sharded(p)]  # FSDP2 reduced those already
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast_parameters(self, params: list[torch.Tensor]) -> None:
        """Rank 0's values everywhere: the replicas start (and resume) identical."""
        if not self.active:
            return
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    # ---- FSDP2 (train.parallel = "fsdp2")

    def shard_blocks(self, blocks: list[torch.nn.Module]) -> None:
        """``fully_shard`` every transformer block: each rank keeps 1/N of their parameters,
        gradients and AdamW state. The embeddings, final norm and LM head stay replicated
        (the fused engine reads the head weight outside any ``forward``, where FSDP would
        not gather it); their gradients are summed by :meth:`sum_gradients`."""
        if not self.active:
            return
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        device = next(blocks[0].parameters()).device
        mesh = init_device_mesh(device.type, (self.size,))
        for block in blocks:
            fully_shard(block, mesh=mesh)
            block.set_gradient_divide_factor(1.0)  # a sum: losses carry the global normalizer
            block.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM

    def clip_grad_norm(self, params: list[torch.nn.Parameter], limit: float) -> torch.Tensor:
        """The global gradient norm of replicated and sharded parameters alike; gradients
        are scaled down to ``limit`` when above it (``torch.nn.utils.clip_grad_norm_`` does
        not mix plain and sharded tensors)."""
        grads = [p.grad for p in params if p.grad is not None]
        plain = [g for g in grads if not _is_sharded(g)]
        sharded = [g.to_local() for g in grads if _is_sharded(g)]
        zero = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
        square = sum((g.double().pow(2).sum() for g in plain), zero)
        shards = sum((g.double().pow(2).sum() for g in sharded), zero)
        if self.active:
            dist.all_reduce(shards)
        norm = (square + shards).sqrt()
        if norm > limit:
            scale = limit / (float(norm) + 1e-6)
            for g in grads:
                g.mul_(scale)
        return norm


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sharded tensors gathered whole (a collective: every rank calls it)."""
    return {k: v.full_tensor() if _is_sharded(v) else v for k, v in tensors.items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict with sharded state gathered whole (every rank calls it)."""
    state = optimizer.state_dict()  # its per-parameter dicts are the live ones: copy
    state["state"] = {
        index: {k: v.full_tensor() if _is_sharded(v) else v for k, v in values.items()}
        for index, values in state["state"].items()
    }
    return state


def copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """``param.copy_(value)`` where ``param`` may be sharded and ``value`` is whole."""
    if _is_sharded(param):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
    param.copy_(value)


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of whole tensors: shard the state of sharded parameters."""
    from torch.distributed.tensor import distribute_tensor

    for group in optimizer.param_groups:
        for param in group["params"]:
            if not _is_sharded(param):
                continue
            for key, value in optimizer.state.get(param, {}).items():
                whole = isinstance(value, torch.Tensor) and not _is_sharded(value)
                if whole and value.shape == param.shape:
                    optimizer.state[param][key] = distribute_tensor(
                        value, param.device_mesh, param.placements
                    )


# ---- DistributedDataParallel on GPUs (train.parallel = "ddp")


class _Replicated(DistributedDataParallel):
    """``DistributedDataParallel`` that still answers its module's attributes: the causal
    LM reaches into its backbone (``embed_tokens``, ``layers``, ``config``) through the
    attribute the wrapper now holds."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet, inside DistributedDataParallel.__init__
                raise
            return getattr(self.module, name)


def _sum_hook(_state, bucket):
    """All-reduce a ``dist.GradBucket`` as a sum; returns a ``Future[Tensor]``. DDP's default
    hook divides by the world size; here every rank's loss already carries the global
    normalizer. (Unannotated: DDP compares annotations as objects, and this module's are
    strings.)"""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda done: done.value()[0])


def wrap_backbone(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """Replace the causal LM's backbone by a ``DistributedDataParallel`` of it, whose
    gradient buckets are summed over ranks while the backward still runs. Returns the
    wrapper, or None when no backbone parameter trains (nothing to overlap)."""
    prefix = model.base_model_prefix
    backbone = getattr(model, prefix)
    if not any(p.requires_grad for p in backbone.parameters()):
        return None
    wrapped = _Replicated(
        backbone,
        device_ids=None if device.type == "cpu" else [device],
        broadcast_buffers=False,  # rank 0 evaluates alone: no collective in a forward
        gradient_as_bucket_view=True,
    )
    wrapped.register_comm_hook(None, _sum_hook)
    setattr(model, prefix, wrapped)
    return wrapped


@contextmanager
def unwrapped(model: torch.nn.Module, wrapped: torch.nn.Module | None):
    """``model`` with its plain backbone inside (state dicts and saved files keep the
    Hugging Face names)."""
    if wrapped is None:
        yield model
        return
    prefix = model.base_model_prefix
    setattr(model, prefix, wrapped.module)
    try:
        yield model
    finally:
        setattr(model, prefix, wrapped)
