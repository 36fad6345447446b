"""The training loop: AdamW, warmup + decay, clipping, accumulation, autocast, evaluation, exact resume.

Everything that decides the next step (weights, optimizer moments, the step, the sampler's and torch's RNG
states) is in the checkpoint, so a run stopped at step N and resumed reaches the same losses and weights,
bit for bit, as one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from gptlab.adapters.lora import trainable_report
from gptlab.allocator import retain_freed_memory
from gptlab.config import RunConfig, TrainConfig, to_dict
from gptlab.data import BatchSampler, TokenData, eval_batches, load_data
from gptlab.errors import CheckpointError, ConfigError, GptlabError
from gptlab.lock import RunLock
from gptlab.memory import require_memory, training_bytes
from gptlab.model import GPT, count_parameters, flops_per_token
from gptlab.rundir import check_run_out, create_run, load_run_config, run_data_dir, run_info, same_tokenizer
from gptlab.train.checkpoint import (Checkpoint, load_checkpoint, load_model_state, model_state, optimizer_tensors,
                                     restore_optimizer, save_checkpoint)
from gptlab.train.callbacks import (Callback, LogitProbe, NonFinitePolicy, PeftExport, QATWatch, ResumeContinuity,
                                    SpikeWatch)
from gptlab.train.distributed import Distributed, set_threads
from gptlab.train.grad_norm import total_norm
from gptlab.train.losses import lm_loss, z_loss
from gptlab.train.metrics import MetricsLog
from gptlab.transforms import apply_for_training
from gptlab.train.optim import build_optimizer, lr_at

# Settings a resumed run may change: they do not alter the sequence of updates.
RESUMABLE_CHANGES = {"max_steps", "eval_every", "checkpoint_every", "log_every", "threads", "tensorboard"}


def check_device(device: str, setting: str = "train.device") -> None:
    """A clear error before anything is written, rather than torch's assertion deep inside the first step."""
    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"{setting}=cuda but {why}; use --device cpu, or install a CUDA build of torch "
                          "on a machine with a GPU")


def autocast(cfg: TrainConfig):
    if cfg.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=cfg.device, dtype=torch.bfloat16)


@torch.no_grad()
def estimate_loss(model: GPT, tokens, cfg: RunConfig, dist: Distributed | None = None) -> float:
    """Mean loss over a fixed set of `eval_batches` random windows (the same ones at every evaluation); under
    several processes each evaluates its share of the batches and all get the same mean."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    with autocast(cfg.train):
        for i, (x, y) in enumerate(eval_batches(tokens, cfg.train.eval_batches, cfg.train.batch_size,
                                                cfg.model.block_size, seed=cfg.train.seed + 1)):
            if i % world == rank:
                x, y = x.to(cfg.train.device), y.to(cfg.train.device)
                total, count = total + lm_loss(model(x), y).item(), count + 1
    model.train(was_training)
    if dist is not None:
        total, count = dist.sum(total, count)
    return total / count


def model_config_for(cfg: RunConfig, data: TokenData) -> RunConfig:
    """The data's tokenizer decides the vocabulary size."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=data.meta["vocab_size"]))


def check_resume_changes(saved: RunConfig, wanted: RunConfig) -> None:
    if saved.model != wanted.model:
        diff = [k for k, v in to_dict(wanted.model).items() if to_dict(saved.model)[k] != v]
        raise CheckpointError(f"cannot resume with a different model config ({', '.join('model.' + k for k in diff)}); "
                              "start a new run instead")
    if saved.lora != wanted.lora:
        raise CheckpointError("cannot resume with different LoRA settings (lora.*); start a new run instead")
    if saved.quant != wanted.quant:
        raise CheckpointError("cannot resume with different quantization settings (quant.*); start a new run instead")
    changed = [k for k, v in to_dict(wanted.train).items() if to_dict(saved.train)[k] != v]
    bad = [k for k in changed if k not in RESUMABLE_CHANGES]
    if bad:
        raise CheckpointError(f"cannot change {', '.join('train.' + k for k in bad)} when resuming (it would change "
                              f"the run); allowed: {', '.join(sorted(RESUMABLE_CHANGES))}")


