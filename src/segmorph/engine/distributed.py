"""PyTorch's own distributed data-parallel, as launched by ``torchrun`` (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_as_main() -> bool:
    """Whether this process is torchrun's rank 0 (``RANK``) or was not started by torchrun; unlike
    :func:`is_main_process` it holds after the process group is gone (what a command prints once training ends)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def init_from_environment(device: torch.device) -> bool:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1); True when distributed."""
    if not launched_by_torchrun() or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """One GPU per process under torchrun (``LOCAL_RANK``); CPU stays CPU."""
    if device.type == "cuda":
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (keeps processes stepping in lock-step)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's value on every process."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
