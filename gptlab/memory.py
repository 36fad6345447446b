"""Memory estimates, checked before allocating, so a request that cannot fit is a clear error instead of a
machine swapping to a halt or a traceback from the allocator.

The estimates are lower bounds of what the work needs (weights, optimizer moments, the largest activations):
a refusal is certain to be right, and anything that passes may still be tight.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError

FLOAT_BYTES = 4


def available_bytes() -> int:
    """Memory this process can still get: MemAvailable, capped by a cgroup limit when there is one."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        import os

        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62  # unknown: do not refuse
    try:
        limit, used = (Path("/sys/fs/cgroup", f).read_text().strip() for f in ("memory.max", "memory.current"))
        if limit != "max":
            avail = min(avail, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return avail


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def require_memory(needed: float, what: str, fix: str) -> None:
    avail = available_bytes()
    if needed > avail:
        raise GptlabError(f"{what} needs at least {gib(needed)} of memory but {gib(avail)} is available; {fix}")


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of a GPT built from `cfg` (computed from the shape, nothing allocated)."""
    d, v, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    per_block = 12 * d * d + (13 * d if cfg.bias else 4 * d)
    table = cfg.block_size * d if cfg.positions == "learned" else 0
    head = 0 if cfg.tie_embeddings else v * d
    return v * d + table + L * per_block + 2 * d + head


def model_bytes(cfg: ModelConfig) -> int:
    return parameter_count(cfg) * FLOAT_BYTES


def training_bytes(cfg: ModelConfig, micro_batch: int, trainable_share: float = 1.0) -> int:
    """Weights + gradients and AdamW's two moments of the trained share + the activations of one micro-batch
    (kept for backward: about 16 values per width per token per block, and three copies of the logits)."""
    params = parameter_count(cfg)
    tokens = micro_batch * cfg.block_size
    activations = tokens * (cfg.n_layer * 16 * cfg.n_embd + 3 * cfg.vocab_size)
    return FLOAT_BYTES * (params + int(3 * params * trainable_share) + activations)


def kv_cache_bytes(cfg: ModelConfig, positions: int, batch: int = 1) -> int:
    return 2 * cfg.n_layer * batch * positions * cfg.n_embd * FLOAT_BYTES
