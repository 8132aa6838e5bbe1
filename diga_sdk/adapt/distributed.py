"""DDP under torchrun: gloo on CPU, NCCL on GPU. A world of one is the plain single-process case.

Each rank takes a contiguous slice of the global batch, so the global batch (and, with gathered
centroid statistics, every update) is the same whatever the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import DigaError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device: str = "cpu") -> World:
    """Join the torchrun process group if WORLD_SIZE > 1 (idempotent); else the world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":  # one GPU per process: "cuda" then means this rank's device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size())


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def rank_slice(x: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous share of a global batch."""
    if world.size == 1:
        return x
    if x.shape[0] % world.size:
        raise DigaError(f"batch size {x.shape[0]} is not divisible by the {world.size} processes; "
                        "choose a batch size that is a multiple of --nproc_per_node")
    per = x.shape[0] // world.size
    return x[world.rank * per:(world.rank + 1) * per]


def all_gather_cat(x: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 in rank order (the global batch order)."""
    if world.size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world.size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def wrap_ddp(model: nn.Module, world: World, device: str) -> nn.Module:
    if world.size == 1:
        return model
    ids = [torch.cuda.current_device()] if device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
