"""The training losses: next-token cross-entropy, and the z-loss that keeps the softmax normaliser near 1.

Kept apart from the training loop so that anything that needs a loss (QAT's gradient probe, lessons, benchmarks)
imports it without importing the loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(logits)²): zero when the softmax normaliser is 1, growing as the logits drift."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
