"""GPT-2: token embedding → positional scheme → pre-LayerNorm blocks → final LayerNorm → LM head.

Module names follow Hugging Face's GPT-2 (`h.0.attn.c_attn`, `ln_f`, ...) so that converting checkpoints and
adapters is a renaming of prefixes, not a puzzle. Techniques such as LoRA and quantization are transforms
applied to a built model; this file knows nothing of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptlab.config import ModelConfig
from gptlab.model.attention import CausalSelfAttention
from gptlab.model.cache import KVCache, StaticKVCache
from gptlab.model.linear import Linear
from gptlab.model.mlp import MLP
from gptlab.model.positions import PositionScheme, Prepared, build_positions


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-5)
    return nn.LayerNorm(dim, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)
        self.post_norm = cfg.norm_placement == "post"

    def forward(self, x: Tensor, prepared: Prepared, scheme: PositionScheme, cache=None) -> Tensor:
        if self.post_norm:  # the original Transformer: normalise after each residual sum
            x = self.ln_1(x + self.attn(x, prepared, scheme, cache))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), prepared, scheme, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.positions = build_positions(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # post-LN blocks already end normalised: a final norm would be a second one in a row
        self.ln_f = make_norm(cfg, cfg.n_embd) if cfg.norm_placement == "pre" else nn.Identity()
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/√(2·n_layer), zero biases
        (model.init=plain: no residual scaling; model.zero_init_proj: residual projections start at zero, so each
        block starts as the identity)."""
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if self.cfg.init == "gpt2" else 0.02
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith("c_proj") else 0.02
                if name.endswith("c_proj") and self.cfg.zero_init_proj:
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def max_positions(self) -> int | None:
        return self.positions.max_positions()

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                  static: bool = False) -> KVCache | StaticKVCache:
        """A growing cache, or (static) one of fixed shape for a compiled decode step."""
        p = self.wte.weight
        kind = StaticKVCache if static else KVCache
        return kind(self.cfg.n_layer, batch, self.cfg.n_head, self.cfg.head_dim, max_len,
                    dtype=dtype or p.dtype, device=p.device)

    def embed_tokens(self, idx: Tensor) -> Tensor:
        """The token embeddings of `idx`. Tied to the head and trained eagerly, the lookup's gradient is sparse (the
        B·T rows looked up), and autograd adds it to the head's dense gradient: the dense lookup gradient is a
        zero-filled (vocab × width) tensor scattered into and then added whole (GPT-2 124M: 154 MB written and
        read once more a step, ~15 ms on 2 Xeon cores). The parameter's gradient, the two summed, is dense."""
        weight = self.wte.weight
        tied = type(self.wte) is nn.Embedding and getattr(self.lm_head, "weight", None) is weight
        if tied and torch.is_grad_enabled() and weight.requires_grad and not torch.compiler.is_compiling():
            return F.embedding(idx, weight, sparse=True)
        return self.wte(idx)

    def forward(self, idx: Tensor, positions: Tensor | None = None,
                cache: KVCache | StaticKVCache | None = None) -> Tensor:
        """Logits (B, T, vocab) for token ids `idx` (B, T) at absolute `positions` (T,).

        Without `positions` the tokens sit at 0..T-1, or right after what `cache` already holds.
        """
        T = idx.shape[1]
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.positions.embed(self.embed_tokens(idx), positions))
        k_pos = cache.key_positions(positions) if cache is not None else positions
        prepared = self.positions.prepare(positions, k_pos)  # once for every block
        for i, block in enumerate(self.h):
            x = block(x, prepared, self.positions, cache.layer(i) if cache is not None else None)
        if cache is not None:
            cache.advance(T, positions)
        logits = self.lm_head(self.ln_f(x))
        if self.cfg.logit_softcap > 0:  # smooth bound on |logit|: ≈ identity well below the cap
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits
