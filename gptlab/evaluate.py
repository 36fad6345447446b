"""Loss and perplexity on a token split, at one or several context lengths, with the loss per position."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError
from gptlab.model import GPT


@dataclass
class EvalResult:
    length: int
    loss: float
    perplexity: float
    tokens: int
    per_position: list[float]  # mean loss of the token at position t of a window


@torch.no_grad()
def evaluate(model: GPT, tokens: np.ndarray, length: int, batch_size: int = 8, max_windows: int | None = None,
             dtype: torch.dtype | None = None) -> EvalResult:
    """Mean next-token loss over non-overlapping windows of `length` tokens covering the split.

    `max_windows` evenly thins the windows for a quicker estimate on a long split.
    """
    limit = model.max_positions()
    if limit is not None and length > limit:
        raise GptlabError(f"cannot evaluate at length {length}: this model's learned position table has {limit} "
                          "positions (model.block_size)")
    n_windows = (len(tokens) - 1) // length
    if n_windows < 1:
        raise GptlabError(f"the split has {len(tokens)} tokens, too few for one window of {length}")
    starts = np.arange(n_windows) * length
    if max_windows is not None and n_windows > max_windows:
        starts = starts[np.linspace(0, n_windows - 1, max_windows).round().astype(int)]
    model.eval()
    device = model.wte.weight.device
    position_sum = torch.zeros(length, dtype=torch.float64)
    for i in range(0, len(starts), batch_size):
        rows = np.stack([tokens[s: s + length + 1] for s in starts[i: i + batch_size]]).astype(np.int64)
        batch = torch.from_numpy(rows).to(device)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().transpose(1, 2), batch[:, 1:], reduction="none")  # (B, T)
        position_sum += loss.sum(0).double().cpu()
    per_position = (position_sum / len(starts)).tolist()
    mean = float(sum(per_position) / length)
    return EvalResult(length, mean, math.exp(mean), len(starts) * length, per_position)


@torch.no_grad()
def evaluate_same_targets(model: GPT, tokens: np.ndarray, lengths: list[int], target_len: int, n_windows: int,
                          batch_size: int = 8, longest: int | None = None) -> dict[int, EvalResult | None]:
    """Loss on the same target tokens at every context length: only the context before them changes.

    `n_windows` windows end at fixed places spread over the split; at length L a window is the L tokens before
    its end, and `loss` averages the last `target_len` predictions of it — the same tokens for every L (at
    absolute positions L − target_len … L − 1, so past the training length they test extrapolation too).
    `per_position` is the mean loss at every position of the window. A length the model cannot represent is
    None. `longest` places the windows for that length, so separate calls (one model per length) share them."""
    longest = max(lengths + [longest or 0])
    if min(lengths) < target_len:
        raise GptlabError(f"every length must hold the {target_len} target tokens, got {min(lengths)}")
    room = len(tokens) - 1 - longest
    if room < 0:
        raise GptlabError(f"the split has {len(tokens)} tokens, too few for one window of {longest}")
    ends = np.unique(np.linspace(longest, longest + room, n_windows).round().astype(int))
    limit = model.max_positions()
    model.eval()
    device = model.wte.weight.device
    out: dict[int, EvalResult | None] = {}
    for length in lengths:
        if limit is not None and length > limit:
            out[length] = None
            continue
        position_sum = torch.zeros(length, dtype=torch.float64)
        for i in range(0, len(ends), batch_size):
            rows = np.stack([tokens[e - length: e + 1] for e in ends[i: i + batch_size]]).astype(np.int64)
            batch = torch.from_numpy(rows).to(device)
            loss = F.cross_entropy(model(batch[:, :-1]).float().transpose(1, 2), batch[:, 1:], reduction="none")
            position_sum += loss.sum(0).double().cpu()
        per_position = (position_sum / len(ends)).tolist()
        mean = float(sum(per_position[-target_len:]) / target_len)
        out[length] = EvalResult(length, mean, math.exp(mean), len(ends) * target_len, per_position)
    return out


@dataclass(frozen=True)
class TextUnits:
    """How much text a split's tokens stand for: UTF-8 bytes and characters per token (document separators are
    not text and count as none)."""
    bytes_per_token: float
    chars_per_token: float

    def bits_per_byte(self, nats_per_token: float) -> float:
        return nats_per_token / math.log(2) / self.bytes_per_token

    def bits_per_char(self, nats_per_token: float) -> float:
        return nats_per_token / math.log(2) / self.chars_per_token


def text_units(tokens: np.ndarray, tokenizer) -> TextUnits:
    """Bytes and characters per token over the whole split, from its decoded text. A loss averaged over windows
    spread evenly over the split converts with the split's mean; scale-free across tokenizers, so a char and a BPE
    run compare on one axis."""
    from gptlab.tokenizers import EOT

    if len(tokens) == 0:
        raise GptlabError("the split is empty: no text to measure")
    text = tokenizer.decode(tokens.tolist()).replace(EOT, "")
    return TextUnits(len(text.encode("utf-8")) / len(tokens), len(text) / len(tokens))
