"""What the training loop does besides training, as callbacks: each watches or records one thing.

The loop (`gptlab.train.loop.Trainer`) runs steps, evaluations and checkpoints; `NonFinitePolicy` decides what a
non-finite step does to it (stop, skip, roll back). A callback gets three hooks:
`on_step` after every optimizer step, `on_log` to add fields to the logged step record (rank 0 only), and
`on_end` when training finishes. Counts that must survive a resume go in `trainer.counts` / `trainer.peaks`,
which checkpoints carry.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from gptlab.train.probes import attention_logits

if TYPE_CHECKING:
    from gptlab.train.loop import Trainer


class Callback:
    def on_step(self, trainer: "Trainer", step: int, loss: float) -> None:
        pass

    def on_log(self, trainer: "Trainer") -> dict[str, Any]:
        return {}

    def on_end(self, trainer: "Trainer") -> None:
        pass


class SpikeDetector:
    """A loss above the running median of the last `window` losses by `threshold` robust deviations (MAD)."""

    def __init__(self, window: int, threshold: float):
        self.losses: deque[float] = deque(maxlen=window)
        self.threshold = threshold

    def check(self, loss: float) -> bool:
        spike = False
        if len(self.losses) >= self.losses.maxlen // 2:
            ordered = sorted(self.losses)
            median = ordered[len(ordered) // 2]
            mad = sorted(abs(v - median) for v in ordered)[len(ordered) // 2] * 1.4826
            spike = mad > 0 and loss > median + self.threshold * mad
        self.losses.append(loss)
        return spike


class SpikeWatch(Callback):
    """Logs and counts loss spikes (train.spike_threshold robust deviations over train.spike_window steps)."""

    def __init__(self, window: int, threshold: float):
        self.detector = SpikeDetector(window, threshold)

    def on_step(self, trainer: "Trainer", step: int, loss: float) -> None:
        if self.detector.check(loss):
            trainer.counts["spikes"] += 1
            trainer.metrics.log({"step": step, "event": "spike", "loss": loss})


def probe_window(trainer: "Trainer") -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed validation window (inputs, targets), the same at every log."""
    block = trainer.cfg.model.block_size
    tokens = torch.from_numpy(trainer.data.val[: block + 1].astype("int64"))[None].to(trainer.cfg.train.device)
    return tokens[:, :-1], tokens[:, 1:]


class LogitProbe(Callback):
    """The largest attention score and the largest |output logit| on a fixed window at every log, so logit growth
    shows in metrics.jsonl long before it becomes a NaN; the peaks go in the summary."""

    @torch.no_grad()
    def on_log(self, trainer: "Trainer") -> dict[str, Any]:
        model = trainer.model
        was_training = model.training
        model.eval()
        x, _ = probe_window(trainer)
        with attention_logits(model) as scores:
            logits = model(x)
        model.train(was_training)
        out = {"max_attn_logit": max(scores, default=0.0), "max_output_logit": float(logits.abs().max())}
        trainer.peaks = {k: max(trainer.peaks[k], v) for k, v in out.items()}
        return out


class QATWatch(Callback):
    """Gradient flow through the fake-quantized weights: per-step gradient norm and zero share, the dead-gradient
    alarm, and at each log the gradient ratio to the float twin and the share of clipped weights."""

    def __init__(self, model, cfg):
        from gptlab.quant.qat import GradientMonitor

        self.monitor = GradientMonitor(model, cfg)
        self.last: dict[str, float] = {}

    def on_step(self, trainer: "Trainer", step: int, loss: float) -> None:
        self.last = self.monitor.end_step(step)
        if self.monitor.detected_at == step:
            trainer.counts["dead_gradient_step"] = step
            trainer.metrics.log({"step": step, "event": "dead_gradient",
                                 "reason": "no gradient reached the quantized weights"})

    def on_log(self, trainer: "Trainer") -> dict[str, Any]:
        from gptlab.quant.qat import gradient_ratio

        x, y = probe_window(trainer)
        with self.monitor.paused():  # gradient_ratio runs in eval mode and restores the training mode
            ratio = gradient_ratio(trainer.model, x, y)
        return {"qat_grad_ratio": ratio, "qat_clipped_frac": self.monitor.clipped_fraction(), **self.last}


