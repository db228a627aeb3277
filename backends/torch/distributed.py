"""spec.devices = N > 1: one process per device, started by torchrun (runner/launch.py), the model wrapped in
DistributedDataParallel (gloo on CPU, NCCL on GPU).

Every process takes its rows of the global batch and of the global noise; DDP all-reduces the gradient.
Evaluation splits a chunk's examples the same way and all-gathers the log-weights, so every contract
method still takes and returns the global arrays. With N = 1 every method here is the identity.
"""

from __future__ import annotations

import atexit
import os

import numpy as np
import torch
from torch import nn


def join_process_group(devices: int) -> tuple[int, int, int]:
    """(rank, local rank, processes on this host) of this torchrun process."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ:
        raise RuntimeError(f"torch on {devices} devices runs one process per device under torchrun: "
                           f"torchrun --nproc-per-node {devices} ... (compare.py --devices {devices} starts it so)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(dist.destroy_process_group)
    if dist.get_world_size() != devices:
        raise RuntimeError(f"spec asks for {devices} devices but torchrun started {dist.get_world_size()} processes")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", devices))


class Processes:
    """This process's place among the run's N processes, and what crosses between them."""

    def __init__(self, devices: int):
        self.world = devices
        self.rank, self.local_rank, self.local_world = join_process_group(devices) if devices > 1 else (0, 0, 1)

    def device(self) -> torch.device:
        device = pick_device(self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's all_gather_object runs on the current device
        return device

    def rows(self, n: int) -> slice:
        """This process's rows of n: equal contiguous parts (the last ones one shorter), in rank order."""
        sizes = [len(part) for part in np.array_split(np.arange(n), self.world)]
        start = sum(sizes[:self.rank])
        return slice(start, start + sizes[self.rank])

    def data_parallel(self, model: nn.Module, device: torch.device) -> nn.Module:
        """What the training forward runs through: DDP, whose backward all-reduces the gradient."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False)  # the only buffers are the fixed MADE masks, the same everywhere

    def loss_scale(self) -> int:
        """DDP averages the gradient over processes; scaling the loss by N makes it the global sum's."""
        return self.world

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a per-process value (each process holds an equal share of the batch)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        dist.all_reduce(value)
        return value / self.world

    def concatenate(self, part: np.ndarray, axis: int) -> np.ndarray:
        """Every process's part concatenated along axis in rank order; every process gets the whole."""
        if self.world == 1:
            return part
        import torch.distributed as dist

        parts: list = [None] * self.world
        dist.all_gather_object(parts, part)
        return np.concatenate(parts, axis=axis)


def pick_device(local_rank: int) -> torch.device:
    """The GPU of the process's local rank when CUDA is available, else the CPU (VAE_COMPARE_TORCH_DEVICE overrides)."""
    name = os.environ.get("VAE_COMPARE_TORCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name, local_rank) if name == "cuda" else torch.device(name)
