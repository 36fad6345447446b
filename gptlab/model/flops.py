"""Parameter counts and training FLOPs per token (the convention MFU figures use)."""

from __future__ import annotations

from torch import nn

from gptlab.model.gpt import GPT


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Each tensor once, so a tied embedding/head matrix is not counted twice."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def embedding_parameters(model: GPT) -> int:
    """Parameters of the token table, the position table (if learned) and an untied head."""
    n = model.wte.weight.numel()
    if not model.cfg.tie_embeddings:
        n += model.lm_head.weight.numel()
    wpe = getattr(model.positions, "wpe", None)
    return n + (wpe.weight.numel() if wpe is not None else 0)


def flops_per_token(model: GPT, seq_len: int | None = None) -> float:
    """6·N + 12·n_layer·d·T per trained token, N = parameters minus the position table (PaLM's convention)."""
    cfg = model.cfg
    wpe = getattr(model.positions, "wpe", None)
    n = count_parameters(model) - (wpe.weight.numel() if wpe is not None else 0)
    t = seq_len or cfg.block_size
    return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * t
