"""The training losses: next-token cross-entropy, and the z-loss that keeps the softmax normaliser near 1.

Kept apart from the training loop so that anything that needs a loss (QAT's gradient probe, lessons, benchmarks)
imports it without importing the loop.

The cross-entropy runs on gptlab's C++ kernel (`gptlab.native`, csrc/cross_entropy.cpp) for float32 CPU logits
outside torch.compile: one pass over the logits, where the library's log_softmax + nll_loss path writes the
log-probabilities, zero-fills a gradient as large as the logits and reads both again (GPT-2's 1,024 × 50,257
logits of a 124M step: ~2× faster). When the logits need a gradient, the forward pass writes it as well, while each
row is in cache, and the backward only scales it by the incoming gradient (nothing at all when that is 1, as in a
step without accumulation). Same value within float32 rounding; elsewhere the library's `F.cross_entropy`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptlab import native


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not ctx.needs_input_grad[0]:
            return native.load().cross_entropy(logits, targets)[0]
        loss, unit_grad = native.load().cross_entropy_with_grad(logits, targets)
        ctx.save_for_backward(unit_grad)  # the gradient for an incoming gradient of 1
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (unit_grad,) = ctx.saved_tensors
        # returned as it is for an incoming 1: nothing writes into a gradient autograd hands on, and a second
        # backward (retain_graph) gets the same tensor again
        return (unit_grad if grad.item() == 1.0 else unit_grad * grad), None


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    flat, flat_targets = logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1)
    if flat_targets.dtype == torch.int64 and native.ready_for(flat):
        return _CrossEntropy.apply(flat, flat_targets.contiguous())
    return F.cross_entropy(flat, flat_targets)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(logits)²): zero when the softmax normaliser is 1, growing as the logits drift."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
