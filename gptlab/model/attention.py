"""Causal multi-head self-attention over `F.scaled_dot_product_attention`, aware of the KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptlab import native
from gptlab.config import ModelConfig
from gptlab.model.cache import LayerCache
from gptlab.model.causal_attention import causal_attention, kernel_applies
from gptlab.model.linear import Linear
from gptlab.model.positions import PositionScheme, Prepared


def causal_mask(q_pos: Tensor, k_pos: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """A key is visible to a query when it is not later; ALiBi-style biases are added where visible."""
    visible = k_pos[None, :] <= q_pos[:, None]  # (Tq, Tk)
    if bias is None:
        return visible
    return bias.to(dtype).masked_fill(~visible, float("-inf"))


def manual_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout: float, training: bool) -> Tensor:
    """softmax(q·kᵀ/√d + mask)·v with the (T, T) score matrix materialised: what the fused kernel avoids."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask
    weights = F.dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype), dropout, training)
    return weights @ v


def one_token_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
    """softmax(q·kᵀ/√d)·v for a single query over the cache slots `visible` (bool) shows. gptlab's C++ kernel
    reads only those slots, where the library kernel reads all and masks after: for 124M with a 256-slot static
    cache, 1.6 ms of a ~20 ms token. Taken for float32 on the CPU without autograd (it has no backward)."""
    if (q.device.type == "cpu" and q.dtype == k.dtype == torch.float32 and k.is_contiguous() and v.is_contiguous()
            and not torch.is_grad_enabled() and native.load() is not None):
        return native.kernel("decode_attention")(q, k, v, visible)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-5) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-5) if cfg.qk_norm else None
        self.manual = cfg.attention == "manual"

    def forward(self, x: Tensor, prepared: Prepared, scheme: PositionScheme,
                cache: LayerCache | None = None) -> Tensor:
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim)
        p = self.dropout if self.training else 0.0
        if (cache is None and not self.manual and self.q_norm is None and prepared.rotation is None
                and prepared.bias is None and kernel_applies(qkv, p)):  # q, k, v as projected: gptlab's kernel
            return self.resid_dropout(self.c_proj(causal_attention(qkv).view(B, T, C)))
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = scheme.apply_rotation(q, k, prepared)
        positions, k_pos, bias = prepared.q_pos, prepared.k_pos, prepared.bias
        if cache is not None:
            k, v = cache.append(k, v, positions)
        if self.manual:
            y = manual_attention(q, k, v, causal_mask(positions, k_pos, bias, q.dtype), p, self.training)
        elif bias is None and k.shape[2] == T:  # a whole sequence: the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif bias is None and T == 1 and not (cache is not None and cache.masked):  # sees every cached key
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        elif bias is None and T == 1:  # one token over a fixed-size cache: only the slots written so far
            y = one_token_attention(q, k, v, causal_mask(positions, k_pos, None, q.dtype))
        else:
            mask = causal_mask(positions, k_pos, bias, q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


@torch.no_grad()
def max_attention_logit(attn: CausalSelfAttention, x: Tensor, prepared: Prepared, scheme: PositionScheme) -> float:
    """The largest attention score (q·k/√d + bias, visible pairs only) that `attn` computes for input `x`
    without a cache: the same arithmetic as its forward, written out, for probes that watch logit growth."""
    B, T, _ = x.shape
    q, k, _ = attn.c_attn(x).view(B, T, 3, attn.n_head, attn.head_dim).permute(2, 0, 3, 1, 4)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = scheme.apply_rotation(q, k, prepared)
    scores = (q @ k.transpose(-1, -2)) * attn.head_dim ** -0.5
    if prepared.bias is not None:
        scores = scores + prepared.bias
    visible = prepared.k_pos[None, :] <= prepared.q_pos[:, None]
    return float(scores.masked_fill(~visible, float("-inf")).max())
