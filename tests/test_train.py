import json
import math

import pytest
import torch
from safetensors.torch import load_file

from gptlab.config import apply_overrides
from gptlab.data import load_data
from gptlab.errors import CheckpointError, GptlabError
from gptlab.model import GPT
from gptlab.run import load_model
from gptlab.train.checkpoint import checkpoint_dir
from gptlab.train.loop import Trainer, optimizer_step, resume, train
from gptlab.train.losses import lm_loss
from gptlab.train.metrics import read_metrics
from gptlab.train.optim import build_optimizer, lr_at, param_groups

from tests.conftest import tiny_config


def step_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def test_loss_falls(char_data, tmp_path):
    summary = train(char_data, tmp_path / "run", tiny_config("train.max_steps=60", "train.lr=3e-3",
                                                             "train.eval_every=60"), progress=False)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["loss"]
    assert first > 3.0 and summary["val_loss"] < first - 1.0


def test_resume_after_a_crash_is_bit_exact(char_data, tmp_path):
    cfg = tiny_config("train.max_steps=16", "train.checkpoint_every=8", "train.eval_every=8", "model.dropout=0.1")
    train(char_data, tmp_path / "straight", cfg, progress=False)

    def crash(step, loss):
        if step == 11:  # three steps past the checkpoint at 8: they are lost and must be redone identically
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tmp_path / "crashed", cfg, load_data(char_data), progress=False, on_step=crash).run()
    assert json.loads((tmp_path / "crashed/checkpoints/last.json").read_text())["step"] == 8
    resume(tmp_path / "crashed", progress=False)

    assert step_losses(tmp_path / "crashed") == step_losses(tmp_path / "straight")
    assert sorted(step_losses(tmp_path / "crashed")) == list(range(1, 17))  # no step logged twice
    a = load_file(str(checkpoint_dir(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(checkpoint_dir(tmp_path / "crashed") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_resumed_at_its_end_still_reports_its_final_val_loss(char_data, tmp_path):
    # a lesson cell killed between its last checkpoint and its summary is resumed this way: the summary it then
    # writes must carry the same final val loss, not None
    run = tmp_path / "run"
    first = train(char_data, run, tiny_config("train.max_steps=10"), progress=False)
    again = resume(run, progress=False)
    assert again["step"] == 10 and first["val_loss"] is not None and again["val_loss"] == first["val_loss"]


def test_resume_can_extend_training_but_not_change_the_run(char_data, tmp_path):
    run = tmp_path / "run"
    train(char_data, run, tiny_config("train.max_steps=10"), progress=False)
    with pytest.raises(CheckpointError, match=r"different model config \(model.n_layer\)"):
        resume(run, ["model.n_layer=3"], progress=False)
    with pytest.raises(CheckpointError, match="cannot change train.lr when resuming"):
        resume(run, ["train.lr=0.1"], progress=False)
    summary = resume(run, ["train.max_steps=14"], progress=False)
    assert summary["step"] == 14


def test_resume_with_other_data_is_refused(char_data, corpus_dir, tmp_path):
    from gptlab.data import prepare

    run = tmp_path / "run"
    train(char_data, run, tiny_config("train.max_steps=4"), progress=False)
    prepare(corpus_dir, tmp_path / "bpe", "bpe", vocab_size=300)
    with pytest.raises(CheckpointError, match="is not the data this run was trained on"):
        resume(run, data_dir=tmp_path / "bpe", progress=False)


def test_training_into_an_existing_run_is_refused(char_data, tmp_path):
    run = tmp_path / "run"
    train(char_data, run, tiny_config("train.max_steps=4"), progress=False)
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(char_data, run, tiny_config("train.max_steps=4"), progress=False)
    assert (run / "metrics.jsonl").read_bytes() == before


def test_corrupt_or_missing_checkpoints_are_clear_errors(char_data, tmp_path):
    run = tmp_path / "run"
    train(char_data, run, tiny_config("train.max_steps=4"), progress=False)
    weights = checkpoint_dir(run) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(run)
    weights.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_model(run)
    with pytest.raises(CheckpointError, match="not a gptlab run directory"):
        load_model(tmp_path)


def test_checkpoint_of_another_shape_is_refused(char_data, tmp_path):
    run = tmp_path / "run"
    train(char_data, run, tiny_config("train.max_steps=4"), progress=False)
    text = (run / "config.yaml").read_text().replace("n_embd: 32", "n_embd: 64")
    (run / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(run)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(char_data, tmp_path):
    run = tmp_path / "run"
    train(char_data, run, tiny_config("train.max_steps=10", "train.checkpoint_every=10"), progress=False)
    # what a kill mid-save leaves: a half-written temp directory that no pointer names
    partial = run / "checkpoints" / ".step-00000020.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    model, _, _ = load_model(run, "last")
    assert json.loads((run / "checkpoints/last.json").read_text())["step"] == 10
    resume(run, ["train.max_steps=20"], progress=False)
    assert not partial.exists() and json.loads((run / "checkpoints/last.json").read_text())["step"] == 20


def test_tied_weights_are_saved_once_and_retied(char_data, tmp_path):
    run = tmp_path / "run"
    train(char_data, run, tiny_config("train.max_steps=4"), progress=False)
    saved = load_file(str(checkpoint_dir(run) / "model.safetensors"))
    assert "lm_head.weight" not in saved and "wte.weight" in saved
    model, _, _ = load_model(run)
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


def test_gradient_accumulation_is_the_same_maths_at_any_split():
    cfg = tiny_config().train
    x = torch.randint(0, 40, (4, 16))
    y = torch.randint(0, 40, (4, 16))
    results = []
    for accum in (1, 2, 4):
        torch.manual_seed(0)
        model = GPT(tiny_config("model.vocab_size=40").model)
        opt = build_optimizer(model, cfg)
        t = apply_overrides(tiny_config(), [f"train.grad_accum={accum}"]).train
        micro = [(x[i: i + 4 // accum], y[i: i + 4 // accum]) for i in range(0, 4, 4 // accum)]
        loss, norm = optimizer_step(model, opt, micro, t, lr=1e-3)
        results.append((loss, norm, model.h[0].attn.c_attn.weight.detach().clone()))
    for loss, norm, w in results[1:]:
        assert abs(loss - results[0][0]) < 1e-5 and abs(norm - results[0][1]) < 1e-5
        assert torch.allclose(w, results[0][2], atol=1e-6)


@pytest.mark.parametrize("clip", [1e-3, 1e3, 0.0])  # clipping, a norm far below the limit, no clipping
def test_clipping_gives_torchs_clip_grad_norm_update(clip):
    cfg = apply_overrides(tiny_config(), [f"train.grad_clip={clip}"]).train
    batch = [(torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8)))]
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(GPT(tiny_config("model.vocab_size=40").model))
    ours, reference = models
    opt = build_optimizer(ours, cfg)
    _, norm = optimizer_step(ours, opt, batch, cfg, lr=1e-3)
    ref_opt = build_optimizer(reference, cfg)
    for group in ref_opt.param_groups:
        group["lr"] = 1e-3 * group.get("lr_scale", 1.0)
    x, y = batch[0]
    lm_loss(reference(x), y).backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip if clip > 0 else math.inf).item()
    ref_opt.step()
    assert norm == pytest.approx(expected, rel=1e-6)
    if clip == 1e-3:  # scaled by clip / norm: the norm is a sum in another order, equal to float32 rounding
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(ours.parameters(),
                                                                               reference.parameters()))
    else:  # not scaled at all, as torch's scale of exactly 1 leaves them
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), reference.parameters()))


def test_non_finite_loss_stops_before_the_update():
    cfg = tiny_config().train
    torch.manual_seed(0)
    model = GPT(tiny_config("model.vocab_size=40").model)
    opt = build_optimizer(model, cfg)
    with torch.no_grad():
        model.ln_f.weight[0] = float("nan")
    before = model.h[0].attn.c_attn.weight.detach().clone()
    batch = [(torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8)))]
    with pytest.raises(GptlabError, match="training loss became nan at step 8"):
        optimizer_step(model, opt, batch, cfg, lr=1e-3, step=7)
    assert torch.equal(model.h[0].attn.c_attn.weight, before)