class NonFiniteStep(GptlabError):
    """A step whose loss or gradient was not finite; nothing of it reached the weights."""

    def __init__(self, step: int, what: str, value: float, cfg: TrainConfig):
        self.step, self.what = step, what
        super().__init__(f"training {what} became {value} at step {step}; nothing was saved from this step. Lower "
                         f"train.lr (now {cfg.lr}) or raise train.warmup_steps, then resume; or set "
                         "train.on_nonfinite=skip (drop such batches) or rollback (return to the last checkpoint "
                         "with a lower learning rate)")


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches, cfg: TrainConfig,
                   lr: float, step: int = 0, dist: Distributed | None = None) -> tuple[float, float]:
    """One update from `cfg.grad_accum` micro-batches: the loss is their mean, whatever the split.

    Returns the cross-entropy loss (without the z-loss term) and the gradient norm before clipping. A non-finite
    loss or gradient raises `NonFiniteStep` before any update, with the gradients cleared. Under several
    processes (`dist`, `model` wrapped by it) each takes its rows of every global micro-batch, and the loss
    returned is the global one on every rank, so every rank takes the same decisions.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    total = 0.0
    for i, (x, y) in enumerate(micro_batches):
        if dist is not None:
            x, y = dist.shard(x), dist.shard(y)
        x, y = x.to(cfg.device), y.to(cfg.device)
        with dist.no_sync(model, last=i == cfg.grad_accum - 1) if dist is not None else contextlib.nullcontext():
            with autocast(cfg):
                logits = model(x)
                ce = lm_loss(logits, y)
                loss = ce + cfg.z_loss * z_loss(logits) if cfg.z_loss > 0 else ce
            (loss / cfg.grad_accum).backward()
        total += ce.item() / cfg.grad_accum
    if dist is not None:
        total = dist.mean(total)
    if not math.isfinite(total):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteStep(step + 1, "loss", total, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = total_norm([p.grad for p in params if p.grad is not None])
    grad_norm = norm.item()
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteStep(step + 1, "gradient norm", grad_norm, cfg)
    # torch's clip_grad_norm_ multiplies every gradient by min(1, clip / norm) even when that is 1 (a pass over
    # all of them: 24 ms of a 124M step on 2 Xeon cores); scaling only when it is below 1 gives the same gradients
    if cfg.grad_clip > 0 and (cfg.grad_clip / (norm + 1e-6)).item() < 1.0:
        torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, grad_norm


class NullMetrics:
    """The metrics log of a process that is not rank 0: only rank 0 writes."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    def __init__(self, run_dir: str | Path, cfg: RunConfig, data: TokenData, resume: bool = False,
                 progress: bool | None = None, on_step: Callable[[int, float], None] | None = None,
                 quiet: bool = False, init_state: dict | None = None, info: dict | None = None,
                 callbacks: list[Callback] | None = None):
        """`on_step(step, loss)` is called after every optimizer step (progress reporting, tests); `callbacks`
        are added after the ones the config asks for (gptlab.train.callbacks).

        Without a progress bar each evaluation prints a line, unless `quiet` (runs inside a lesson grid).
        `init_state` starts a new run from these weights (fine-tuning); LoRA adapters (`cfg.lora.r > 0`) are added
        after it, so only they train. `info` is recorded in run.json (e.g. the base run).
        """
        self.run_dir, self.data, self.progress, self.on_step = Path(run_dir), data, progress, on_step
        self.quiet = quiet
        self.cfg = cfg = model_config_for(cfg, data)
        data.check_fits(cfg.model.block_size)
        check_device(cfg.train.device)
        self.dist = Distributed(cfg.train.device)
        self.dist.check_batch(cfg.train.batch_size)
        require_memory(training_bytes(cfg.model, cfg.train.batch_size // self.dist.world, 0.0 if cfg.lora.r else 1.0),
                       f"training this model at train.batch_size={cfg.train.batch_size}",
                       "lower train.batch_size (raise train.grad_accum to keep the tokens per step) or shrink the model")
        if not self.dist.main:
            self.progress, self.quiet = False, True
        self.lock = RunLock(run_dir).acquire() if self.dist.main else None  # one writer per run directory
        try:
            self._build(cfg, data, resume, init_state, info, list(callbacks or []))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _build(self, cfg: RunConfig, data: TokenData, resume: bool, init_state: dict | None, info: dict | None,
               extra: list[Callback]):
        self.threads = set_threads(cfg.train.threads)
        retain_freed_memory()  # every step's large buffers reuse the last step's pages (gptlab.allocator)
        torch.manual_seed(cfg.train.seed)
        self.model = GPT(cfg.model).to(cfg.train.device)
        if init_state is not None:
            load_model_state(self.model, init_state, "the initial weights")
        if cfg.quant.qat != "none" and cfg.lora.r > 0:
            raise CheckpointError("quantization-aware training with LoRA adapters is not supported; train one "
                                  "or the other (quant.qat=none or lora.r=0)")
        transforms = apply_for_training(self.model, cfg)  # recorded in run.json, replayed when the run is loaded
        self.callbacks: list[Callback] = []
        if cfg.quant.qat != "none":
            self.callbacks.append(QATWatch(self.model, cfg.quant))
        self.callbacks += [SpikeWatch(cfg.train.spike_window, cfg.train.spike_threshold), LogitProbe()]
        if cfg.lora.r > 0:
            self.callbacks.append(PeftExport())
        self.callbacks += extra
        self.nonfinite = NonFinitePolicy(cfg.train.on_nonfinite, cfg.train.rollback_lr_factor)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.sampler = BatchSampler(data.train, cfg.train.batch_size, cfg.model.block_size, seed=cfg.train.seed)
        self.step, self.best_val, self.elapsed = 0, math.inf, 0.0
        self.lr_scale = 1.0  # lowered by each rollback after a non-finite step
        self.counts = {"spikes": 0, "skipped": 0, "rollbacks": 0}
        self.peaks = {"max_attn_logit": 0.0, "max_output_logit": 0.0}
        if resume:
            self.restore()
        elif self.dist.main:
            create_run(self.run_dir, cfg, data, {**(info or {}), "transforms": transforms})
        self.dist.barrier()
        if cfg.train.activation_checkpointing:
            from gptlab.train.efficiency import checkpoint_blocks

            checkpoint_blocks(self.model)
        self.parallel_model = self.dist.wrap(self.model)  # the model the optimizer step runs through
        if cfg.train.compile:  # checkpoints keep saving self.model, the plain module
            self.parallel_model = torch.compile(self.parallel_model)
        tb = self.run_dir / "tensorboard" if cfg.train.tensorboard else None
        self.metrics = (MetricsLog(self.run_dir / "metrics.jsonl", self.step if resume else None, tb)
                        if self.dist.main else NullMetrics())
        if resume and self.dist.main:  # the losses that led to the checkpoint, as the metrics log kept them
            self.callbacks.append(ResumeContinuity([(r["step"], r["loss"]) for r in self.metrics.kept
                                                    if "event" not in r and isinstance(r.get("loss"), float)]))
        self.flops_per_token = flops_per_token(self.model, cfg.model.block_size)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _state(self) -> Checkpoint:
        tensors, groups = optimizer_tensors(self.optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.sampler"] = self.sampler.state()
        meta = {"best_val": self.best_val if math.isfinite(self.best_val) else None, "elapsed": self.elapsed,
                "param_groups": groups, "config": to_dict(self.cfg), "lr_scale": self.lr_scale,
                "counts": self.counts, "peaks": self.peaks}
        return Checkpoint(self.step, model_state(self.model), tensors, meta)

    def restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir, "last")
        load_model_state(self.model, ckpt.model, f"checkpoint of {self.run_dir}")
        restore_optimizer(self.optimizer, ckpt.tensors, ckpt.meta["param_groups"])
        torch.set_rng_state(ckpt.tensors["rng.torch"])
        self.sampler.load_state(ckpt.tensors["rng.sampler"])
        self.step = ckpt.step
        self.best_val = ckpt.meta["best_val"] if ckpt.meta.get("best_val") is not None else math.inf
        self.elapsed = ckpt.meta.get("elapsed", 0.0)
        self.lr_scale = ckpt.meta.get("lr_scale", 1.0)
        self.counts = {**self.counts, **ckpt.meta.get("counts", {})}
        self.peaks = {**self.peaks, **ckpt.meta.get("peaks", {})}

    def save(self, best: bool = False) -> None:
        for name, p in self.model.named_parameters():  # never write a checkpoint that cannot be resumed from
            if not torch.isfinite(p).all():
                raise GptlabError(f"refusing to checkpoint step {self.step}: {name} holds non-finite values; "
                                  "the previous checkpoint is intact")
        if self.dist.main:
            save_checkpoint(self.run_dir, self._state(), ("last", "best") if best else ("last",))
        self.dist.barrier()  # a rollback on any rank may read it next

    def probe(self) -> dict[str, float]:
        """What the logging callbacks add to a step record now (logit probe, QAT gradient flow)."""
        out: dict[str, float] = {}
        for cb in self.callbacks:
            out.update(cb.on_log(self))
        return out

    # -- one optimizer step -----------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, float] | None:
        """One optimizer step: (loss, lr, grad norm), or None when a non-finite step was skipped or rolled back."""
        lr = lr_at(self.step, self.cfg.train) * self.lr_scale
        micro_batches = (self.sampler.next() for _ in range(self.cfg.train.grad_accum))
        try:
            loss, grad_norm = optimizer_step(self.parallel_model, self.optimizer, micro_batches, self.cfg.train, lr,
                                             self.step, self.dist)
        except NonFiniteStep as e:
            self.nonfinite.handle(self, e)  # raises (stop), or drops the batch (skip), or returns to a checkpoint
            return None
        self.step += 1
        return loss, lr, grad_norm

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg.train
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.cfg.model.block_size
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=(not self.progress) if self.progress is not None else None, file=sys.stderr)
        quiet_bar = bar.disable
        self.model.train()
        window_start, window_steps, loss = time.perf_counter(), 0, math.nan
        last_val = None
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                result = self.train_step()
                self.elapsed += time.perf_counter() - t0
                if result is None:  # skipped or rolled back: the bar follows the step
                    bar.n = self.step
                    bar.refresh()
                    continue
                loss, lr, grad_norm = result
                window_steps += 1
                bar.update(1)
                for cb in self.callbacks:
                    cb.on_step(self, self.step, loss)
                if self.on_step is not None:
                    self.on_step(self.step, loss)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    dt = time.perf_counter() - window_start
                    tps = window_steps * tokens_per_step / dt if dt > 0 else 0.0
                    self.metrics.log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                      "tokens_per_s": tps, "elapsed": self.elapsed,
                                      **(self.probe() if self.dist.main else {})})
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
                    window_start, window_steps = time.perf_counter(), 0
                is_last = self.step == cfg.max_steps
                if self.step % cfg.eval_every == 0 or is_last:
                    last_val = estimate_loss(self.model, self.data.val, self.cfg, self.dist)
                    self.metrics.log({"step": self.step, "val_loss": last_val, "elapsed": self.elapsed})
                    if quiet_bar and not self.quiet:
                        print(f"step {self.step}/{cfg.max_steps}  loss {loss:.4f}  val {last_val:.4f}  "
                              f"{self.elapsed:.0f}s", file=sys.stderr, flush=True)
                    elif not quiet_bar:
                        bar.write(f"step {self.step:>6}: val loss {last_val:.4f}")
                    if last_val < self.best_val:
                        self.best_val = last_val
                        self.save(best=True)
                    elif self.step % cfg.checkpoint_every == 0 or is_last:
                        self.save()
                elif self.step % cfg.checkpoint_every == 0:
                    self.save()
            if last_val is None and self.step == cfg.max_steps:
                # resumed at the end (e.g. killed between its last checkpoint and whatever came after): the final
                # evaluation is not in this process, so the summary reads it again (the same fixed windows)
                last_val = estimate_loss(self.model, self.data.val, self.cfg, self.dist)
            for cb in self.callbacks:
                cb.on_end(self)
        finally:
            bar.close()
            self.metrics.close()
            self.release()
        return self.summary(loss, last_val)

    def summary(self, loss: float, val: float | None) -> dict[str, Any]:
        n_tokens = self.step * self.cfg.train.batch_size * self.cfg.train.grad_accum * self.cfg.model.block_size
        return {"step": self.step, "final_loss": loss, "val_loss": val, "best_val_loss": self.best_val,
                "elapsed_s": self.elapsed, "tokens": n_tokens,
                "tokens_per_s": n_tokens / self.elapsed if self.elapsed else None,
                "parameters": count_parameters(self.model), "threads": self.threads, **self.counts, **self.peaks,
                "lr_scale": self.lr_scale}


