"""A GGUF file checked by llama.cpp itself, through llama-cpp-python: llama.cpp loads it, its tokenizer gives
gptlab's token ids, and its logits and greedy choices agree with the model the file holds.

The reference is the file's own weights dequantized by `gguf`'s reference code into gptlab's GPT (`read_back`), so
what is measured is llama.cpp computing the same network from the same bytes; how far those weights are from the
run's is the export's other check. llama.cpp multiplies f16 weights with f16 activations and q8_0 / q4_0 weights
with activations quantized to 8 bits, so its tolerance grows with the type (LLAMA_TOLERANCE, measured).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptlab.errors import CheckpointError
from gptlab.model import GPT
from gptlab.tokenizers import Tokenizer

# Texts whose token ids must be the same in llama.cpp and gptlab (those a char vocabulary can encode are used):
# spaces before words and runs of them, newlines, punctuation, digits, quotes, capitals.
TEXTS = ("Hello, world!", " a leading space", "two  spaces\nand a newline\n\n", "ROMEO. O, she doth teach the "
         "torches to burn bright!", "In 1599, 3.5 and 42.", "it's 'quoted' -- and \"double\"", "end.\n")
# Largest |Δlogits| accepted between llama.cpp and the file's weights in gptlab, per type, as a share of the
# largest |logit| (llama.cpp's CPU GELU reads an fp16 table, so even f32 files differ by ~1e-4 of the scale; q8_0 and
# q4_0 products quantize the activations to 8 bits). Measured with llama-cpp-python 0.3.36 on the 2-core Xeon,
# 2-layer d-64 models trained 400 steps (char and BPE-512 Tiny Shakespeare) and random ones (three vocabularies,
# tied and untied): f32 ≤ 1.1e-4, f16 ≤ 3.0e-4, q8_0 ≤ 1.1e-2, q4_0 ≤ 1.2e-2 of the scale.
GGML_F32 = 0  # ggml's type id of float32 (the KV cache's type here: llama.cpp's default f16 would round it)
LLAMA_TOLERANCE = {"f32": 1e-3, "f16": 2e-3, "q8_0": 5e-2, "q4_0": 5e-2}


@dataclass(frozen=True)
class LlamaCheck:
    version: str
    max_abs_logit_diff: float
    tolerance: float  # LLAMA_TOLERANCE × the largest |logit| of the reference
    greedy_checked: int  # greedy tokens decoded alike by llama.cpp and gptlab before a near-tie (or the context end)
    greedy_mismatches: int  # 1 if they part where gptlab's choice is clear
    texts: int  # texts whose token ids were compared
    tokenization_mismatch: str | None  # the first text whose ids differ, or None

    @property
    def ok(self) -> bool:
        return (self.max_abs_logit_diff <= self.tolerance and self.greedy_mismatches == 0
                and self.tokenization_mismatch is None)

    def problem(self) -> str:
        if self.tokenization_mismatch is not None:
            return f"llama.cpp tokenizes {self.tokenization_mismatch!r} differently from gptlab"
        if self.greedy_mismatches:
            return (f"llama.cpp's greedy decoding parts from gptlab's after {self.greedy_checked} tokens, where "
                    "gptlab's choice is clear")
        return f"llama.cpp's logits differ by up to {self.max_abs_logit_diff:.2e} (> {self.tolerance:g})"

    def summary(self) -> str:
        return (f"llama.cpp {self.version}: max |Δlogits| {self.max_abs_logit_diff:.1e} (≤ {self.tolerance:.1e}), "
                f"the same {self.greedy_checked} greedy tokens, token ids equal on {self.texts} texts")


@contextlib.contextmanager
def captured_stderr():
    """Standard error held back: file descriptor 2 (where C libraries write) and sys.stderr (where
    llama-cpp-python's log callback prints); yields a function giving the lines so far."""
    sys.stderr.flush()
    saved = os.dup(2)
    python = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as f, contextlib.redirect_stderr(python):
        os.dup2(f.fileno(), 2)
        try:
            yield lambda: (f.seek(0), f.read().decode("utf-8", "replace").splitlines()
                           + python.getvalue().splitlines())[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _encodable(tok: Tokenizer, text: str) -> list[int] | None:
    try:
        return tok.encode(text)
    except Exception:  # a char vocabulary without one of the text's characters
        return None


def sequences(tok: Tokenizer, block_size: int, seed: int = 0) -> list[list[int]]:
    """Fixed token sequences for the logits: the texts joined (as the model sees real text), and random ids over the
    whole vocabulary (every row of the embedding and head is read), each at most the context long."""
    text_ids = [i for t in TEXTS for i in (_encodable(tok, t) or [])]
    rng = np.random.default_rng(seed)
    out = [rng.integers(0, tok.vocab_size, block_size).tolist()]
    if text_ids:
        out.insert(0, text_ids[:block_size])
    return out


def greedy_agreement(llm, reference: GPT, prompt: list[int], tolerance: float) -> tuple[int, int]:
    """Greedy decoding from `prompt` through llama.cpp's KV cache, one token at a time, against gptlab's `generate`:
    (tokens compared, 1 if they part where gptlab's top choice is clear by more than twice the tolerance, else 0).
    Where the top two logits are closer than that, a different choice is rounding, and the comparison ends there."""
    from gptlab.generate import generate

    steps = reference.cfg.block_size - len(prompt)
    ours = list(generate(reference, prompt, steps, temperature=0.0))
    llm.reset()
    llm.eval(prompt)
    for i, expected in enumerate(ours):
        got = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if got != expected:
            with torch.no_grad():
                logits = reference(torch.tensor([prompt + ours[:i]]))[0, -1].double()
            top2 = torch.topk(logits, 2).values
            return i, int(float(top2[0] - top2[1]) > 2 * tolerance)
        if i + 1 < len(ours):
            llm.eval([expected])
    return len(ours), 0


def check_with_llama_cpp(path: str | Path, reference: GPT, tok: Tokenizer, kind: str, threads: int = 1) -> LlamaCheck:
    """Load `path` in llama.cpp and compare it with `reference` (the file's weights in gptlab)."""
    import llama_cpp

    block = reference.cfg.block_size
    with captured_stderr() as log:  # llama.cpp's log (verbose, so it has the reason a load fails), shown only then
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=block, n_batch=block, n_ubatch=block, logits_all=True,
                                  verbose=True, n_threads=threads, n_threads_batch=threads, seed=0,
                                  type_k=GGML_F32, type_v=GGML_F32)
        except ValueError:
            llm, lines = None, log()
    if llm is None:
        why = next((line for line in reversed(lines) if "error" in line.lower()), "no reason given")
        raise CheckpointError(f"llama.cpp {llama_cpp.__version__} cannot load the file ({why.strip()}); nothing was "
                              "written")
    with captured_stderr():
        return _compare(llm, reference, tok, kind, llama_cpp.__version__)


def _compare(llm, reference: GPT, tok: Tokenizer, kind: str, version: str) -> LlamaCheck:
    block = reference.cfg.block_size
    try:
        texts, mismatch = 0, None
        for text in TEXTS:
            ours = _encodable(tok, text)
            if ours is None:
                continue
            texts += 1
            theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            if list(theirs) != list(ours) and mismatch is None:
                mismatch = text
        worst, scale = 0.0, 0.0
        for ids in sequences(tok, block):
            llm.reset()
            llm.eval(ids)
            theirs = np.array(llm.scores[: len(ids)], dtype=np.float64)
            with torch.no_grad():
                ours = reference.eval()(torch.tensor([ids]))[0].double().numpy()
            worst = max(worst, float(np.abs(theirs - ours).max()) if np.isfinite(theirs).all() else math.inf)
            scale = max(scale, float(np.abs(ours).max()))
        tolerance = LLAMA_TOLERANCE[kind] * scale
        checked, wrong = greedy_agreement(llm, reference, sequences(tok, block)[0][:4], tolerance)
    finally:
        llm.close()
    return LlamaCheck(version, worst, tolerance, checked, wrong, texts, mismatch)
