"""gptlab ⇄ transformers GPT-2: equal logits, equal greedy generations, bit-exact round trips, tokenizers."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file

from gptlab.config import ModelConfig, RunConfig
from gptlab.errors import CheckpointError, GptlabError
from gptlab.generate import generate
from gptlab.interop.hf import export_hf, import_hf, quiet_transformers
from gptlab.interop.hf_tokenizer import export_tokenizer
from gptlab.model import GPT
from gptlab.run import load_model, write_model_run
from gptlab.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer
from gptlab.train.checkpoint import checkpoint_dir

from tests.conftest import make_text
from tests.test_tokenizers import R50K, standin_ranks

quiet_transformers()
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

SHAPES = [  # (n_layer, n_head, n_embd, tied)
    (1, 1, 16, True),
    (2, 3, 48, False),
    (3, 5, 40, True),
]
CHARS = list("abcdefghijklmnopqrstuvwxyz .,\n")


def char_tok():
    return CharTokenizer(CHARS, with_eot=True)  # 31 tokens


def gptlab_run(tmp_path, n_layer, n_head, n_embd, tied, seed=0):
    torch.manual_seed(seed)
    cfg = RunConfig(model=ModelConfig(vocab_size=31, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=64,
                                      tie_embeddings=tied))
    model = GPT(cfg.model)
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped tensor shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    write_model_run(tmp_path / "run", cfg, char_tok(), model, {})
    return tmp_path / "run"


def hf_model_dir(tmp_path, n_layer, n_head, n_embd, tied, seed=1):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=31, n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        tie_word_embeddings=tied, bos_token_id=30, eos_token_id=30)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(tmp_path / "hf"))
    export_tokenizer(char_tok(), tmp_path / "hf")
    return tmp_path / "hf", model.eval()


def greedy_hf(model, prompt, n, use_cache):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, use_cache=use_cache,
                         pad_token_id=30, eos_token_id=None)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s[0]}-H{s[1]}-d{s[2]}-{'tied' if s[3] else 'untied'}")
def test_export_matches_transformers(tmp_path, shape):
    run = gptlab_run(tmp_path, *shape)
    export_hf(run, tmp_path / "out")
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), local_files_only=True).eval()
    assert isinstance(theirs, GPT2LMHeadModel)
    ours, _, _ = load_model(run)
    idx = torch.randint(0, 31, (2, 40))
    with torch.no_grad():
        diff = (ours(idx) - theirs(input_ids=idx).logits).abs().max().item()
    print(f"export {shape}: max |Δlogits| = {diff:.2e}")
    assert diff < 1e-4
    prompt = [3, 1, 4, 1, 5]
    expected = list(generate(ours, prompt, 32, temperature=0))
    assert list(generate(ours, prompt, 32, temperature=0, use_cache=False)) == expected
    assert greedy_hf(theirs, prompt, 32, use_cache=True) == expected
    assert greedy_hf(theirs, prompt, 32, use_cache=False) == expected
    # bit-exact round trip gptlab → HF → gptlab
    import_hf(tmp_path / "out", tmp_path / "back")
    a = load_file(str(checkpoint_dir(run) / "model.safetensors"))
    b = load_file(str(checkpoint_dir(tmp_path / "back") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s[0]}-H{s[1]}-d{s[2]}-{'tied' if s[3] else 'untied'}")
def test_import_matches_transformers(tmp_path, shape):
    hf_dir, theirs = hf_model_dir(tmp_path, *shape)
    import_hf(hf_dir, tmp_path / "run")
    ours, tok, cfg = load_model(tmp_path / "run")
    assert cfg.model.tie_embeddings == shape[3]
    idx = torch.randint(0, 31, (2, 40))
    with torch.no_grad():
        diff = (ours(idx) - theirs(input_ids=idx).logits).abs().max().item()
    print(f"import {shape}: max |Δlogits| = {diff:.2e}")
    assert diff < 1e-4
    prompt = [7, 2, 9]
    assert list(generate(ours, prompt, 32, temperature=0)) == greedy_hf(theirs, prompt, 32, use_cache=True)
    assert tok.encode("the cat.\n") == char_tok().encode("the cat.\n")


def test_models_gpt2_cannot_express_are_refused_naming_the_setting(tmp_path):
    for setting, fragment in [({"positions": "rope"}, "model.positions=rope"), ({"bias": False}, "model.bias=false"),
                              ({"activation": "relu2"}, "model.activation=relu2")]:
        cfg = RunConfig(model=ModelConfig(vocab_size=31, n_layer=1, n_head=2, n_embd=16, block_size=32, **setting))
        out = tmp_path / f"run-{fragment}"
        write_model_run(out, cfg, char_tok(), GPT(cfg.model), {})
        with pytest.raises(GptlabError, match=fragment.replace(".", r"\.")):
            export_hf(out, tmp_path / "hf")
        assert not (tmp_path / "hf").exists()


def test_pickle_checkpoints_need_the_explicit_flag(tmp_path):
    hf_dir, theirs = hf_model_dir(tmp_path, 1, 2, 16, True)
    (hf_dir / "model.safetensors").unlink()
    torch.save(theirs.state_dict(), hf_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        import_hf(hf_dir, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    import_hf(hf_dir, tmp_path / "run", allow_pickle=True)
    ours, _, _ = load_model(tmp_path / "run")
    idx = torch.randint(0, 31, (1, 20))
    with torch.no_grad():
        assert (ours(idx) - theirs(input_ids=idx).logits).abs().max() < 1e-4


def test_a_pickle_beside_safetensors_is_ignored_and_the_import_still_verified(tmp_path, monkeypatch):
    import gptlab.interop.hf as hf

    hf_dir, theirs = hf_model_dir(tmp_path, 1, 2, 16, True)
    torch.save({"junk": torch.zeros(1)}, hf_dir / "pytorch_model.bin")
    calls = []
    real = hf.max_logit_difference
    monkeypatch.setattr(hf, "max_logit_difference", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert import_hf(hf_dir, tmp_path / "run") < 1e-4 and calls


def test_non_gpt2_directories_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        import_hf(tmp_path, tmp_path / "run")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="GPT-2 only"):
        import_hf(tmp_path, tmp_path / "run")


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_exported_tokenizers_load_with_auto_tokenizer(tmp_path, kind):
    text = make_text(200, seed=3)
    if kind == "char":
        tok = CharTokenizer.train([text], with_eot=True)
    elif kind == "bpe":
        tok = BPETokenizer.train([text], vocab_size=300)
    else:
        tok = GPT2Tokenizer(R50K) if R50K.is_file() else GPT2Tokenizer(standin_ranks(tmp_path), expected_sha256=None)
    export_tokenizer(tok, tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    sample = text[:500]
    assert hf(sample)["input_ids"] == tok.encode(sample)
    assert hf.decode(tok.encode(sample)) == sample


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2tok")
    tok = GPT2Tokenizer(R50K) if R50K.is_file() else GPT2Tokenizer(standin_ranks(d), expected_sha256=None)
    export_tokenizer(tok, d / "hf")
    return tok, AutoTokenizer.from_pretrained(str(d / "hf"), local_files_only=True)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=120))
def test_tiktoken_and_transformers_gpt2_tokenizers_agree(gpt2_pair, text):
    tok, hf = gpt2_pair
    if "<|endoftext|>" in text:  # transformers treats the literal as the special token; tiktoken as text
        return
    assert hf(text)["input_ids"] == tok.encode(text)


def test_imported_model_can_be_fine_tuned(tmp_path):
    from gptlab.config import apply_overrides
    from gptlab.data import prepare
    from gptlab.train.loop import train

    hf_dir, theirs = hf_model_dir(tmp_path, 1, 2, 16, True)
    import_hf(hf_dir, tmp_path / "imported")
    texts = tmp_path / "texts"
    texts.mkdir()
    text = make_text(3000, seed=11).lower()
    (texts / "a.txt").write_text(text.replace("!", ".").replace(";", ","))  # within the 31 characters
    prepare(texts, tmp_path / "own-vocab", "char")  # a vocabulary of its own: refused
    with pytest.raises(CheckpointError, match="vocabulary"):
        train(tmp_path / "own-vocab", tmp_path / "ft0", RunConfig(), init_from=tmp_path / "imported", progress=False)
    prepare(texts, tmp_path / "data", tokenizer_from=tmp_path / "imported" / "tokenizer")
    cfg = apply_overrides(RunConfig(), ["train.max_steps=1", "train.lr=1e-12", "train.min_lr=0", "train.warmup_steps=0",
                                        "train.batch_size=2", "train.eval_batches=1"])
    train(tmp_path / "data", tmp_path / "ft", cfg, init_from=tmp_path / "imported", progress=False)
    tuned, _, tuned_cfg = load_model(tmp_path / "ft", "last")
    assert tuned_cfg.model.n_embd == 16  # the model config came from the imported run
    idx = torch.randint(0, 31, (1, 20))
    with torch.no_grad():
        assert (tuned(idx) - theirs(input_ids=idx).logits).abs().max() < 1e-4  # it started from those weights


def test_imported_runs_explain_what_they_cannot_do(tmp_path, capsys):
    from gptlab.cli import main

    hf_dir, _ = hf_model_dir(tmp_path, 1, 2, 16, True)
    assert main(["import", "hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 0
    assert "max |Δlogits|" in capsys.readouterr().out
    assert main(["eval", "--run", str(tmp_path / "run")]) == 2
    assert "no training data on record" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "run"), "--prompt", "the ", "--max-new-tokens", "5"]) == 0
    assert main(["export", "hf", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model.safetensors").is_file()