def train(data_dir: str | Path, out: str | Path, cfg: RunConfig, progress: bool | None = None,
          init_from: str | Path | None = None) -> dict[str, Any]:
    """Start a new run in `out` on the data in `data_dir`, from scratch or from the weights of run `init_from`."""
    check_run_out(out)
    data = load_data(data_dir)
    if init_from is None:
        return Trainer(out, cfg, data, resume=False, progress=progress).run()
    from gptlab.run import load_model

    source, source_tok, source_cfg = load_model(init_from, "best")
    if data.meta["vocab_size"] != source_cfg.model.vocab_size:
        raise CheckpointError(f"{data.directory} has a {data.meta['vocab_size']}-token vocabulary but {init_from} "
                              f"was trained with {source_cfg.model.vocab_size}; prepare the data with the same tokenizer")
    if not same_tokenizer(source_tok, Path(init_from) / "tokenizer", data):
        raise CheckpointError(f"the tokenizer of {data.directory} differs from that of {init_from}; "
                              "prepare the data with the same tokenizer")
    model_changes = {k for k, v in to_dict(cfg.model).items() if v != to_dict(RunConfig().model)[k]} - {"dropout"}
    if model_changes:
        raise CheckpointError(f"--init-from takes the model config of {init_from}; only model.dropout may be set "
                              f"(got {', '.join('model.' + k for k in sorted(model_changes))})")
    if source_cfg.lora.r > 0:
        raise CheckpointError(f"{init_from} is a LoRA fine-tune; fold it into a plain run first with "
                              f"`gptlab merge --run BASE_RUN --adapter {init_from} --out MERGED_RUN`")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(source_cfg.model, dropout=cfg.model.dropout))
    if cfg.lora.r > 0:
        print(f"LoRA ({cfg.lora.scaling}): r {cfg.lora.r}, alpha {cfg.lora.alpha:g}, effective scale "
              f"{cfg.lora.scale:.4g} on {cfg.lora.targets}", flush=True)  # information: stdout; stderr is for errors
    trainer = Trainer(out, cfg, data, resume=False, progress=progress, init_state=model_state(source),
                      info={"init_from": str(Path(init_from).resolve())})
    if cfg.lora.r > 0:
        print(trainable_report(trainer.model), flush=True)
    return trainer.run()


