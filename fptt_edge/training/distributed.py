"""Data-parallel training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

Launched with ``torchrun --nproc-per-node N``: nccl on GPUs, gloo on CPU. Each rank takes
``global_batch[rank::world]``; DDP averages the gradients, so parameters - and therefore
the FPTT traces, which are deterministic functions of them - stay identical on every rank.
:meth:`DistContext.divergence` measures that at each epoch end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but CUDA is not available")
        if world <= 1:
            return cls(0, 1, torch.device(device))
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda":
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        return cls(rank, world, dev)

    def wrap(self, model: torch.nn.Module):
        """The module the trainer calls: DDP when distributed, the model itself otherwise."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[self.rank :: self.world]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @torch.no_grad()
    def divergence(self, tensors: list[torch.Tensor]) -> float:
        """Largest |difference| of ``tensors`` between any two ranks (0.0 when not distributed)."""
        if not self.enabled:
            return 0.0
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        hi, lo = flat.clone(), flat.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        return float((hi - lo).max())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
