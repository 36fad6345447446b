"""A preallocated key/value cache for incremental decoding.

Keys are stored after the positional scheme has rotated them, together with their absolute positions, so a new
token attends to exactly what a full forward pass would have shown it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gptlab.errors import GptlabError


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.zeros(max_len, dtype=torch.long, device=device)
        self.length = 0
        self.max_len = max_len

    def reserve(self, total: int) -> None:
        """Room for at least `total` positions: the buffers grow (at least doubling, so growing costs O(1) per
        token) keeping what they hold. Decoding grows its cache as it goes instead of allocating the whole
        generation's length up front."""
        if total <= self.max_len:
            return
        new_len = max(total, 2 * self.max_len)
        k = self.k.new_zeros((*self.k.shape[:3], new_len, self.k.shape[4]))
        v = self.v.new_zeros(k.shape)
        k[:, :, :, : self.length] = self.k[:, :, :, : self.length]
        v[:, :, :, : self.length] = self.v[:, :, :, : self.length]
        positions = self.positions.new_zeros(new_len)
        positions[: self.length] = self.positions[: self.length]
        self.k, self.v, self.positions, self.max_len = k, v, positions, new_len

    def layer(self, index: int) -> "LayerCache":
        return LayerCache(self, index)

    def key_positions(self, new: Tensor) -> Tensor:
        """Positions of every key a forward pass adding `new` tokens attends to: those cached, then the new ones."""
        return torch.cat([self.positions[: self.length], new]) if self.length else new

    def advance(self, n: int, positions: Tensor) -> None:
        """Called once per forward pass, after every layer has written its `n` new entries."""
        self.positions[self.length: self.length + n] = positions
        self.length += n

    def reset(self) -> None:
        self.length = 0


class LayerCache:
    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def append(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Store the new keys/values; return all keys, values and key positions seen so far."""
        c, start, n = self.cache, self.cache.length, k.shape[2]
        if start + n > c.max_len:
            raise GptlabError(f"KV cache is full ({c.max_len} positions); allocate a longer cache")
        c.k[self.index, :, :, start: start + n] = k
        c.v[self.index, :, :, start: start + n] = v
        end = start + n
        k_pos = torch.cat([c.positions[:start], positions]) if start else positions
        return c.k[self.index, :, :, :end], c.v[self.index, :, :, :end], k_pos
