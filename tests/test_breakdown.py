"""`gptlab bench train --breakdown`: where a step's time goes, by category, for both sides."""

import json

import pytest

from gptlab.bench.breakdown import CATEGORIES, OTHER, category, format_breakdown, step_breakdown
from gptlab.cli import main


@pytest.mark.parametrize("name,expected", [
    ("aten::mm", "matrix products"), ("aten::addmm", "matrix products"),
    ("_CausalAttentionBackward", "attention"), ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("_CrossEntropy", "loss"), ("aten::_log_softmax_backward_data", "loss"),
    ("aten::_fused_adamw_", "optimizer"), ("aten::native_layer_norm_backward", "layer norm"),
    ("aten::linalg_vector_norm", "gradient norm"), ("aten::dot", "gradient norm"),
    ("_GeluTanhBackward", "activation"), ("aten::embedding_dense_backward", "embedding"),
    ("aten::copy_", "copies and fills"), ("aten::add", "other elementwise"), ("aten::add_", "other elementwise"),
    ("aten::view", OTHER),
])
def test_operations_fall_in_the_category_of_what_they_do(name, expected):
    assert category(name) == expected


def test_a_step_is_split_into_every_category():
    import torch

    x, w = torch.randn(64, 64), torch.randn(64, 64, requires_grad=True)

    def step():
        torch.nn.functional.layer_norm(x @ w, (64,)).sum().backward()

    seconds = step_breakdown(step, steps=2)
    assert list(seconds) == [label for label, _ in CATEGORIES] + [OTHER]
    assert seconds["matrix products"] > 0 and seconds["layer norm"] > 0 and seconds["loss"] == 0
    table = format_breakdown({"a": seconds, "b": seconds})
    assert table[1].startswith("matrix products") and table[-1].startswith("total") and len(table) == len(seconds) + 2


def test_bench_train_prints_and_records_the_breakdown(tmp_path, capsys):
    out = tmp_path / "train.json"
    tiny = ["--set", "model.n_layer=1", "--set", "model.n_embd=32", "--set", "model.n_head=2",
            "--set", "model.block_size=32", "--set", "model.vocab_size=64", "--set", "train.batch_size=2"]
    assert main(["bench", "train", *tiny, "--steps", "1", "--warmup", "1", "--vs", "transformers", "--breakdown",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "where a step's time goes" in printed and "matrix products are" in printed
    result = json.loads(out.read_text())
    sides = result["breakdown_ms_per_step"]
    assert set(sides) == {"gptlab", "transformers"} and sides["gptlab"]["matrix products"] > 0
    assert result["ratio_ceiling_vs_transformers"] > 0 and 0 < result["matrix_product_share"] < 1
