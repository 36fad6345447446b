"""Stability knobs and alarms: non-finite policies, spike detection, probes, QK-norm, z-loss, norms, schedules."""

import math

import pytest
import torch
from torch import nn

from gptlab.config import ModelConfig, TrainConfig
from gptlab.data import load_data
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.train.checkpoint import load_checkpoint
from gptlab.train.losses import z_loss
from gptlab.train.callbacks import SpikeDetector
from gptlab.train.loop import NonFiniteStep, Trainer
from gptlab.train.metrics import read_metrics
from gptlab.train.optim import lr_at, param_groups

from tests.conftest import tiny_config


def poison_logits_at(trainer: Trainer, steps: set[int]):
    """Make the forward pass of the given (1-based) training steps produce NaN logits: a bad batch."""
    def hook(module, args, output):
        if module.training and trainer.step + 1 in steps:
            return output * float("nan")
        return output
    return trainer.model.lm_head.register_forward_hook(hook)


def all_checkpoints_finite(run_dir) -> bool:
    ok = True
    for pointer in ("last", "best"):
        ckpt = load_checkpoint(run_dir, pointer, with_state=False)
        ok &= all(bool(torch.isfinite(t).all()) for t in ckpt.model.values())
    return ok


def test_stop_policy_names_the_step_and_keeps_checkpoints_clean(char_data, tmp_path):
    trainer = Trainer(tmp_path / "run", tiny_config("train.max_steps=20", "train.checkpoint_every=5"),
                      load_data(char_data), progress=False, quiet=True)
    poison_logits_at(trainer, {13})
    with pytest.raises(NonFiniteStep, match="training loss became nan at step 13; nothing was saved"):
        trainer.run()
    assert load_checkpoint(tmp_path / "run", "last", with_state=False).step == 10
    assert all_checkpoints_finite(tmp_path / "run")


def test_skip_policy_drops_the_bad_batch_and_logs_it(char_data, tmp_path):
    trainer = Trainer(tmp_path / "run", tiny_config("train.on_nonfinite=skip"), load_data(char_data),
                      progress=False, quiet=True)
    poison_logits_at(trainer, {7, 8})
    summary = trainer.run()
    assert summary["step"] == 20 and summary["skipped"] == 2 and math.isfinite(summary["val_loss"])
    events = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("event") == "skipped"]
    assert [e["step"] for e in events] == [7, 8]
    assert all_checkpoints_finite(tmp_path / "run")


def test_rollback_policy_returns_to_the_last_checkpoint_with_a_lower_lr(char_data, tmp_path):
    cfg = tiny_config("train.on_nonfinite=rollback", "train.checkpoint_every=5", "train.rollback_lr_factor=0.25")
    trainer = Trainer(tmp_path / "run", cfg, load_data(char_data), progress=False, quiet=True)

    def corrupt(step, loss):  # a parameter goes bad after step 12: the next step's loss is NaN
        if step == 12 and trainer.counts["rollbacks"] == 0:
            with torch.no_grad():
                trainer.model.h[0].mlp.c_fc.weight[0, 0] = float("nan")

    trainer.on_step = corrupt
    summary = trainer.run()
    assert summary["step"] == 20 and summary["rollbacks"] == 1 and summary["lr_scale"] == 0.25
    (event,) = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("event") == "rollback"]
    assert (event["step"], event["to_step"]) == (13, 10)
    assert all_checkpoints_finite(tmp_path / "run")
    assert load_checkpoint(tmp_path / "run", "last", with_state=False).meta["lr_scale"] == 0.25  # survives resume


def test_rollback_without_a_checkpoint_is_a_clear_error(char_data, tmp_path):
    trainer = Trainer(tmp_path / "run", tiny_config("train.on_nonfinite=rollback"), load_data(char_data),
                      progress=False, quiet=True)
    poison_logits_at(trainer, {3})
    with pytest.raises(GptlabError, match="rollback impossible: no checkpoint to return to yet"):
        trainer.run()


def test_a_checkpoint_with_nan_weights_is_refused(char_data, tmp_path):
    trainer = Trainer(tmp_path / "run", tiny_config(), load_data(char_data), progress=False, quiet=True)
    trainer.save()
    with torch.no_grad():
        trainer.model.ln_f.weight[0] = float("inf")
    trainer.step = 5
    with pytest.raises(GptlabError, match="refusing to checkpoint step 5: ln_f.weight"):
        trainer.save()
    assert load_checkpoint(tmp_path / "run", "last", with_state=False).step == 0


