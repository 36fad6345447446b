"""Data-parallel training over processes started by `torchrun` (PyTorch's distributed engine).

A run's settings mean the same thing whatever the number of processes: `train.batch_size` is the global
micro-batch, every process draws the same global batch from the same sampler state and keeps its own slice of
rows, and DistributedDataParallel averages the gradients. So N processes follow the single-process run (up to
the order of floating-point sums), a checkpoint written by one resumes under any other count, and only rank 0
writes checkpoints and metrics.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gptlab.errors import GptlabError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


class Distributed:
    """This process's place in the group; a group of one when not launched by torchrun."""

    def __init__(self, device: str = "cpu"):
        self.world, self.rank, self.device = 1, 0, device
        if not launched_by_torchrun():
            return
        if not dist.is_initialized():
            backend = "nccl" if device == "cuda" else "gloo"
            if device == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
        self.world, self.rank = dist.get_world_size(), dist.get_rank()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise GptlabError(f"train.batch_size={batch_size} does not split over {self.world} processes; "
                              f"use a multiple of {self.world} (it is the global batch, shared by the processes)")

    def shard(self, x: Tensor) -> Tensor:
        """This process's rows of a global batch."""
        if self.world == 1:
            return x
        rows = x.shape[0] // self.world
        return x[self.rank * rows: (self.rank + 1) * rows]

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # buffers (position tables) are built identically everywhere: no need to re-send them every step
        return DistributedDataParallel(model, forward_sync_buffers=False)

    def no_sync(self, model: nn.Module, last: bool):
        """Skip the gradient all-reduce on every micro-batch but the last of an accumulated step."""
        return model.no_sync() if self.world > 1 and not last else nullcontext()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the processes (the same numbers come back on every rank)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def mean(self, value: float) -> float:
        return self.sum(value)[0] / self.world

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def set_threads(n: int = 0) -> int:
    """One intra-op thread per core by default (shared out among the processes of a torchrun launch): more threads
    than cores makes small models many times slower."""
    n = n or max(1, len(os.sched_getaffinity(0)) // local_world_size())
    torch.set_num_threads(n)
    return n
