"""Bits per byte and per character: the split's own text, checked against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptlab.errors import GptlabError
from gptlab.evaluate import text_units
from gptlab.tokenizers import EOT, BPETokenizer, CharTokenizer

TEXT = "café — naïve\nthe end"  # 'é', 'ï' take 2 UTF-8 bytes and '—' 3: 20 characters, 24 bytes


def test_char_level_units_count_utf8_bytes_and_skip_document_separators():
    tok = CharTokenizer.train([TEXT], with_eot=True)
    tokens = np.array(tok.encode(TEXT) + [tok.eot_id] + tok.encode("the"), dtype=np.uint16)
    units = text_units(tokens, tok)
    assert len(TEXT) == 20 and len(TEXT.encode()) == 24
    assert units.bytes_per_token == pytest.approx((24 + 3) / 24)  # 24 tokens: 20 + 1 separator + 3
    assert units.chars_per_token == pytest.approx((20 + 3) / 24)
    loss = 1.3  # nats per token
    assert units.bits_per_byte(loss) == pytest.approx(loss * 24 / (27 * math.log(2)))
    assert units.bits_per_char(loss) == pytest.approx(loss * 24 / (23 * math.log(2)))
    assert EOT not in tok.decode(tokens.tolist()).replace(EOT, "")


def test_bpe_tokens_stand_for_more_bytes_and_the_same_text_gives_the_same_bits():
    corpus = [TEXT * 20, "the cafe at the end of the road " * 30]
    bpe = BPETokenizer.train(corpus, vocab_size=300)
    char = CharTokenizer.train(corpus)
    ids_bpe, ids_char = (np.array(t.encode(TEXT), dtype=np.uint16) for t in (bpe, char))
    bpe_units, char_units = text_units(ids_bpe, bpe), text_units(ids_char, char)
    assert bpe_units.bytes_per_token * len(ids_bpe) == pytest.approx(24)  # the same 24 bytes either way
    assert char_units.bytes_per_token * len(ids_char) == pytest.approx(24)
    # one total code length (nats over the whole text) reads the same in bits per byte, whatever the tokenizer
    total_nats = 30.0
    assert bpe_units.bits_per_byte(total_nats / len(ids_bpe)) == pytest.approx(
        char_units.bits_per_byte(total_nats / len(ids_char)))
    with pytest.raises(GptlabError, match="empty"):
        text_units(np.array([], dtype=np.uint16), char)

