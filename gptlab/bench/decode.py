"""`gptlab bench decode`: batch-1 greedy decoding with the KV cache, against transformers' `generate` or llama.cpp
on the same weights and against the memory-bandwidth bound, all measured in the same run.

Batch-1 decoding reads every weight once per new token, so its ceiling is the machine's read bandwidth divided
by the bytes of weights read per token (the position table contributes one row, so it is left out).
Default shape: GPT-2 124M, prompt 16 tokens, 128 new tokens, random weights (speed does not depend on them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptlab import native
from gptlab.bench.hardware import best_time, read_bandwidth
from gptlab.config import build_config
from gptlab.errors import GptlabError
from gptlab.generate import generate
from gptlab.io import atomic_write_text
from gptlab.model import GPT
from gptlab.train.distributed import set_threads
from gptlab.train.loop import check_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of weights a batch-1 decode step reads: every parameter and integer weight buffer, each once, but
    the embedding tables, of which it reads one row — unless the token table is also the head (tied, float)."""
    tensors = {t.data_ptr(): t for t in list(model.parameters()) + list(model.buffers()) if t.numel()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    head = getattr(model.lm_head, "weight", None)
    tables = [getattr(model.positions, "wpe", None)]
    if head is None or head.data_ptr() != model.wte.weight.data_ptr():
        tables.append(model.wte)
    return total - sum(t.weight.numel() * t.weight.element_size() for t in tables if t is not None)


def time_gptlab(model: GPT, prompt: list[int], new_tokens: int, repeats: int,
                compiled: bool = False) -> tuple[float, list[int]]:
    out: list[int] = []

    def run():
        out[:] = list(generate(model, prompt, new_tokens, temperature=0.0, compiled=compiled))

    return best_time(run, repeats), out


def time_compiled(model: GPT, prompt: list[int], new_tokens: int, repeats: int) -> tuple[float, list[int], float, str]:
    """The compiled static decode step: steady-state seconds and tokens, the first generation's seconds (the
    compile included) and how its steps ran."""
    import time

    from gptlab import static_decode

    t0 = time.perf_counter()
    list(generate(model, prompt, new_tokens, temperature=0.0, compiled=True))
    first, how = time.perf_counter() - t0, static_decode.status
    seconds, tokens = time_gptlab(model, prompt, new_tokens, repeats, compiled=True)
    return seconds, tokens, first, how


def hf_twin(model: GPT):
    """transformers' GPT2LMHeadModel holding exactly `model`'s weights."""
    from gptlab.interop.hf import check_exportable, hf_config, quiet_transformers, to_hf_state
    from gptlab.train.checkpoint import model_state

    quiet_transformers()
    from transformers import GPT2LMHeadModel

    check_exportable(model.cfg)
    twin = GPT2LMHeadModel(hf_config(model.cfg, None, attn_implementation="sdpa")).eval()
    missing, unexpected = twin.load_state_dict(to_hf_state(model_state(model)), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if model.cfg.tie_embeddings else set()):
        raise GptlabError(f"transformers' GPT-2 does not match this shape (missing {missing}, extra {unexpected})")
    if model.cfg.tie_embeddings:
        twin.tie_weights()
    return twin.to(model.wte.weight.dtype)


def time_transformers(twin, prompt: list[int], new_tokens: int, repeats: int) -> tuple[float, list[int]]:
    ids = torch.tensor([prompt], device=twin.device)
    out: list[int] = []

    def run():
        with torch.no_grad():
            seq = twin.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                                pad_token_id=twin.config.eos_token_id)
        out[:] = seq[0, len(prompt):].tolist()

    return best_time(run, repeats), out


def tokens_agreeing(ours: list[int], theirs: list[int]) -> int:
    """How many greedy tokens the two tools share before they first part."""
    return next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))


# The GGUF type llama.cpp runs for each of gptlab's formats: the same weights as close as the file can hold them.
LLAMA_TYPES = {("float32", "none"): "f32", ("bfloat16", "none"): "f16", ("float32", "int8"): "q8_0",
               ("bfloat16", "int8"): "q8_0", ("float32", "int4"): "q4_0", ("bfloat16", "int4"): "q4_0"}


