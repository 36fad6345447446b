"""The position-wise feed-forward block: 4× expansion with GPT-2's tanh-approximated GELU, or ReLU² (relu(x)², the
activation small-GPT speedruns use)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gptlab.config import ModelConfig
from gptlab.model.gelu import gelu_tanh
from gptlab.model.linear import Linear


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.relu2 = cfg.activation == "relu2"

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else gelu_tanh(h)
        return self.dropout(self.c_proj(h))
