"""Probes that watch a model from outside: forward hooks read what they need, the model keeps no probe state."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from gptlab.model.attention import CausalSelfAttention, max_attention_logit


@contextlib.contextmanager
def attention_logits(model: nn.Module) -> Iterator[list[float]]:
    """Within the block, every forward pass of an attention layer appends its largest attention score to the
    list yielded (one value per layer and pass; cache-free passes only)."""
    values: list[float] = []

    def hook(module: CausalSelfAttention, args: tuple, output) -> None:
        x, prepared, scheme = args[:3]
        values.append(max_attention_logit(module, x, prepared, scheme))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CausalSelfAttention)]
    try:
        yield values
    finally:
        for h in handles:
            h.remove()
