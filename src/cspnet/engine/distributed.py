"""One process or many: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK, and then every rank joins a
process group (nccl on CUDA, gloo on CPU). Everything else in the engine asks :class:`DistInfo`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import OptionError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``auto``/None: the local CUDA device when there is one, else the CPU."""
    if name in (None, "", "auto"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError("{device} is not a device; use auto, cpu, cuda or cuda:N", device=name) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError("{device}: this machine has no CUDA device; use cpu", device=name)
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise OptionError("{device}: only cpu and cuda are supported", device=name)
    return device


def init_distributed(device_name: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun; a single-process DistInfo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def average_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (BatchNorm statistics) over the ranks.

    DDP keeps parameters identical, but each rank's last forward updates its own running
    statistics; averaging them before evaluation and checkpointing makes every rank hold the same
    model (and a better estimate than rank 0's alone).
    """
    if not info.enabled:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(info.world_size)


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo):
    """Rank 0's value of ``obj`` on every rank (a raised error on rank 0 reaches all ranks too)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