def resume(run_dir: str | Path, overrides: list[str] | None = None, data_dir: str | Path | None = None,
           progress: bool | None = None) -> dict[str, Any]:
    """Continue the run in `run_dir` from its last checkpoint; only `RESUMABLE_CHANGES` may be overridden."""
    from gptlab.config import apply_overrides

    saved = load_run_config(run_dir)
    wanted = apply_overrides(saved, overrides or [])
    check_resume_changes(saved, wanted)
    info = run_info(run_dir)
    if info.get("data") is None:
        raise CheckpointError(f"{run_dir} was imported, not trained here, so it has no optimizer state to resume; "
                              f"fine-tune it with `gptlab train --init-from {run_dir} --data DATA_DIR --out NEW_RUN`")
    data = load_data(run_data_dir(run_dir, data_dir))
    recorded = info.get("tokens_sha256")
    if (data.meta["tokenizer"] != info["tokenizer"] or data.meta.get("source_sha256") != info.get("source_sha256")
            or (recorded is not None and data.meta.get("tokens_sha256") != recorded)):
        raise CheckpointError(f"data in {data.directory} ({data.meta['tokenizer']} tokenizer) is not the data this run "
                              f"was trained on ({info['tokenizer']} tokenizer, {info['data']}); pass the right --data")
    if data.meta["vocab_size"] > saved.model.vocab_size:
        raise CheckpointError(f"tokenizer of {data.directory} has {data.meta['vocab_size']} tokens but the run's model "
                              f"has {saved.model.vocab_size}; pass the run's own --data")
    data.check_unchanged()
    trainer = Trainer(run_dir, wanted, data, resume=True, progress=progress)
    if wanted != saved and trainer.dist.main:
        from gptlab.config import save_yaml

        save_yaml(wanted, Path(run_dir) / "config.yaml")
    return trainer.run()
