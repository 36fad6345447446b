
import numpy as np
import pytest
import torch

from gptlab.data import BatchSampler, eval_batches, load_data, prepare
from gptlab.errors import DataError

from tests.conftest import make_text


def test_prepare_writes_token_files_meta_and_tokenizer(char_data, corpus_dir):
    data = load_data(char_data)
    meta = data.meta
    assert meta["split"]["by"] == "document" and len(meta["split"]["val_documents"]) == 1
    assert data.train.dtype == np.uint16 and len(data.train) == meta["train_tokens"]
    tok = data.tokenizer()
    assert tok.eot_id is not None and meta["vocab_size"] == tok.vocab_size
    # each document is followed by end-of-text, and the val document's text is intact
    val_name = meta["split"]["val_documents"][0]
    assert tok.decode(data.val.tolist()) == (corpus_dir / f"{val_name}.txt").read_text() + "<|endoftext|>"


def test_split_is_deterministic(corpus_dir, tmp_path):
    a, b = prepare(corpus_dir, tmp_path / "a"), prepare(corpus_dir, tmp_path / "b")
    assert a["split"] == b["split"]
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


def test_single_file_is_split_by_position(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text(make_text(2000, seed=5))
    meta = prepare(f, tmp_path / "d")
    assert meta["split"]["by"] == "position" and meta["eot_id"] is None
    assert abs(meta["val_tokens"] / (meta["train_tokens"] + meta["val_tokens"]) - 0.1) < 0.01


def test_bpe_data_uses_uint16(corpus_dir, tmp_path):
    meta = prepare(corpus_dir, tmp_path / "bpe", "bpe", vocab_size=320)
    assert meta["vocab_size"] == 320 and meta["dtype"] == "uint16"


@pytest.mark.parametrize("setup, fragment", [
    (lambda d: d / "missing.txt", "does not exist"),
    (lambda d: (d / "empty.txt").write_text("   \n") and d / "empty.txt", "is empty"),
    (lambda d: (d / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1")) and d / "latin1.txt",
     "is not UTF-8 text (invalid byte 0xe9 at offset 3)"),
    (lambda d: (d / "sub").mkdir() or d / "sub", "holds no .txt files"),
    (lambda d: (d / "tiny.txt").write_text("ab") and d / "tiny.txt", "too short"),
])
def test_bad_corpora_give_clear_errors(tmp_path, setup, fragment):
    with pytest.raises(DataError) as e:
        prepare(setup(tmp_path), tmp_path / "out")
    assert fragment in str(e.value)
    assert not (tmp_path / "out").exists()


def test_failed_prepare_leaves_an_existing_directory_untouched(char_data, tmp_path):
    import shutil

    out = tmp_path / "keep"
    shutil.copytree(char_data, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError):
        prepare(bad, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left behind


def test_truncated_token_file_is_detected(char_data, tmp_path):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(char_data, d)
    with open(d / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="missing or truncated"):
        load_data(d)
    (d / "meta.json").write_text("{")
    with pytest.raises(DataError, match="is corrupt"):
        load_data(d)
    with pytest.raises(DataError, match="not a gptlab data directory"):
        load_data(tmp_path)


def test_too_short_for_one_block(char_data):
    with pytest.raises(DataError, match="too few for one block of 100000"):
        load_data(char_data).check_fits(100_000)


def test_sampler_is_reproducible_and_resumable(char_data):
    tokens = load_data(char_data).train
    a = BatchSampler(tokens, 4, 16, seed=3)
    first = [a.next() for _ in range(3)]
    state = a.state()
    later = [a.next() for _ in range(3)]
    b = BatchSampler(tokens, 4, 16, seed=3)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(first, [b.next() for _ in range(3)]))
    c = BatchSampler(tokens, 4, 16, seed=99)
    c.load_state(state)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(later, [c.next() for _ in range(3)]))
    x, y = first[0]
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one


def test_eval_batches_repeat_exactly(char_data):
    tokens = load_data(char_data).val
    one = [x for x, _ in eval_batches(tokens, 3, 2, 16, seed=1)]
    two = [x for x, _ in eval_batches(tokens, 3, 2, 16, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_builtin_shakespeare_documents():
    from gptlab.corpus import load_corpus

    poems = load_corpus("shakespeare-poems")
    assert {d.name for d in poems} >= {"sonnets_gut", "rape_of_lucrece_gut"}
    everything = load_corpus("shakespeare")
    assert len(everything) == 42 and "hamlet_gut" in {d.name for d in everything}
