"""The machine's own ceilings, measured in the same run as the benchmark they bound."""

from __future__ import annotations

import math
import time

import torch


def best_time(fn, repeats: int, warmup: int = 1) -> float:
    """Fastest of `repeats` timed calls: noise on a shared machine only ever adds time."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """FLOP/s of an n×n matmul: the ceiling MFU is measured against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, repeats)


def read_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes/s of reading a buffer larger than the last-level cache once: the ceiling of batch-1 decoding, which
    reads every weight once per token. The faster of two read-only kernels counts (a sum, and a matrix-vector
    product, decoding's own kernel), so the bound is never set low by a slow kernel."""
    x = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    matrix, vector = x.view(-1, 1024), torch.ones(1024)
    seconds = min(best_time(lambda: x.sum(), repeats), best_time(lambda: torch.mv(matrix, vector), repeats))
    return x.numel() * 4 / seconds