def test_spike_detector_flags_jumps_not_trends():
    detector = SpikeDetector(window=20, threshold=6.0)
    smooth = [4.0 - 0.01 * i + 0.002 * ((-1) ** i) for i in range(60)]
    assert not any(detector.check(v) for v in smooth)
    assert detector.check(smooth[-1] + 1.0)  # a jump far outside the recent spread
    assert not detector.check(smooth[-1])


def test_probes_are_logged_and_match_an_explicit_computation(char_data, tmp_path):
    trainer = Trainer(tmp_path / "run", tiny_config("train.max_steps=4"), load_data(char_data), progress=False,
                      quiet=True)
    trainer.run()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "max_attn_logit" in r]
    assert len(records) == 4 and all(r["max_attn_logit"] > 0 and r["max_output_logit"] > 0 for r in records)
    model, cfg = trainer.model.eval(), trainer.cfg.model
    x = torch.from_numpy(trainer.data.val[: cfg.block_size].astype("int64"))[None]
    with torch.no_grad():  # the first layer's scores, written out
        h = model.positions.embed(model.wte(x), torch.arange(cfg.block_size))
        q, k, _ = model.h[0].attn.c_attn(model.h[0].ln_1(h)).view(1, -1, 3, cfg.n_head, cfg.head_dim) \
            .permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)).masked_fill(
            torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool).triu(1), -math.inf)
    probe = trainer.probe()
    assert probe["max_attn_logit"] >= float(scores.max()) - 1e-6
    with torch.no_grad():
        assert probe["max_output_logit"] == pytest.approx(float(model(x).abs().max()), rel=1e-6)


def attention_of(qk_norm: bool, scale: float):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8, qk_norm=qk_norm)).eval()
    with torch.no_grad():
        model.h[0].attn.c_attn.weight[:32] *= scale  # queries and keys only
    return model(torch.arange(8)[None] % 11)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    # (RMSNorm's eps is negligible once queries and keys are not tiny)
    assert torch.allclose(attention_of(True, 10.0), attention_of(True, 100.0), atol=1e-5)
    assert not torch.allclose(attention_of(False, 10.0), attention_of(False, 100.0), atol=1e-3)
    model = GPT(ModelConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8, qk_norm=True))
    model(torch.arange(8)[None]).sum().backward()
    assert model.h[0].attn.q_norm.weight.grad.abs().sum() > 0  # the gains learn


def test_z_loss_value_and_gradient_follow_its_definition():
    logits = torch.randn(3, 5, 7, requires_grad=True)
    value = z_loss(logits)
    lse = torch.logsumexp(logits.detach(), -1)
    assert float(value) == pytest.approx(float(lse.pow(2).mean()))
    value.backward()
    expected = 2 * lse[..., None] * logits.detach().softmax(-1) / (3 * 5)
    torch.testing.assert_close(logits.grad, expected)


def test_softcap_bounds_logits_and_post_ln_normalises_each_block():
    torch.manual_seed(0)
    capped = GPT(ModelConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=8, logit_softcap=0.5))
    with torch.no_grad():
        capped.lm_head.weight.mul_(1000)
    assert capped(torch.arange(8)[None]).abs().max() <= 0.5  # (tanh saturates to exactly 1 in fp32)
    post = GPT(ModelConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=8, norm_placement="post",
                           bias=False))
    outputs = []
    post.h[1].register_forward_hook(lambda m, a, out: outputs.append(out))
    post(torch.arange(8)[None])
    torch.testing.assert_close(outputs[0].mean(-1), torch.zeros(1, 8), atol=1e-5, rtol=0)
    assert isinstance(post.ln_f, nn.Identity)
    rms = GPT(ModelConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8, norm="rmsnorm"))
    assert isinstance(rms.h[0].ln_1, nn.RMSNorm) and isinstance(rms.ln_f, nn.RMSNorm)
    plain = GPT(ModelConfig(vocab_size=100, n_layer=8, n_head=2, n_embd=128, block_size=8, init="plain"))
    assert plain.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_wsd_schedule_is_stable_then_decays_linearly():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1, schedule="wsd", decay_fraction=0.2)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[9] == 1.0 and all(v == 1.0 for v in lrs[10:82])
    assert lrs[99] == pytest.approx(0.1 + 0.9 / 18) and all(a > b for a, b in zip(lrs[82:], lrs[83:]))


def test_decay_embeddings_moves_the_tables_into_the_decayed_group():
    model = GPT(ModelConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8))
    off, on = param_groups(model, 0.1), param_groups(model, 0.1, decay_embeddings=True)
    assert any(p is model.wte.weight for p in off[1]["params"])
    assert any(p is model.wte.weight for p in on[0]["params"])
    assert all(p.dim() == 1 for p in on[1]["params"])  # norms and biases never decay
