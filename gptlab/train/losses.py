"""The training losses: next-token cross-entropy, and the z-loss that keeps the softmax normaliser near 1.

Kept apart from the training loop so that anything that needs a loss (QAT's gradient probe, lessons, benchmarks)
imports it without importing the loop.

The cross-entropy runs on gptlab's C++ kernel (`gptlab.native`, csrc/cross_entropy.cpp) for float32 CPU logits
outside torch.compile: one pass over the logits forward and one backward, where the library's log_softmax +
nll_loss path writes the log-probabilities, zero-fills a gradient as large as the logits and reads both again
(GPT-2's 1,024 × 50,257 logits of a 124M step: ~2× faster). Same value within float32 rounding; elsewhere the
library's `F.cross_entropy`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptlab import native


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss, lse = native.load().cross_entropy(logits, targets)
        ctx.save_for_backward(logits, targets, lse)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        return native.load().cross_entropy_backward(grad, logits, targets, lse), None


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    flat, flat_targets = logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1)
    if flat_targets.dtype == torch.int64 and native.ready_for(flat):
        return _CrossEntropy.apply(flat, flat_targets.contiguous())
    return F.cross_entropy(flat, flat_targets)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(logits)²): zero when the softmax normaliser is 1, growing as the logits drift."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
