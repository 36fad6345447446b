"""Transforms as a recorded recipe: a new technique is one entry in TRANSFORMS, and loading replays the recipe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gptlab import transforms
from gptlab.config import ModelConfig, RunConfig
from gptlab.errors import CheckpointError
from gptlab.model.filters import replace_module
from gptlab.model.gpt import GPT
from gptlab.run import load_model, write_model_run
from gptlab.tokenizers import CharTokenizer


class Gated(nn.Module):
    """A toy technique: a linear layer followed by a learnable per-output gain (a weight the base model lacks)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.gain = nn.Parameter(torch.ones(linear.out_features))

    def forward(self, x):
        return self.linear(x) * self.gain


def gate(model: nn.Module, names: list[str]) -> None:
    for name in names:
        replace_module(model, name, Gated(model.get_submodule(name)))


def test_a_toy_transform_needs_one_registry_entry_to_record_and_reload(tmp_path, monkeypatch):
    monkeypatch.setitem(transforms.TRANSFORMS, "gate", transforms.Transform(
        layers=lambda model: [n for n, m in model.named_modules() if isinstance(m, Gated)],
        rebuild=lambda model, cfg, step: gate(model, step["layers"])))
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(vocab_size=31, n_layer=2, n_head=2, n_embd=32, block_size=16))
    model = GPT(cfg.model)
    gate(model, ["h.0.mlp.c_fc", "h.1.attn.c_proj"])
    with torch.no_grad():
        model.h[0].mlp.c_fc.gain.uniform_(0.5, 1.5)  # weights only the transformed structure can hold
    idx = torch.randint(0, 31, (2, 16))
    with torch.no_grad():
        expected = model(idx)
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,\n"), with_eot=True)
    write_model_run(tmp_path / "run", cfg, tok, model, {"transforms": [transforms.recorded(model, "gate")]})
    loaded, _, _ = load_model(tmp_path / "run")
    assert isinstance(loaded.h[0].mlp.c_fc, Gated) and isinstance(loaded.h[1].attn.c_proj, Gated)
    assert not isinstance(loaded.h[1].mlp.c_fc, Gated)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), expected, rtol=0, atol=0)


def test_an_unknown_transform_in_a_run_is_a_clear_error(tmp_path):

    cfg = RunConfig(model=ModelConfig(vocab_size=31, n_layer=1, n_head=2, n_embd=16, block_size=8))
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,\n"), with_eot=True)
    write_model_run(tmp_path / "run", cfg, tok, GPT(cfg.model), {"transforms": [{"name": "sparsify"}]})
    with pytest.raises(CheckpointError, match="unknown transform .*sparsify.*this gptlab knows lora, qat, quantize"):
        load_model(tmp_path / "run")


def test_a_toy_transform_the_config_asks_for_is_applied_by_training_recorded_and_replayed(char_data, tmp_path,
                                                                                          monkeypatch):
    from gptlab.data import load_data
    from gptlab.rundir import run_info
    from gptlab.train.loop import Trainer
    from tests.conftest import tiny_config

    monkeypatch.setitem(transforms.TRANSFORMS, "gate", transforms.Transform(
        layers=lambda model: [n for n, m in model.named_modules() if isinstance(m, Gated)],
        rebuild=lambda model, cfg, step: gate(model, step.get("layers", ["h.1.mlp.c_fc"])),
        in_training=lambda cfg: cfg.train.seed == 7))
    trainer = Trainer(tmp_path / "run", tiny_config("train.seed=7", "train.max_steps=3", "train.checkpoint_every=3"),
                      load_data(char_data), progress=False, quiet=True)
    trainer.run()
    assert run_info(tmp_path / "run")["transforms"] == [{"name": "gate", "layers": ["h.1.mlp.c_fc"]}]
    gain = trainer.model.h[1].mlp.c_fc.gain
    assert gain.requires_grad and not torch.equal(gain.detach(), torch.ones_like(gain))  # it trained
    loaded, _, _ = load_model(tmp_path / "run", "last")
    torch.testing.assert_close(loaded.h[1].mlp.c_fc.gain, gain.detach(), rtol=0, atol=0)
