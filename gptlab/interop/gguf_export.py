"""A run as a GGUF file for llama.cpp's GPT-2 architecture, written with the `gguf` package and read back before it
is kept.

GPT-2 in llama.cpp: learned positions, LayerNorm, GELU (tanh), biases, tied or untied head, and a byte-level BPE
tokenizer with GPT-2's pre-tokenizer. gptlab's layers are `nn.Linear` (out, in), which is already the (rows =
outputs) layout ggml reads, so no weight is transposed. Tokenizers:

- `gpt2` (tiktoken ranks): GPT-2's vocabulary and merges, recovered from the ranks;
- `bpe` (gptlab's trained byte-level BPE): its vocabulary and merges as they are;
- `char`: a character vocabulary over ASCII is a byte vocabulary with no merges (each character is one byte, so
  byte-level BPE gives exactly one token per character); a vocabulary with other characters cannot be expressed
  and is refused naming them.

Types: f32 and f16 for every matrix, or q8_0 / q4_0 (llama.cpp's blocks of 32 values with an fp16 scale, made by
`gguf`'s reference quantizer) for the matrices whose rows are a multiple of 32 long; norms, biases and the
position table stay f32. After writing, the file is read back, its tensors dequantized, and the logits of the
model they make are compared with the run's: a file further off than TOLERANCE[type] is not kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gptlab.config import ModelConfig
from gptlab.errors import CheckpointError, GptlabError
from gptlab.interop.hf import check_exportable, max_logit_difference
from gptlab.interop import llama_cpp_check
from gptlab.interop.hf_tokenizer import byte_to_unicode, ranks_to_vocab_merges
from gptlab.io import check_distinct, writing
from gptlab.model import GPT
from gptlab.run import load_model
from gptlab.rundir import run_info
from gptlab.tokenizers import EOT, BPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer
from gptlab.train.checkpoint import model_state

TYPES = ("f32", "f16", "q8_0", "q4_0")
# max |Δlogits| allowed between the run and the model read back from the file, per type (measured on the test
# models: f32 ~1e-6, f16 ~1e-3, q8_0 ~1e-2, q4_0 ~1e-1 for unit-scale logits; the bounds leave room above that)
TOLERANCE = {"f32": 1e-4, "f16": 2e-2, "q8_0": 0.1, "q4_0": 1.0}
LAYER_NORM_EPS = 1e-5


def gguf_tensor_name(name: str) -> str | None:
    """gptlab's parameter name → llama.cpp's GPT-2 tensor name (None: not written, e.g. a tied head)."""
    fixed = {"wte.weight": "token_embd.weight", "positions.wpe.weight": "position_embd.weight",
             "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias", "lm_head.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if parts[0] != "h":
        raise CheckpointError(f"no GGUF name for tensor {name}")
    block, rest = parts[1], ".".join(parts[2:])
    layer = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    module, _, kind = rest.rpartition(".")
    if module not in layer:
        raise CheckpointError(f"no GGUF name for tensor {name}")
    return f"blk.{block}.{layer[module]}.{kind}"


def vocabulary(tok: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens in byte-level form, token types, merges "a b") for the GGUF tokenizer keys."""
    from gguf import TokenType

    to_unicode = byte_to_unicode()
    if isinstance(tok, GPT2Tokenizer):
        vocab, merge_pairs = ranks_to_vocab_merges(tok.enc._mergeable_ranks, tok.eot_id)
        merges = [f"{a} {b}" for a, b in merge_pairs]
    elif isinstance(tok, CharTokenizer):
        other = [c for c in tok.chars if ord(c) > 127]
        if other:
            shown = " ".join(repr(c) for c in other[:10]) + (" ..." if len(other) > 10 else "")
            raise GptlabError(f"this char-level vocabulary has {len(other)} non-ASCII character(s) ({shown}), which "
                              "llama.cpp's byte-level GPT-2 tokenizer cannot give one token each; prepare the data "
                              "with --tokenizer bpe (or ASCII text) to export GGUF")
        vocab = {to_unicode[ord(c)]: i for i, c in enumerate(tok.chars)}
        if tok.eot_id is not None:
            vocab[EOT] = tok.eot_id
        merges = []
    elif isinstance(tok, BPETokenizer):
        spec = json.loads(tok.tok.to_str())
        if spec["model"].get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
            raise GptlabError("only byte-level BPE tokenizers can be written to GGUF's GPT-2 tokenizer")
        vocab = dict(spec["model"]["vocab"])
        for added in spec.get("added_tokens", []):
            vocab[added["content"]] = added["id"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    else:
        raise GptlabError(f"a {tok.kind} tokenizer cannot be written to GGUF")
    tokens = [""] * tok.vocab_size
    for text, i in vocab.items():
        if i < len(tokens):
            tokens[i] = text
    missing = [i for i, t in enumerate(tokens) if not t]
    if missing:
        raise GptlabError(f"token ids {missing[:5]} have no text in the tokenizer; cannot write a GGUF vocabulary")
    types = [int(TokenType.CONTROL if t == EOT else TokenType.NORMAL) for t in tokens]
    return tokens, types, merges


def _data(t: torch.Tensor, kind: str, name: str):
    """A tensor's bytes for the file and its GGUF type."""
    from gguf import GGMLQuantizationType as Q, quants

    a = t.detach().float().numpy()
    if a.ndim == 1 or name == "position_embd.weight" or kind == "f32":
        return a.astype(np.float32), Q.F32
    if kind == "f16" or a.shape[-1] % 32:
        return a.astype(np.float16), Q.F16
    qtype = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[kind]
    return quants.quantize(a.astype(np.float32), qtype), qtype


def _writer(path: Path, arch: str):
    """gguf's writer, able to write an empty array: llama.cpp requires the merges key of a BPE vocabulary even
    when there are no merges (a char vocabulary), and `gguf` drops or refuses empty arrays."""
    import gguf
    from gguf import GGUFValueType

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                return ((self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type)
                        + self._pack("Q", 0))
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(str(path), arch)


def placeholder_vocabulary(size: int) -> tuple[list[str], list[int], list[str]]:
    """A vocabulary of `size` tokens with no tokenizer behind it (the 256 byte tokens, then named placeholders):
    enough for llama.cpp to load a model whose tokens are given as ids, e.g. to time a random-weight shape."""
    from gguf import TokenType

    table = byte_to_unicode()
    tokens = [table[b] for b in range(256)][:size] + [f"<|{i}|>" for i in range(256, size)]
    return tokens, [int(TokenType.NORMAL)] * size, []


def write_gguf(model: GPT, tok: Tokenizer | None, path: Path, kind: str, name: str = "gptlab") -> None:
    """`tok` None: placeholder tokens (see placeholder_vocabulary)."""
    import gguf

    cfg = model.cfg
    writer = _writer(path, "gpt2")
    writer.add_name(name)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(4 * cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_head_count(cfg.n_head)
    writer.add_layer_norm_eps(LAYER_NORM_EPS)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[kind])
    tokens, types, merges = vocabulary(tok) if tok is not None else placeholder_vocabulary(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_key_value(gguf.Keys.Tokenizer.MERGES, merges, gguf.GGUFValueType.ARRAY,
                         sub_type=gguf.GGUFValueType.STRING)
    special = tok.eot_id if tok is not None and tok.eot_id is not None else 0
    writer.add_bos_token_id(special)
    writer.add_eos_token_id(special)
    for key, t in model_state(model).items():
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue
        target = gguf_tensor_name(key)
        data, qtype = _data(t, kind, target)
        writer.add_tensor(target, data, raw_dtype=qtype if qtype not in (gguf.GGMLQuantizationType.F32,
                                                                          gguf.GGMLQuantizationType.F16) else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_back(path: Path, cfg: ModelConfig) -> GPT:
    """The model the file holds: its tensors dequantized into gptlab's GPT of the same shape."""
    from gguf import GGUFReader, quants

    reader = GGUFReader(str(path))
    names = {gguf_tensor_name(k): k for k in model_state(GPT(cfg))}
    model = GPT(cfg)
    state = model.state_dict()
    for tensor in reader.tensors:
        values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        shape = tuple(reversed([int(d) for d in tensor.shape]))  # ggml lists the fastest dimension first
        state[names[tensor.name]] = torch.from_numpy(np.ascontiguousarray(values).reshape(shape).astype(np.float32))
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    return model.eval()


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def export_gguf(run_dir: str | Path, out: str | Path, kind: str | None = "f16", which: str = "best",
                overwrite: bool = False) -> dict:
    """Write RUN_DIR's model as a GGUF file, verified by reading it back; returns what was measured."""
    kind = kind or "f16"
    if kind not in TYPES:
        raise GptlabError(f"--type {kind!r}: choose one of {', '.join(TYPES)}")
    out = Path(out)
    check_distinct(out, run_dir)
    if out.exists() and not (overwrite and out.is_file() and is_gguf(out)):
        raise GptlabError(f"{out} exists; choose a new file name"
                          + (", or pass --overwrite to replace it" if out.is_file() and is_gguf(out) else
                             " (only a GGUF file is ever replaced, with --overwrite)"))
    model, tok, cfg = load_model(run_dir, which)
    if cfg.lora.r > 0 or run_info(run_dir).get("quantized") or cfg.quant.qat != "none":
        raise GptlabError(f"{run_dir} is a LoRA or quantized run; export the float run it came from (merge a LoRA "
                          "fine-tune first with `gptlab merge`)")
    try:
        check_exportable(cfg.model)
    except GptlabError as e:
        raise GptlabError(str(e).replace("a transformers GPT-2", "llama.cpp's GPT-2 (GGUF)")) from None
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with writing(tmp):
            write_gguf(model, tok, tmp, kind, name=Path(run_dir).name)
        held = read_back(tmp, cfg.model)
        diff = max_logit_difference(model, _Logits(held))
        if not diff <= TOLERANCE[kind]:
            raise CheckpointError(f"the GGUF file read back disagrees with the run (max |Δlogits| {diff:.2e} > "
                                  f"{TOLERANCE[kind]} for {kind}); nothing was written")
        llama = None
        if llama_cpp_check.available():  # the real client: installed with gptlab, so absent only by hand
            llama = llama_cpp_check.check_with_llama_cpp(tmp, held, tok, kind)
            if not llama.ok:
                raise CheckpointError(f"{llama.problem()}; nothing was written")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"max_abs_logit_diff": diff, "bytes": out.stat().st_size, "type": kind, "llama_cpp": llama}


class _Logits(torch.nn.Module):
    """A gptlab model answering like a transformers one (`.logits`), for max_logit_difference."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.model(input_ids)})()