class PeftExport(Callback):
    """A LoRA run's best adapter, in PEFT's layout, at the top of the run directory when training ends."""

    def on_end(self, trainer: "Trainer") -> None:
        from gptlab.adapters.peft_format import save_adapter_state
        from gptlab.rundir import run_info
        from gptlab.train.checkpoint import load_checkpoint

        if trainer.dist.main:
            best = load_checkpoint(trainer.run_dir, "best", with_state=False)
            save_adapter_state(best.model, trainer.cfg.lora, trainer.run_dir,
                               run_info(trainer.run_dir).get("init_from", ""))


MAX_ROLLBACKS = 5  # a batch that is non-finite at any learning rate would otherwise roll back for ever


class NonFinitePolicy:
    """train.on_nonfinite for a step whose loss or gradient was not finite (nothing of it reached the weights):
    stop with the error, skip the batch, or roll back to the last checkpoint and go on with the learning rate
    times train.rollback_lr_factor (at most MAX_ROLLBACKS times; logged and kept across resumes)."""

    def __init__(self, policy: str, lr_factor: float):
        self.policy, self.lr_factor = policy, lr_factor

    def handle(self, trainer: "Trainer", error) -> None:
        from gptlab.errors import GptlabError

        if self.policy == "stop":
            raise error
        if self.policy == "skip":
            trainer.step += 1  # the batch is consumed and dropped
            trainer.counts["skipped"] += 1
            trainer.metrics.log({"step": trainer.step, "event": "skipped", "reason": f"non-finite {error.what}"})
            return
        last = trainer.run_dir / "checkpoints" / "last.json"
        if not last.is_file() or trainer.counts["rollbacks"] >= MAX_ROLLBACKS:
            why = "no checkpoint to return to yet" if not last.is_file() else f"{MAX_ROLLBACKS} rollbacks already"
            raise GptlabError(f"{error} (rollback impossible: {why})")
        counts, at = dict(trainer.counts), trainer.step + 1
        trainer.restore()
        trainer.counts = {**counts, "rollbacks": counts["rollbacks"] + 1}
        trainer.lr_scale *= self.lr_factor
        trainer.metrics.log({"step": at, "event": "rollback", "reason": f"non-finite {error.what}",
                             "to_step": trainer.step, "lr_scale": trainer.lr_scale})


class ResumeContinuity(Callback):
    """After a resume, do the first losses continue the curve? The last `window` logged training losses before the
    checkpoint give a line (trend) and a residual spread; the mean of the first `steps` losses after it is compared
    with that line extended. Upward by more than `z_alarm` standard errors is a jump: one event in metrics.jsonl and
    one warning line. An exact resume continues the same curve, so it stays silent."""

    def __init__(self, before: list[tuple[int, float]], window: int = 20, steps: int = 5, z_alarm: float = 4.0):
        import numpy as np

        self.after: list[tuple[int, float]] = []
        self.steps, self.z_alarm, self.fit = steps, z_alarm, None
        points = before[-window:]
        if len(points) >= 5:
            x, y = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
            slope, intercept = np.polyfit(x, y, 1)
            spread = float(np.std(y - (slope * x + intercept), ddof=2))
            self.fit = (float(slope), float(intercept), spread, int(x[-1]))

    def check(self) -> dict[str, float] | None:
        """The jump record when the first losses after the resume leave the band, else None."""
        if self.fit is None or len(self.after) < self.steps:
            return None
        slope, intercept, spread, last = self.fit
        expected = sum(slope * s + intercept for s, _ in self.after) / len(self.after)
        observed = sum(v for _, v in self.after) / len(self.after)
        z = (observed - expected) / max(spread / len(self.after) ** 0.5, 1e-12)
        if z <= self.z_alarm:
            return None
        return {"loss": observed, "expected": expected, "z": z, "resumed_at": last}

    def on_step(self, trainer: "Trainer", step: int, loss: float) -> None:
        if self.fit is None or len(self.after) >= self.steps:
            return
        self.after.append((step, loss))
        if len(self.after) == self.steps and (jump := self.check()) is not None:
            import sys

            trainer.metrics.log({"step": step, "event": "resume_jump", **jump})
            print(f"gptlab train: warning: the loss jumped after resuming: steps {self.after[0][0]}-{step} average "
                  f"{jump['loss']:.4f} where the curve before the checkpoint leads to {jump['expected']:.4f} "
                  f"({jump['z']:.1f} standard errors); likely causes: different data, a changed config, or lost "
                  "optimizer state", file=sys.stderr, flush=True)
