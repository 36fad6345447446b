"""Training-time speed and memory switches applied to a built model, and the memory they change.

Activation checkpointing keeps only each block's input for backward and recomputes the rest; `saved_bytes`
measures what autograd holds for backward after one forward pass (on CPU there is no allocator peak to read,
and this is the part of the peak that activation checkpointing, bf16 and fused attention change).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Recompute every transformer block's activations in backward instead of keeping them."""
    for block in model.h:
        if getattr(block, "checkpointed", False):
            continue
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block.checkpointed = True
    return model


def saved_bytes(fn) -> int:
    """Bytes of distinct tensors autograd saves for backward while `fn()` runs (its forward pass)."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = (t.untyped_storage().data_ptr(), t.device.type)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some views of sparse)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())
