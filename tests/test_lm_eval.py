"""The lm-evaluation-harness adapter: local tasks the test writes (no downloads), and agreement with lm-eval's own
transformers backend on the same model exported with `gptlab export hf`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lm_eval.api.instance import Instance

from gptlab.cli import main
from gptlab.interop.lm_eval import GptlabLM
from gptlab.run import load_model
from tests.test_interop_hf import gptlab_run

TEXTS = ["the cat sat on the mat.\n", "a dog ran far, then sat.\n", "to be or not to be\n"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_tasks(folder):
    """Three tiny tasks, one per request type lm-eval has: choice, rolling log-likelihood, generation."""
    folder.mkdir()
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [
        {"question": "the cat sat on the", "choices": [" mat", " dog", " far"], "answer": 0},
        {"question": "to be or not to", "choices": [" be", " cat", " ran"], "answer": 0},
        {"question": "a dog ran", "choices": [" far", " mat", " be"], "answer": 0}]))
    (folder / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (folder / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [
        {"prompt": "the cat", "target": " sat"}, {"prompt": "a dog", "target": " ran"}]))

    def data(name):
        return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}\ntest_split: test\n"
    (folder / "mc.yaml").write_text("task: tiny_mc\n" + data("mc.jsonl") + "output_type: multiple_choice\n"
                                    "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
                                    "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    (folder / "text.yaml").write_text("task: tiny_text\n" + data("text.jsonl") + "output_type: loglikelihood_rolling\n"
                                      "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n"
                                      "  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (folder / "gen.yaml").write_text("task: tiny_gen\n" + data("gen.jsonl") + "output_type: generate_until\n"
                                     "doc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\ngeneration_kwargs:\n"
                                     "  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
                                     "metric_list:\n  - metric: exact_match\n")
    return folder


def requests(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


PAIRS = [("the cat sat on the", " mat"), ("a dog", " ran far, then sat."), ("", "to be or not"),
         ("to be or not to be " * 6, "the end.")]  # the last is longer than the context: truncated on the left


def test_scores_agree_with_lm_evals_transformers_backend_on_the_exported_model(tmp_path):
    from lm_eval.models.huggingface import HFLM

    run = gptlab_run(tmp_path, 2, 2, 32, tied=True)
    assert main(["export", "hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    model, tok, _ = load_model(run)
    ours = GptlabLM(model, tok, batch_size=3)
    theirs = HFLM(pretrained=str(tmp_path / "hf"), batch_size=3, device="cpu")
    mine, hf = ours.loglikelihood(requests("loglikelihood", PAIRS)), theirs.loglikelihood(requests("loglikelihood", PAIRS))
    for (a, greedy_a), (b, greedy_b) in zip(mine, hf):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b and a < 0
    rolling = [(t,) for t in TEXTS] + [("to be or not to be " * 12,)]  # the last spans several windows
    for a, b in zip(ours.loglikelihood_rolling(requests("loglikelihood_rolling", rolling)),
                    theirs.loglikelihood_rolling(requests("loglikelihood_rolling", rolling))):
        assert a == pytest.approx(b, abs=1e-3)


def test_batching_does_not_change_a_score(tmp_path):
    run = gptlab_run(tmp_path, 1, 2, 16, tied=False)
    model, tok, _ = load_model(run)
    one = GptlabLM(model, tok, batch_size=1).loglikelihood(requests("loglikelihood", PAIRS))
    many = GptlabLM(model, tok, batch_size=4).loglikelihood(requests("loglikelihood", PAIRS))
    for (a, ga), (b, gb) in zip(one, many):
        assert a == pytest.approx(b, abs=1e-5) and ga == gb
    # the sum of log-probabilities is what a hand computation gives
    ctx, cont = tok.encode("a dog"), tok.encode(" ran")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont[:-1]])), -1)[0]
    hand = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
    (got, _), = GptlabLM(model, tok).loglikelihood(requests("loglikelihood", [("a dog", " ran")]))
    assert got == pytest.approx(hand, abs=1e-5)


@pytest.mark.slow
def test_gptlab_eval_runs_local_tasks_of_every_request_type(tmp_path, capsys):
    run = gptlab_run(tmp_path, 1, 2, 16, tied=True)
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "results.json"
    assert main(["eval", "--run", str(run), "--tasks", "tiny_mc,tiny_text,tiny_gen", "--include-path", str(tasks),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny_mc" in printed and "acc" in printed and "word_perplexity" in printed and "exact_match" in printed
    results = json.loads(out.read_text())["results"]
    assert 0 <= results["tiny_mc"]["acc,none"] <= 1
    assert math.isfinite(results["tiny_text"]["bits_per_byte,none"]) and results["tiny_text"]["bits_per_byte,none"] > 0
    assert results["tiny_gen"]["exact_match,none"] in (0.0, 0.5, 1.0)


def test_an_unknown_task_is_a_one_line_error(tmp_path, capsys):
    run = gptlab_run(tmp_path, 1, 2, 16, tied=True)
    assert main(["eval", "--run", str(run), "--tasks", "no_such_task_xyz", "--include-path",
                 str(write_tasks(tmp_path / "tasks"))]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task(s) no_such_task_xyz" in err and len(err.strip().splitlines()) == 1
