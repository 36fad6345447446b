"""Positional schemes behind one interface.

A scheme may add to the token embeddings (`embed`), rotate queries and keys (`rotate`), or bias attention
scores (`attn_bias`); the ones it does not use are identities. Positions are always explicit integer tensors of
shape (T,), so training, cached decoding and evaluation at other lengths all go through the same code.

The model calls `prepare(query positions, key positions)` once per forward pass; what it returns (RoPE's cos and
sin, ALiBi's bias) is shared by every block, instead of being recomputed in each layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dataclasses import dataclass

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError


@dataclass
class Prepared:
    """What every block of one forward pass needs from the scheme: the query (new tokens') and key (cached +
    new) positions, the rotation of the new tokens' queries and keys (cos, sin), and the attention bias."""
    q_pos: Tensor
    k_pos: Tensor
    rotation: tuple[Tensor, Tensor] | None = None
    bias: Tensor | None = None


class PositionScheme(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def prepare(self, q_pos: Tensor, k_pos: Tensor) -> Prepared:
        return Prepared(q_pos, k_pos, None, self.attn_bias(q_pos, k_pos))

    def apply_rotation(self, q: Tensor, k: Tensor, prepared: Prepared) -> tuple[Tensor, Tensor]:
        return q, k

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        return self.apply_rotation(q, k, self.prepare(positions, positions))

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
        self.clamp = cfg.learned_overflow == "clamp"

    def max_positions(self) -> int | None:
        return None if self.clamp else self.wpe.num_embeddings

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        last = self.wpe.num_embeddings - 1
        if self.clamp:
            positions = positions.clamp(max=last)
        # a compiled decode step cannot read a tensor's value; its caller never passes the table's end
        elif not torch.compiler.is_compiling() and positions.numel() and int(positions.max()) > last:
            raise GptlabError(
                f"position {int(positions.max())} is beyond the learned position table "
                f"({self.wpe.num_embeddings} positions, model.block_size); use a shorter prompt or context, "
                "or --set model.learned_overflow=clamp to reuse the last learned position for every later one")
        return x + self.wpe(positions)


# How the fixed table meets the token embeddings (model.sinusoidal_scale):
#   init         the table at the token embeddings' initial scale (std 0.02, like a learned table), so at init it
#                neither drowns the tokens (a unit table on N(0, 0.02) tokens did: val 2.76 vs 1.97 for learned)
#                nor vanishes; fixed, while the token embeddings grow during training
#   transformer  the original Transformer's recipe: token embeddings × √d_model, plus the unit-amplitude table
#   learned      the `init` table times a learned gain (one scalar), so the balance can follow the tokens
SINUSOID_SCALE = 0.02 * math.sqrt(2.0)  # sin/cos have RMS 1/sqrt(2)


class SinusoidalPositions(PositionScheme):
    """The fixed sine/cosine embedding of the original Transformer, defined at every position."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        half = cfg.n_embd // 2
        inv_freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.n_embd = cfg.n_embd
        self.mode = cfg.sinusoidal_scale
        if self.mode == "learned":
            self.gain = nn.Parameter(torch.tensor(SINUSOID_SCALE))

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        table = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if table.shape[-1] < self.n_embd:  # odd width: pad the last channel
            table = nn.functional.pad(table, (0, self.n_embd - table.shape[-1]))
        if self.mode == "transformer":
            return x * math.sqrt(self.n_embd) + table.to(x.dtype)
        scale = self.gain if self.mode == "learned" else SINUSOID_SCALE
        return x + (scale * table).to(x.dtype)


class RotaryPositions(PositionScheme):
    """RoPE: rotate pairs of query/key channels by position-dependent angles (the rotate-half layout)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        rot = int(cfg.head_dim * cfg.rope_fraction) // 2 * 2
        if rot == 0:
            raise GptlabError(f"model.rope_fraction={cfg.rope_fraction} rotates no channel of a "
                              f"{cfg.head_dim}-wide head; raise it")
        inv_freq, self.attention_factor = rope_frequencies(rot, cfg.rope_base, cfg.rope_scaling,
                                                           cfg.rope_scaling_factor, cfg.block_size)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rot = rot

    def _cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)  # (T, rot)
        # YaRN's temperature: q and k both scaled, so attention logits grow by attention_factor²
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        xr, xp = x[..., : self.rot], x[..., self.rot:]
        x1, x2 = xr.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        out = (xr.float() * cos + rotated.float() * sin).to(x.dtype)
        return torch.cat([out, xp], dim=-1) if xp.shape[-1] else out

    def prepare(self, q_pos: Tensor, k_pos: Tensor) -> Prepared:
        return Prepared(q_pos, k_pos, self._cos_sin(q_pos), None)

    def apply_rotation(self, q: Tensor, k: Tensor, prepared: Prepared) -> tuple[Tensor, Tensor]:
        cos, sin = prepared.rotation
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)


def rope_frequencies(rot: int, base: float, scaling: str = "none", factor: float = 1.0,
                     original_length: int = 0) -> tuple[Tensor, float]:
    """RoPE's inverse frequencies for `rot` rotated channels, extended by `factor` over `original_length`.

    linear: every frequency / factor (position interpolation: position p reads as p / factor).
    ntk:    base × factor^(rot / (rot − 2)): the highest frequency is kept, the lowest divided by factor.
    yarn:   frequencies that turn more than 32 times over the original length are kept, those that turn less
            than once are interpolated, with a linear ramp over the channel index between; attention is sharpened
            by (0.1·ln factor + 1) on q and on k.
    """
    exponents = torch.arange(0, rot, 2, dtype=torch.float32) / rot
    if scaling == "ntk" and factor > 1:
        base = base * factor ** (rot / (rot - 2)) if rot > 2 else base * factor
    inv_freq = base ** -exponents
    if scaling == "linear":
        return inv_freq / factor, 1.0
    if scaling == "yarn" and factor > 1:
        def channel_at(turns: float) -> float:  # the channel pair index at which a frequency turns `turns` times
            return rot * math.log(original_length / (turns * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(channel_at(32.0)), 0)
        high = min(math.ceil(channel_at(1.0)), rot - 1)
        high = high if high != low else high + 1e-3
        ramp = ((torch.arange(rot // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # 1 = interpolate
        return inv_freq * (1 - ramp) + inv_freq / factor * ramp, 0.1 * math.log(factor) + 1.0
    return inv_freq, 1.0


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
