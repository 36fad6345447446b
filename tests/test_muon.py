"""Muon on the hidden matrices, AdamW on the rest: the same steps as the two torch optimizers side by side, exact
resume, and the loss falls."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from gptlab.config import ModelConfig
from gptlab.data import load_data
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model import GPT
from gptlab.train.checkpoint import checkpoint_dir
from gptlab.train.loop import Trainer, resume, train
from gptlab.train.optim import MuonAdamW, build_optimizer, hidden_matrices, param_groups
from tests.conftest import tiny_config
from tests.test_train import step_losses


def test_muon_updates_the_hidden_matrices_and_adamw_the_rest_exactly_as_torch_does():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=30, n_layer=2, n_head=2, n_embd=16, block_size=8))
    twin = copy.deepcopy(model)
    cfg = tiny_config("train.optimizer=muon", "train.lr=1e-2", "train.muon_lr_scale=2").train
    ours = build_optimizer(model, cfg)
    assert isinstance(ours, MuonAdamW)
    hidden = hidden_matrices(twin)  # the reference: torch's own AdamW and Muon on the same split
    ids = {id(p) for p in hidden}
    assert len(hidden) == 2 * 4 and id(twin.wte.weight) not in ids and all(p.dim() == 2 for p in hidden)
    groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in param_groups(twin, cfg.weight_decay)]
    adamw = torch.optim.AdamW(groups, lr=1e-2, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
    muon = torch.optim.Muon(hidden, lr=2e-2, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                            adjust_lr_fn="match_rms_adamw")
    x = torch.randint(0, 30, (4, 8))
    for _ in range(3):
        for group in ours.param_groups:  # what the training loop does with train.lr
            group["lr"] = 1e-2 * group.get("lr_scale", 1.0)
        for net, opts in ((model, [ours]), (twin, [adamw, muon])):
            torch.nn.functional.cross_entropy(net(x).flatten(0, 1), x.flatten()).backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


def test_the_state_dict_round_trips_and_refuses_another_layout():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=30, n_layer=1, n_head=2, n_embd=16, block_size=8))
    opt = build_optimizer(model, tiny_config("train.optimizer=muon").train)
    x = torch.randint(0, 30, (2, 8))
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    state = opt.state_dict()
    json.dumps(state["param_groups"])  # the groups go into a checkpoint's JSON
    again = build_optimizer(model, tiny_config("train.optimizer=muon").train)
    again.load_state_dict(state)
    assert again.state_dict()["state"].keys() == state["state"].keys()
    for i, s in state["state"].items():
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, again.state_dict()["state"][i][k])
    with pytest.raises(ValueError, match="parameter groups"):
        again.load_state_dict({"state": {}, "param_groups": state["param_groups"][:1]})


def test_training_with_muon_resumes_bit_exact_and_learns(char_data, tmp_path):
    cfg = tiny_config("train.optimizer=muon", "train.max_steps=16", "train.checkpoint_every=8", "train.eval_every=8",
                      "train.lr=1e-2")
    summary = train(char_data, tmp_path / "straight", cfg, progress=False)

    def crash(step, loss):
        if step == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tmp_path / "crashed", cfg, load_data(char_data), progress=False, on_step=crash).run()
    resume(tmp_path / "crashed", progress=False)
    assert step_losses(tmp_path / "crashed") == step_losses(tmp_path / "straight")
    a = load_file(str(checkpoint_dir(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(checkpoint_dir(tmp_path / "crashed") / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = step_losses(tmp_path / "straight")
    assert summary["val_loss"] < losses[1] - 0.5
    with pytest.raises(CheckpointError, match="cannot change train.optimizer"):
        resume(tmp_path / "straight", ["train.optimizer=adamw"], progress=False)


def test_bad_muon_settings_are_refused():
    with pytest.raises(ConfigError, match="train.muon_lr_scale"):
        tiny_config("train.optimizer=muon", "train.muon_lr_scale=0")
    with pytest.raises(ConfigError, match="train.optimizer"):
        tiny_config("train.optimizer=sgd")
