"""A whole sequence's causal attention on gptlab's C++ kernel, read straight from the fused q/k/v projection.

For training on the CPU, torch's fused (flash) attention costs 17–19 ms per layer, forward and backward, at GPT-2
124M's batch 4 × 256 on 2 Xeon cores, plus copies of q, k and v into a head-major layout and of the output and
the gradients back. The kernel (`gptlab.native`, csrc/causal_attention.cpp) reads the (B, T, 3, H, D) projection
where it lies, skips the blocks of keys no query of a block can see, and writes the output in the (B, T, C)
layout the output projection reads: ~11 ms per layer there. Same function to float32 rounding (tested against
float64). Taken for float32 CPU tensors outside torch.compile, without dropout, where queries and keys go into
attention as projected (no RoPE, no QK-norm, no bias); everything else takes torch's kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gptlab import native


def keeps_weights(qkv: Tensor) -> bool:
    """Whether the forward keeps the attention weights for the backward: when they take no more memory than `qkv`
    itself (T ≤ 6·D; GPT-2's T = 256, D = 64: two thirds of it). The backward then skips recomputing the scores and
    their exponentials. This costs no more than torch's path, which keeps head-major copies of q, k and v."""
    B, T, _, H, _ = qkv.shape
    return B * H * native.load().kept_weights_per_pair(T) <= qkv.numel()


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: Tensor) -> Tensor:
        y, lse, weights = native.load().causal_attention(qkv, ctx.needs_input_grad[0] and keeps_weights(qkv))
        ctx.save_for_backward(qkv, y, lse, weights)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        qkv, y, lse, weights = ctx.saved_tensors
        return native.load().causal_attention_backward(grad.contiguous(), qkv, y, lse, weights)


def kernel_applies(qkv: Tensor, dropout: float) -> bool:
    """Whether `causal_attention` runs gptlab's kernel for this projection (else the caller takes torch's)."""
    return dropout == 0.0 and native.ready_for(qkv) and native.load().has_blas


def causal_attention(qkv: Tensor) -> Tensor:
    """softmax(q·kᵀ/√d, causal)·v for q, k, v in `qkv` (B, T, 3, H, D); the output is (B, T, H, D)."""
    return _CausalAttention.apply(qkv)
