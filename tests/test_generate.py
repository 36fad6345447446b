import pytest
import torch
from hypothesis import given, settings, strategies as st

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.generate import StreamingDecoder, filter_logits, generate, next_token
from gptlab.model import GPT
from gptlab.tokenizers import BPETokenizer


def model(positions="learned", block=32):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=61, n_layer=2, n_head=2, n_embd=32, block_size=block,
                           positions=positions)).eval()


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi"])
def test_greedy_with_and_without_cache_agree(positions):
    m = model(positions)
    prompt = [3, 14, 15, 9, 2]
    with_cache = list(generate(m, prompt, 40, temperature=0))
    without = list(generate(m, prompt, 40, temperature=0, use_cache=False))
    assert with_cache == without and len(with_cache) == 40  # 45 tokens: past the 32-token window too


def test_seeded_sampling_repeats():
    m = model()
    a = list(generate(m, [1, 2], 20, temperature=1.0, top_k=10, seed=7))
    b = list(generate(m, [1, 2], 20, temperature=1.0, top_k=10, seed=7))
    assert a == b


def test_prompt_longer_than_learned_context_is_refused():
    with pytest.raises(GptlabError, match="the prompt is 40 tokens but this model's context is 32"):
        list(generate(model(), list(range(40)), 5))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=30), st.integers(1, 30), st.floats(0.05, 0.99))
def test_top_k_and_top_p_keep_the_right_tokens(values, k, p):
    logits = torch.tensor([values])
    kept_k = torch.isfinite(filter_logits(logits, top_k=k)).sum().item()
    assert kept_k >= min(k, len(values))  # ties at the k-th value are kept
    filtered = filter_logits(logits, top_p=p)
    kept = torch.isfinite(filtered)[0]
    probs = logits.softmax(-1)[0]
    assert probs[kept].max() == probs.max()  # a most likely token always survives (ties: any of them)
    assert probs[kept].sum() >= p - 1e-6  # the kept set reaches p ...
    smallest_kept = probs[kept].min()
    assert probs[kept].sum() - smallest_kept < p + 1e-6  # ... and is minimal


def test_streaming_decoder_never_splits_a_character():
    tok = BPETokenizer.train(["ab" * 50], vocab_size=260)
    ids = tok.encode("héllo ☃ wörld")
    dec = StreamingDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == "héllo ☃ wörld" and not any("\ufffd" in p for p in pieces)


def test_same_target_evaluation_scores_the_same_tokens_at_every_length():
    import numpy as np

    from gptlab.config import ModelConfig
    from gptlab.evaluate import evaluate_same_targets
    from gptlab.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=13, n_layer=1, n_head=2, n_embd=16, block_size=8, positions="rope")).eval()
    tokens = np.random.default_rng(0).integers(0, 13, 400).astype(np.uint16)
    out = evaluate_same_targets(model, tokens, [8, 16, 32], target_len=8, n_windows=20)
    # by hand at length 16: the windows end at the same places; the last 8 predictions are the targets
    ends = np.unique(np.linspace(32, 32 + len(tokens) - 1 - 32, 20).round().astype(int))
    total = 0.0
    for e in ends:
        x = torch.from_numpy(tokens[e - 16: e + 1].astype(np.int64))[None]
        logits = model(x[:, :-1])
        total += float(torch.nn.functional.cross_entropy(logits[0, -8:], x[0, -8:]))
    assert out[16].loss == pytest.approx(total / len(ends), rel=1e-5)
    assert out[8].tokens == out[32].tokens == 8 * len(ends)
    learned = GPT(ModelConfig(vocab_size=13, n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()
    assert evaluate_same_targets(learned, tokens, [8, 16], 8, 10)[16] is None  # past its table: cannot run


def test_sample_text_keeps_the_prompt_and_starts_from_end_of_text_or_a_newline():
    from gptlab.generate import sample_text
    from gptlab.tokenizers import CharTokenizer

    for tok in (CharTokenizer(list("ab \n"), with_eot=True), CharTokenizer(list("ab \n"))):
        torch.manual_seed(0)
        model = GPT(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=8, block_size=16)).eval()
        text = sample_text(model, tok, "ab", 10, seed=3)
        assert text.startswith("ab") and text == sample_text(model, tok, "ab", 10, seed=3)
        free = sample_text(model, tok, None, 10, seed=3)
        assert free.startswith("\n") == (tok.eot_id is None)


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=40), st.integers(1, 3))
def test_greedy_picks_the_first_largest_logit_as_argmax_does(values, rows):
    logits = torch.tensor([values] * rows, dtype=torch.float32)  # small integers: ties are common
    assert torch.equal(next_token(logits, 0.0, None, None, None), logits.argmax(-1))
    assert next_token(logits, 0.0, None, None, None)[0] == values.index(max(values))