def test_bf16_autocast_trains(char_data, tmp_path):
    summary = train(char_data, tmp_path / "run", tiny_config("train.dtype=bfloat16", "train.max_steps=6"),
                    progress=False)
    assert math.isfinite(summary["final_loss"])


def test_weight_decay_groups_skip_norms_biases_embeddings_and_count_ties_once():
    model = GPT(tiny_config("model.vocab_size=40").model)
    decay, no_decay = param_groups(model, 0.1)
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.wte.weight) not in decay_ids and id(model.ln_f.weight) not in decay_ids
    assert id(model.h[0].attn.c_attn.weight) in decay_ids and id(model.h[0].attn.c_attn.bias) not in decay_ids
    n = len(decay["params"]) + len(no_decay["params"])
    assert n == len({id(p) for p in model.parameters()})


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = apply_overrides(tiny_config(), ["train.warmup_steps=10", "train.max_steps=110", "train.lr=1e-3",
                                          "train.min_lr=1e-4"]).train
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5.5e-4) and lr_at(110, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_same_seed_same_run_other_seed_other_run(char_data, tmp_path):
    cfg = tiny_config("train.max_steps=5", "model.dropout=0.1")
    train(char_data, tmp_path / "a", cfg, progress=False)
    train(char_data, tmp_path / "b", cfg, progress=False)
    train(char_data, tmp_path / "c", apply_overrides(cfg, ["train.seed=7"]), progress=False)
    assert step_losses(tmp_path / "a") == step_losses(tmp_path / "b")
    assert step_losses(tmp_path / "a") != step_losses(tmp_path / "c")


def test_metrics_records_and_tensorboard_events(char_data, tmp_path):
    train(char_data, tmp_path / "run", tiny_config("train.max_steps=4", "train.eval_every=2",
                                                   "train.tensorboard=true"), progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    step_record = next(r for r in records if "loss" in r)
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"} <= step_record.keys()
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_a_callback_sees_every_step_adds_to_the_log_and_ends(char_data, tmp_path):
    from gptlab.train.callbacks import Callback
    from gptlab.train.metrics import read_metrics

    class Recorder(Callback):
        def __init__(self):
            self.steps, self.ended = [], False

        def on_step(self, trainer, step, loss):
            self.steps.append((step, loss))

        def on_log(self, trainer):
            return {"recorded": len(self.steps)}

        def on_end(self, trainer):
            self.ended = True

    recorder = Recorder()
    Trainer(tmp_path / "run", tiny_config("train.max_steps=6", "train.log_every=2"), load_data(char_data),
            progress=False, quiet=True, callbacks=[recorder]).run()
    assert [s for s, _ in recorder.steps] == list(range(1, 7)) and recorder.ended
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "recorded" in r]
    assert [(r["step"], r["recorded"]) for r in logged] == [(2, 2), (4, 4), (6, 6)]
    assert all("max_attn_logit" in r for r in logged)  # the built-in probe still logs beside it