def time_llama_cpp(model: GPT, prompt: list[int], new_tokens: int, repeats: int, threads: int,
                   kind: str) -> tuple[float, list[int]]:
    """llama.cpp (llama-cpp-python) decoding `model` from a GGUF file of type `kind`: the prompt in one batch, then
    one token at a time, greedy, the same loop as gptlab's."""
    import tempfile

    import llama_cpp
    import numpy as np

    from gptlab.interop.gguf_export import write_gguf
    from gptlab.interop.llama_cpp_check import captured_stderr

    with tempfile.TemporaryDirectory() as tmp, captured_stderr():
        path = Path(tmp) / "bench.gguf"
        write_gguf(model, None, path, kind)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + new_tokens, n_batch=len(prompt),
                              logits_all=True, verbose=False, n_threads=threads, n_threads_batch=threads)
    out: list[int] = []

    def run():
        llm.reset()
        llm.eval(prompt)
        out.clear()
        while True:
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if len(out) == new_tokens:
                break
            llm.eval(out[-1:])

    try:
        return best_time(run, repeats), out
    finally:
        with captured_stderr():
            llm.close()


def bench_decode(config_file: str | None, overrides: list[str], prompt_len: int, new_tokens: int, repeats: int,
                 dtype: str, vs: str | None, json_out: str | None, quant: str = "none",
                 compiled: bool = False) -> dict:
    cfg = build_config(config_file, list(overrides))
    if prompt_len < 1 or new_tokens < 1:
        raise GptlabError("--prompt-tokens and --new-tokens must both be at least 1")
    limit = cfg.model.block_size if cfg.model.positions == "learned" else None
    if limit is not None and prompt_len + new_tokens > limit:
        raise GptlabError(f"prompt {prompt_len} + {new_tokens} new tokens exceed model.block_size={limit}; "
                          "lower --new-tokens or raise model.block_size")
    device = cfg.train.device
    check_device(device)
    if device == "cuda" and (quant != "none" or vs == "llama.cpp"):
        raise GptlabError("--quant and --vs llama.cpp run on the CPU (gptlab's integer kernels, this llama.cpp "
                          "build); drop --device cuda for them")
    threads = set_threads(cfg.train.threads)
    bandwidth = read_bandwidth(device=device)
    torch.manual_seed(0)
    model = GPT(cfg.model).eval().to(DTYPES[dtype])
    twin = hf_twin(model).to(device) if vs == "transformers" else None  # what a user would otherwise run
    model = model.to(device)
    if vs == "llama.cpp":  # before quantizing: the file gets the float weights in the matching GGUF type
        from gptlab.interop.hf import check_exportable

        check_exportable(cfg.model)
        llama_kind = LLAMA_TYPES[(dtype, quant)]
        float_model = GPT(cfg.model).eval()  # a float32 copy of the same (possibly bf16-rounded) weights
        float_model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    if quant != "none":
        from gptlab.quant.ptq import quantize_on_load

        quantize_on_load(model, quant)
    prompt = torch.randint(cfg.model.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    bytes_per_token = weight_bytes_per_token(model)
    bound = bandwidth / bytes_per_token
    seconds, ours_tokens = time_gptlab(model, prompt, new_tokens, repeats)
    ours = new_tokens / seconds
    result = {"bench": "decode", "device": device, "threads": threads, "dtype": dtype, "quant": quant,
              "prompt_tokens": prompt_len, "new_tokens": new_tokens, "weight_mb_per_token": bytes_per_token / 1e6,
              "read_bandwidth_gb_s": bandwidth / 1e9, "bandwidth_bound_tokens_per_s": bound,
              "gptlab_tokens_per_s": ours, "gptlab_fraction_of_bound": ours / bound}
    m = cfg.model
    print(f"shape: {m.n_layer} layers, {m.n_head} heads, d {m.n_embd}, vocab {m.vocab_size}; batch 1, "
          f"prompt {prompt_len}, {new_tokens} new tokens, greedy, {dtype}"
          f"{f', {quant} weights' if quant != 'none' else ''}, {threads} threads, best of {repeats}"
          + (", on the GPU" if device == "cuda" else ""))
    print(f"read bandwidth (same run): {bandwidth / 1e9:6.1f} GB/s; weights read per token "
          f"{bytes_per_token / 1e6:.0f} MB → bound {bound:6.1f} tokens/s")
    print(f"gptlab:        {ours:8.1f} tokens/s   {100 * ours / bound:5.1f} % of the bandwidth bound"
          + ("   (eager)" if compiled else ""))
    if compiled:
        seconds, static_tokens, first_s, how = time_compiled(model, prompt, new_tokens, repeats)
        static = new_tokens / seconds
        result.update({"gptlab_compiled_tokens_per_s": static, "gptlab_compiled_fraction_of_bound": static / bound,
                       "compiled_vs_eager": static / ours, "compiled_first_generation_s": first_s,
                       "compiled_status": how, "compiled_same_tokens_as_eager": static_tokens == ours_tokens})
        print(f"gptlab static: {static:8.1f} tokens/s   {100 * static / bound:5.1f} % of the bandwidth bound   "
              f"{static / ours:.2f}× eager; {how}; first generation {first_s:.1f} s; same greedy tokens as eager: "
              f"{'yes' if static_tokens == ours_tokens else 'the first ' + str(tokens_agreeing(static_tokens, ours_tokens))}")
    if quant != "none":
        from gptlab.quant import kernels

        result["kernel"] = kernels.status
        print(f"kernel:        {kernels.status}"
              + (f" (the C++ kernel is not used: {native.why_not})" if native.why_not else ""))
    elif dtype == "float32" and device == "cpu":
        result["kernel"] = (f"gptlab float32 few-row product (C++, {native.isa})" if native.load() is not None else
                            f"torch's linear (the C++ kernel is not used: {native.why_not})")
        print(f"kernel:        {result['kernel']}")
    if twin is not None:
        seconds, theirs_tokens = time_transformers(twin, prompt, new_tokens, repeats)
        theirs = new_tokens / seconds
        same = ours_tokens == theirs_tokens
        result.update({"transformers_tokens_per_s": theirs, "ratio_vs_transformers": ours / theirs,
                       "same_tokens": same})
        agree = tokens_agreeing(ours_tokens, theirs_tokens)
        result["tokens_agreeing"] = agree
        print(f"transformers:  {theirs:8.1f} tokens/s ({dtype})   gptlab / transformers = {ours / theirs:.2f}×   "
              f"(same greedy tokens: {'yes' if same else f'the first {agree}'})")
        if compiled:
            result["compiled_ratio_vs_transformers"] = static / theirs
            print(f"               gptlab static / transformers = {static / theirs:.2f}×")
    if vs == "llama.cpp":
        import llama_cpp

        seconds, theirs_tokens = time_llama_cpp(float_model, prompt, new_tokens, repeats, threads, llama_kind)
        theirs = new_tokens / seconds
        same, agree = ours_tokens == theirs_tokens, tokens_agreeing(ours_tokens, theirs_tokens)
        result.update({"llama_cpp_version": llama_cpp.__version__, "llama_cpp_type": llama_kind,
                       "llama_cpp_tokens_per_s": theirs, "ratio_vs_llama_cpp": ours / theirs, "same_tokens": same,
                       "tokens_agreeing": agree})
        print(f"llama.cpp:     {theirs:8.1f} tokens/s ({llama_kind} GGUF, llama-cpp-python {llama_cpp.__version__}) "
              f"  gptlab / llama.cpp = {ours / theirs:.2f}×   (same greedy tokens: "
              f"{'yes' if same else f'the first {agree}'})")
        if compiled:
            result["compiled_ratio_vs_llama_cpp"] = static / theirs
            print(f"               gptlab static / llama.cpp = {static / theirs:.2f}×")
    print(json.dumps(result))
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    return result
