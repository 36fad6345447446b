"""Sampling with the KV cache: greedy (temperature 0), temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from gptlab.errors import GptlabError
from gptlab.memory import kv_cache_bytes, require_memory
from gptlab.model import GPT
from gptlab.tokenizers import Tokenizer


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability reaches top-p."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None) -> Tensor:
    """(B, V) logits of the last position → (B,) token ids."""
    if temperature <= 0:  # max's indices: the same first maximum as argmax, 2-3x faster over a 50k vocabulary
        return logits.max(-1).indices
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


FIRST_CACHE = 1024  # positions allocated up front for a model without a position limit; grown as needed


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise GptlabError(f"max new tokens must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GptlabError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise GptlabError(f"top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise GptlabError(f"top-p must be in (0, 1], got {top_p}")


def check_prompt(model: GPT, prompt: list[int], max_new_tokens: int = 0) -> None:
    """The prompt fits the model's context and the KV cache of the whole generation fits in memory."""
    if not prompt:
        raise GptlabError("the prompt is empty; give at least one token of text")
    limit = model.max_positions()
    if limit is not None and len(prompt) > limit:
        raise GptlabError(f"the prompt is {len(prompt)} tokens but this model's context is {limit} "
                          "(model.block_size, learned positions); shorten the prompt")
    positions = limit if limit is not None else len(prompt) + max_new_tokens
    require_memory(kv_cache_bytes(model.cfg, positions), f"the KV cache of {positions:,} positions",
                   "ask for fewer new tokens")


def generate(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
             compiled: bool = False) -> Iterator[int]:
    """Yield `max_new_tokens` new token ids one at a time. The arguments are checked when it is called, before
    the first token is asked for.

    A model with a bounded position table (learned positions) keeps a sliding window: when the context is
    full, the cache is rebuilt from the last three quarters of the window and decoding continues. Without a
    bound the cache grows as the text does.

    `compiled`: each new token runs a step compiled once for the whole generation (`gptlab.static_decode`):
    the same tokens, less overhead per token, after a compile of seconds. Not for a generation that outgrows a
    bounded position table (it decodes eagerly then).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    check_prompt(model, prompt, max_new_tokens)
    return _decode(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, use_cache, compiled)


@torch.no_grad()
def _decode(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float, top_k: int | None,
            top_p: float | None, seed: int | None, use_cache: bool, compiled: bool = False) -> Iterator[int]:
    if max_new_tokens == 0:
        return
    limit = model.max_positions()
    device = model.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    if compiled:
        from gptlab import static_decode

        if use_cache and (limit is None or len(prompt) + max_new_tokens <= limit):
            yield from static_decode.decode_static(model, prompt, max_new_tokens,
                                                   lambda logits: next_token(logits, temperature, top_k, top_p,
                                                                             generator))
            return
        static_decode.status = ("eager (no KV cache asked for)" if not use_cache else
                                f"eager ({len(prompt)} + {max_new_tokens} tokens outgrow the model's {limit} positions: "
                                "its window slides, which a fixed-size cache cannot)")
    tokens = list(prompt)
    capacity = limit if limit is not None else len(prompt) + max_new_tokens
    cache = model.new_cache(1, min(capacity, len(prompt) + FIRST_CACHE)) if use_cache else None
    logits = model(torch.tensor([tokens], device=device), cache=cache)[:, -1]
    for i in range(max_new_tokens):
        tok = next_token(logits, temperature, top_k, top_p, generator)
        tokens.append(int(tok))
        yield int(tok)
        if i == max_new_tokens - 1:
            break
        if not use_cache:
            window = tokens[-limit:] if limit is not None else tokens
            logits = model(torch.tensor([window], device=device))[:, -1]
        elif cache.length < capacity:
            cache.reserve(cache.length + 1)
            logits = model(tok.view(1, 1), cache=cache)[:, -1]
        else:  # the window is full: restart it on the most recent tokens
            cache.reset()
            window = tokens[-(3 * capacity) // 4:]
            logits = model(torch.tensor([window], device=device), cache=cache)[:, -1]


class StreamingDecoder:
    """Turns a stream of token ids into text pieces, holding back bytes of a character not yet complete."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.emitted = text[self.emitted:], len(text)
        return piece


def sample_text(model: GPT, tok: Tokenizer, prompt: str | None, new_tokens: int, seed: int) -> str:
    """`prompt` and a continuation sampled the way gptlab shows its own samples (quickstart, `gptlab report`):
    temperature 0.8, top-k 40. No prompt: from end-of-text, or a newline for a vocabulary without one."""
    if prompt is None:
        prompt = "\n" if tok.eot_id is None else ""
    ids = tok.encode(prompt) if prompt else [tok.eot_id]
    return prompt + tok.decode(generate(model, ids, new_tokens, temperature=0.8, top_k=40, seed=seed))
