import base64

import pytest
from hypothesis import given, settings, strategies as st

from gptlab.errors import TokenizerError
from gptlab.tokenizers import EOT, BPETokenizer, CharTokenizer, GPT2Tokenizer, load_tokenizer

from tests.conftest import SHARED, make_text

R50K = SHARED / "tiktoken" / "r50k_base.tiktoken"
CORPUS = [make_text(400, seed=s) for s in range(3)]
ALPHABET = sorted(set("".join(CORPUS)))


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=200))
def test_char_round_trip(text):
    tok = CharTokenizer.train(CORPUS)
    assert tok.decode(tok.encode(text)) == text


def test_char_unknown_characters_are_listed():
    tok = CharTokenizer.train(CORPUS)
    with pytest.raises(TokenizerError, match=r"2 character\(s\) not in this char-level vocabulary: '@' 'é'"):
        tok.encode("the é king @")


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=300)


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trip_on_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges_and_knows_end_of_text(bpe):
    assert bpe.vocab_size == 300 and bpe.eot_id is not None
    assert len(bpe.encode("the king")) < len("the king")  # merges were learned
    assert bpe.decode(bpe.encode(f"a{EOT}b")) == f"a{EOT}b"


def test_bpe_refuses_a_vocabulary_without_room_for_bytes():
    with pytest.raises(TokenizerError, match="at least 257"):
        BPETokenizer.train(CORPUS, vocab_size=100)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_and_load(tmp_path, bpe, kind):
    tok = CharTokenizer.train(CORPUS, with_eot=True) if kind == "char" else bpe
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = CORPUS[1][:300]
    assert loaded.kind == kind and loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size and loaded.eot_id == tok.eot_id


def standin_ranks(tmp_path):
    """A small ranks file in tiktoken's format (bytes, then a few merges) for machines without ../shared."""
    tokens = [bytes([b]) for b in range(256)] + [b"th", b"the", b" the", b"in", b"ing", b" k", b" king"]
    path = tmp_path / "standin.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    return path


@pytest.fixture
def gpt2(tmp_path):
    if R50K.is_file():
        return GPT2Tokenizer(R50K)
    return GPT2Tokenizer(standin_ranks(tmp_path), expected_sha256=None)


def test_gpt2_known_ids_when_the_real_ranks_are_present():
    if not R50K.is_file():
        pytest.skip("../shared/tiktoken is absent; the stand-in tests below cover the behaviour")
    tok = GPT2Tokenizer(R50K)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=200))
def test_gpt2_round_trip_and_literal_end_of_text(tmp_path_factory, text):
    path = R50K if R50K.is_file() else standin_ranks(tmp_path_factory.mktemp("r"))
    tok = GPT2Tokenizer(path, expected_sha256=None)
    assert tok.decode(tok.encode(text)) == text
    assert tok.eot_id not in tok.encode(f"x{EOT}y")  # literal text, never the special token


def test_gpt2_save_load_is_self_contained(tmp_path, gpt2):
    gpt2.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.encode("the king sings") == gpt2.encode("the king sings")


def test_gpt2_ranks_missing_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GPTLAB_TIKTOKEN_FILE", raising=False)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    with pytest.raises(TokenizerError, match="not found offline"):
        GPT2Tokenizer()


def test_gpt2_wrong_ranks_file_is_refused(tmp_path):
    with pytest.raises(TokenizerError, match="is not the GPT-2 r50k_base ranks file"):
        GPT2Tokenizer(standin_ranks(tmp_path))


def test_missing_or_corrupt_tokenizer_directory(tmp_path):
    with pytest.raises(TokenizerError, match="run `gptlab prepare` first"):
        load_tokenizer(tmp_path)
    (tmp_path / "gptlab_tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="is corrupt"):
        load_tokenizer(tmp_path)
