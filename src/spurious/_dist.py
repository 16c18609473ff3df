"""torch.distributed plumbing shared by the stages that shard work over ranks (``torchrun``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_sum", "barrier", "dist_info", "init_distributed", "on_main_rank", "resolve_device"]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of the current process (``world_size == 1`` when not launched by torchrun)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read rank and world size from an initialised process group or the torchrun environment."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that torchrun describes (gloo on CPU, nccl on CUDA); no-op alone."""
    info = dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL collectives run on the current device
            dist.init_process_group(backend="nccl")
        else:
            dist.init_process_group(backend="gloo")
    return dist_info()


def barrier() -> None:
    """Wait for every rank; a no-op outside a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> this rank's CUDA device when there is one, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info().local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    return dev


def all_sum(value: int) -> int:
    """Sum an integer over all ranks (identity outside a process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def on_main_rank(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only, then synchronise; a failure on rank 0 fails every rank.

    Without this, the other ranks would wait at the next collective until the process-group
    timeout when rank 0 rejects its input (e.g. an incompatible workspace).
    """
    result: T | None = None
    error: BaseException | None = None
    if dist_info().is_main:
        try:
            result = fn()
        except Exception as err:  # re-raised below, after telling the other ranks
            error = err
    if all_sum(int(error is not None)):
        if error is not None:
            raise error
        raise RuntimeError("rank 0 failed while preparing the shared output (its error says why)")
    return result
