"""The machine's own ceilings, measured in the same run as the benchmark they bound."""

from __future__ import annotations

import math
import time

import torch


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously; a CPU has nothing queued)."""
    if device == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Fastest of `repeats` timed calls: noise on a shared machine only ever adds time."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 10, device: str = "cpu") -> float:
    """FLOP/s of an n×n matmul: the ceiling MFU is measured against."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / best_time(lambda: a @ b, repeats, device=device)


def read_bandwidth(megabytes: int = 1024, repeats: int = 5, device: str = "cpu") -> float:
    """Bytes/s of reading a buffer larger than the last-level cache once: the ceiling of batch-1 decoding, which
    reads every weight once per token. The faster of two read-only kernels counts (a sum, and a matrix-vector
    product, decoding's own kernel), so the bound is never set low by a slow kernel."""
    x = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    matrix, vector = x.view(-1, 1024), torch.ones(1024, device=device)
    seconds = min(best_time(lambda: x.sum(), repeats, device=device),
                  best_time(lambda: torch.mv(matrix, vector), repeats, device=device))
    return x.numel() * 4 / seconds
