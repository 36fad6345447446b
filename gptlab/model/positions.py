"""Positional schemes behind one interface.

A scheme may add to the token embeddings (`embed`), rotate queries and keys (`rotate`), or bias attention
scores (`attn_bias`); the ones it does not use are identities. Positions are always explicit integer tensors of
shape (T,), so training, cached decoding and evaluation at other lengths all go through the same code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError


class PositionScheme(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        return q, k

    def attn_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return None

    def max_positions(self) -> int | None:
        """The longest sequence the scheme can represent, or None when unbounded."""
        return None


class LearnedPositions(PositionScheme):
    """GPT-2's table of learned absolute position vectors; it has no entry past `block_size - 1`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)

    def max_positions(self) -> int:
        return self.wpe.num_embeddings

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        if positions.numel() and int(positions.max()) >= self.wpe.num_embeddings:
            raise GptlabError(
                f"position {int(positions.max())} is beyond the learned position table "
                f"({self.wpe.num_embeddings} positions, model.block_size); use a shorter prompt or context")
        return x + self.wpe(positions)


class SinusoidalPositions(PositionScheme):
    """The fixed sine/cosine embedding of the original Transformer, defined at every position."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        half = cfg.n_embd // 2
        inv_freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.n_embd = cfg.n_embd

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        table = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if table.shape[-1] < self.n_embd:  # odd width: pad the last channel
            table = nn.functional.pad(table, (0, self.n_embd - table.shape[-1]))
        return x + table.to(x.dtype)


class RotaryPositions(PositionScheme):
    """RoPE: rotate pairs of query/key channels by position-dependent angles (the rotate-half layout)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        rot = int(cfg.head_dim * cfg.rope_fraction) // 2 * 2
        if rot == 0:
            raise GptlabError(f"model.rope_fraction={cfg.rope_fraction} rotates no channel of a "
                              f"{cfg.head_dim}-wide head; raise it")
        inv_freq = cfg.rope_base ** (-torch.arange(0, rot, 2, dtype=torch.float32) / rot)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rot = rot

    def _cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)  # (T, rot)
        return angles.cos(), angles.sin()

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        xr, xp = x[..., : self.rot], x[..., self.rot:]
        x1, x2 = xr.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        out = (xr.float() * cos + rotated.float() * sin).to(x.dtype)
        return torch.cat([out, xp], dim=-1) if xp.shape[-1] else out

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self._cos_sin(positions)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)


def alibi_slopes(n_head: int) -> Tensor:
    """Geometric head slopes of ALiBi; for a head count that is not a power of two, interleave the next one's."""
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_two(closest)
    if closest < n_head:
        slopes += power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class AlibiPositions(PositionScheme):
    """ALiBi: no embedding; attention scores get a penalty proportional to the query-key distance."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(cfg.n_head), persistent=False)

    def attn_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = (q_pos[:, None] - k_pos[None, :]).to(torch.float32)  # (Tq, Tk)
        return -self.slopes[:, None, None] * distance.clamp(min=0)[None]


class NoPositions(PositionScheme):
    """NoPE: causal attention alone carries order."""


SCHEMES: dict[str, type[PositionScheme]] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "rope": RotaryPositions,
    "alibi": AlibiPositions,
    "none": NoPositions,
}


def build_positions(cfg: ModelConfig) -> PositionScheme:
    return SCHEMES[cfg.positions](cfg)
