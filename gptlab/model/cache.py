"""A preallocated key/value cache for incremental decoding.

Keys are stored after the positional scheme has rotated them, together with their absolute positions, so a new
token attends to exactly what a full forward pass would have shown it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gptlab.errors import GptlabError


class KVCache:
    masked = False  # holds only written positions: one new token may attend to all of them without a mask

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
        self.cache, self.index, self.masked = cache, index, cache.masked

    def append(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys/values after those held (a static cache writes at `positions`); return all keys and
        values seen so far. Their positions are the forward pass's `key_positions`, computed once for every layer."""
        c, start, n = self.cache, self.cache.length, k.shape[2]
        if start + n > c.max_len:
            raise GptlabError(f"KV cache is full ({c.max_len} positions); allocate a longer cache")
        c.k[self.index, :, :, start: start + n] = k
        c.v[self.index, :, :, start: start + n] = v
        return c.k[self.index, :, :, : start + n], c.v[self.index, :, :, : start + n]


# Key position of a slot not yet written: later than any query, so the causal mask hides it.
EMPTY_SLOT = 2 ** 62


class StaticKVCache:
    """A KV cache whose tensors never change shape, for a decode step compiled once (`gptlab.static_decode`).

    Slot i holds position i. Every forward pass attends to all `max_len` slots; the slots not yet written carry
    the key position EMPTY_SLOT, so the causal mask hides them. Where to write comes from the positions tensor,
    never from a Python integer, so a compiled step sees the same graph at every position. The caller keeps the
    count of positions written (`StaticDecoder`) and never writes past `max_len`.
    """

    masked = True  # the attention must apply the causal mask even for one new token

    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        # one tensor per layer, not views of one: a compiled step then writes each in place, where writing into a
        # view of a shared buffer made the compiler copy the whole buffer at every layer
        self.k = [torch.zeros((batch, n_head, max_len, head_dim), dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.positions = torch.full((max_len,), EMPTY_SLOT, dtype=torch.long, device=device)
        self.max_len = max_len

    def layer(self, index: int) -> "StaticLayerCache":
        return StaticLayerCache(self, index)

    def key_positions(self, new: Tensor) -> Tensor:
        return self.positions.index_copy(0, new, new)

    def advance(self, n: int, positions: Tensor) -> None:
        self.positions[positions] = positions


class StaticLayerCache:
    def __init__(self, cache: StaticKVCache, index: int):
        self.cache, self.index, self.masked = cache, index, cache.masked

    def append(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = self.cache.k[self.index], self.cache.v[self.index]
        keys[:, :, positions] = k
        values[:, :, positions] = v
        return keys, values
