"""GGUF export: every type read back within its tolerance and loaded by llama.cpp itself (same token ids, logits
within the measured tolerance, same greedy choices), tied and untied, three tokenizers, clear refusals."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from gptlab.cli import main
from gptlab.config import ModelConfig, RunConfig
from gptlab.interop.gguf_export import TOLERANCE, TYPES, export_gguf, gguf_tensor_name, read_back, vocabulary
from gptlab.interop.llama_cpp_check import TEXTS, check_with_llama_cpp
from gptlab.model import GPT
from gptlab.run import write_model_run
from gptlab.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer
from gptlab.train.checkpoint import model_state
from tests.conftest import make_text
from tests.test_tokenizers import R50K, standin_ranks


def run_with(tmp_path, tok, tied=True, n_embd=64, **model):
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=n_embd, block_size=32,
                                      tie_embeddings=tied, **model))
    net = GPT(cfg.model)
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped tensor shows
        for name, p in net.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    write_model_run(tmp_path / "run", cfg, tok, net, {})
    return tmp_path / "run", net, cfg


def field(reader, key):
    f = reader.fields[key]
    if len(f.types) and f.types[0].name == "ARRAY":
        return [bytes(f.parts[i]).decode() if f.types[-1].name == "STRING" else int(f.parts[i][0]) for i in f.data]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0].name == "STRING" else value[0]


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("tied", [True, False])
def test_each_type_reads_back_within_its_tolerance(tmp_path, kind, tied):
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,\n"), with_eot=True)
    run, net, cfg = run_with(tmp_path, tok, tied)
    out = tmp_path / "m.gguf"
    assert main(["export", "gguf", "--run", str(run), "--out", str(out), "--type", kind]) == 0
    back = read_back(out, cfg.model)
    x = torch.randint(0, tok.vocab_size, (2, 32))
    with torch.no_grad():
        diff = float((back(x) - net.eval()(x)).abs().max())
    assert diff <= TOLERANCE[kind] and (diff == 0 if kind == "f32" else diff > 0)
    reader = GGUFReader(str(out))
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) == (not tied) and "blk.1.attn_qkv.weight" in names
    assert field(reader, "general.architecture") == "gpt2" and field(reader, "gpt2.block_count") == 2
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    assert qkv.tensor_type.name == kind.upper()  # (out, in) rows of 64: every matrix in the chosen type
    assert [int(d) for d in qkv.shape] == [64, 192]  # ggml order: inputs first


def test_tokenizers_become_gpt2_byte_level_vocabularies(tmp_path):
    char = CharTokenizer(list("ab \n"), with_eot=True)
    tokens, types, merges = vocabulary(char)
    assert tokens == ["a", "b", "Ġ", "Ċ", "<|endoftext|>"] and merges == [] and types[-1] != types[0]
    text = make_text(300, seed=1)
    bpe = BPETokenizer.train([text], vocab_size=300)
    tokens, _, merges = vocabulary(bpe)
    assert len(tokens) == bpe.vocab_size and merges and all(len(m.split(" ")) == 2 for m in merges)
    for merge in merges[:20]:  # every merge yields a token of the vocabulary
        assert merge.replace(" ", "") in tokens
    gpt2 = GPT2Tokenizer(R50K) if R50K.is_file() else GPT2Tokenizer(standin_ranks(tmp_path), expected_sha256=None)
    tokens, _, merges = vocabulary(gpt2)
    assert len(tokens) == gpt2.vocab_size and tokens[gpt2.eot_id] == "<|endoftext|>"
    assert len(merges) == len(tokens) - 257  # every token beyond the 256 bytes and end-of-text has one merge


def test_every_parameter_has_a_gguf_name_and_none_twice():
    net = GPT(ModelConfig(vocab_size=10, n_layer=3, n_head=2, n_embd=16, block_size=8, tie_embeddings=False))
    names = [gguf_tensor_name(k) for k in model_state(net)]
    assert len(set(names)) == len(names) == 2 + 3 * 12 + 2 + 1


def test_inexpressible_models_and_vocabularies_are_refused_in_one_line(tmp_path, capsys):
    tok = CharTokenizer(list("abc \n"), with_eot=True)
    run, _, _ = run_with(tmp_path / "rope", tok, positions="rope")
    assert main(["export", "gguf", "--run", str(run), "--out", str(tmp_path / "r.gguf")]) == 2
    assert "model.positions=rope" in capsys.readouterr().err and not (tmp_path / "r.gguf").exists()
    run, _, _ = run_with(tmp_path / "accents", CharTokenizer(list("abcé \n"), with_eot=True))
    assert main(["export", "gguf", "--run", str(run), "--out", str(tmp_path / "a.gguf")]) == 2
    err = capsys.readouterr().err
    assert "non-ASCII" in err and "'é'" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*partial")) == []


def test_an_existing_file_is_replaced_only_when_it_is_gguf_and_asked(tmp_path, capsys):
    run, _, _ = run_with(tmp_path, CharTokenizer(list("abc \n"), with_eot=True), n_embd=32)
    other = tmp_path / "notes.gguf"
    other.write_text("not a model")
    assert main(["export", "gguf", "--run", str(run), "--out", str(other), "--overwrite"]) == 2
    assert other.read_text() == "not a model"
    out = tmp_path / "m.gguf"
    assert main(["export", "gguf", "--run", str(run), "--out", str(out), "--type", "f32"]) == 0
    assert main(["export", "gguf", "--run", str(run), "--out", str(out)]) == 2
    assert main(["export", "gguf", "--run", str(run), "--out", str(out), "--type", "q8_0", "--overwrite"]) == 0
    assert np.frombuffer(out.read_bytes()[:4], dtype=np.uint8).tobytes() == b"GGUF"


# -- llama.cpp itself (llama-cpp-python, built at install) ---------------------------------------------------------
CHARS = list(string.ascii_letters + string.digits + " .,!?'\"-\n")  # every character of llama_cpp_check.TEXTS


def tokenizer_of(name: str, tmp_path):
    if name == "char":
        return CharTokenizer(CHARS, with_eot=True)
    if name == "bpe":
        return BPETokenizer.train([make_text(300, seed=1)], vocab_size=300)
    return GPT2Tokenizer(R50K) if R50K.is_file() else GPT2Tokenizer(standin_ranks(tmp_path), expected_sha256=None)


# Every type, tied and untied, for the char and trained-BPE vocabularies; GPT-2's 50k vocabulary (the slow one to
# build and run) once tied and once untied.
LLAMA_CASES = [(name, tied, kind) for name in ("char", "bpe") for tied in (True, False) for kind in TYPES] + [
    ("gpt2", True, "f16"), ("gpt2", False, "q4_0")]


@pytest.mark.parametrize("name,tied,kind", LLAMA_CASES)
def test_llama_cpp_loads_the_file_with_gptlabs_token_ids_logits_and_greedy_choices(tmp_path, kind, tied, name):
    tok = tokenizer_of(name, tmp_path)
    run, _, _ = run_with(tmp_path, tok, tied)
    r = export_gguf(run, tmp_path / "m.gguf", kind)
    check = r["llama_cpp"]  # export_gguf refuses the file when the check fails; here its numbers are read too
    assert check is not None and check.ok, check
    assert check.texts == len(TEXTS) and check.max_abs_logit_diff <= check.tolerance
    if kind in ("f32", "f16"):  # the same greedy tokens to the end of the context
        assert check.greedy_checked == 32 - 4


def test_the_llama_cpp_check_catches_other_weights_and_other_token_ids(tmp_path, monkeypatch, capsys):
    import copy

    from gptlab.interop import gguf_export

    tok = tokenizer_of("char", tmp_path)
    run, net, _ = run_with(tmp_path, tok)
    out = tmp_path / "m.gguf"
    export_gguf(run, out, "f32")
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.wte.weight.mul_(1.5)  # (tied: the head too)
    bad = check_with_llama_cpp(out, other, tok, "f32")
    assert not bad.ok and "logits differ" in bad.problem()

    class Reversed:  # a tokenizer that disagrees with the file's
        vocab_size = tok.vocab_size

        def encode(self, text):
            return tok.encode(text)[::-1]

    bad = check_with_llama_cpp(out, net, Reversed(), "f32")
    assert not bad.ok and bad.tokenization_mismatch == TEXTS[0] and "tokenizes" in bad.problem()
    # a failed check leaves no file, and says why in one line
    monkeypatch.setattr(gguf_export.llama_cpp_check, "check_with_llama_cpp", lambda *a: bad)
    assert main(["export", "gguf", "--run", str(run), "--out", str(tmp_path / "n.gguf")]) == 2
    err = capsys.readouterr().err
    assert "tokenizes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n.gguf").exists() and list(tmp_path.glob(".*partial")) == []


def test_a_file_llama_cpp_cannot_load_is_refused_with_its_reason(tmp_path, monkeypatch, capsys):
    from gptlab.interop import gguf_export

    run, _, _ = run_with(tmp_path, tokenizer_of("char", tmp_path))
    real = gguf_export.write_gguf

    def without_merges(model, tok, path, kind, name="gptlab"):  # the bug llama.cpp itself found: no merges key
        real(model, tok, path, kind, name)
        from gguf import GGUFReader
        assert "tokenizer.ggml.merges" in GGUFReader(str(path)).fields
        data = path.read_bytes().replace(b"tokenizer.ggml.merges", b"tokenizer.ggml.mergez")
        path.write_bytes(data)

    monkeypatch.setattr(gguf_export, "write_gguf", without_merges)
    assert main(["export", "gguf", "--run", str(run), "--out", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert "llama.cpp 0.3.36 cannot load the file" in err and "merges" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.gguf").exists()
