"""Quantization-aware training: `prepare_qat(model, cfg)` → train as usual → `convert_qat(model, cfg)`.

`prepare_qat` swaps the chosen linear layers for `QATLinear`, an `nn.Linear` (same weight and bias parameters,
same state names) whose forward multiplies by the fake-quantized weight. The backward is a straight-through
estimator chosen by `quant.qat` (see `gptlab.quant.fake.fake_quant_ste`); LSQ adds one learned step size per
scale group (`weight_scale`, no weight decay). `convert_qat` turns each into an integer `QuantLinear` with the
scales the model was trained with.

A mistaken STE passes no gradient to the weights, and nothing errors: the biases, norms and embeddings still
learn, so the loss still falls a little. `GradientMonitor` watches the gradient reaching the quantized weights
at every step and reports a run whose weights receive none (`quant.dead_gradient`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptlab.config import QuantConfig
from gptlab.errors import ConfigError, GptlabError
from gptlab.quant.fake import (QuantSpec, TINY_SCALE, clipped_fraction, compute_scales, fake_quant_ste,
                               lsq_grad_scale, scale_with_grad_scale)
from gptlab.quant.linear import QuantLinear, scale_shape
from gptlab.quant.ptq import float_linears, replace_module, target_filter, weight_spec


class QATLinear(nn.Linear):
    def __init__(self, linear: nn.Linear, spec: QuantSpec, mode: str, act_mode: str = "none", act_bits: int = 8,
                 name: str = "layer"):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same parameters: optimizer and state unchanged
        self.spec, self.mode, self.name, self.enabled = spec, mode, name, True
        self.act_mode, self.act_spec = act_mode, QuantSpec(act_bits, True, "tensor" if act_mode in ("tensor", "static")
                                                           else "channel")
        if mode == "lsq":  # initialised to the scales plain fake-quant would use, so every arm starts alike
            init = compute_scales(linear.weight, spec, name)[0].reshape(scale_shape(self.out_features,
                                                                                    self.in_features, spec))
            self.weight_scale = nn.Parameter(init.to(linear.weight.device))
            per_scale = self.weight.numel() // self.weight_scale.numel()
            self.grad_scale = lsq_grad_scale(per_scale, spec)

    def step_size(self) -> Tensor:
        return scale_with_grad_scale(self.weight_scale, self.grad_scale).abs() + TINY_SCALE

    def quantized_weight(self) -> Tensor:
        scale = self.step_size() if self.mode == "lsq" else None
        return fake_quant_ste(self.weight, self.spec, self.mode, scale, self.name)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return F.linear(x, self.weight, self.bias)
        if self.act_mode != "none":  # dynamic int8 activations, straight-through
            x = fake_quant_ste(x, self.act_spec, "ste")
        return F.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    def clipped(self) -> float:
        scale = self.weight_scale.abs() + TINY_SCALE if self.mode == "lsq" else None
        return clipped_fraction(self.weight, self.spec, scale, self.name)

    def extra_repr(self) -> str:
        return f"{self.in_features} → {self.out_features}, fake {self.spec.describe()}, {self.mode} backward"


def prepare_qat(model: nn.Module, cfg: QuantConfig, only=None) -> nn.Module:
    if cfg.qat == "none":
        raise ConfigError("set quant.qat to ste, clipped, lsq (or broken) for quantization-aware training")
    if cfg.activations == "static" or cfg.smooth > 0:
        raise ConfigError("QAT fake-quantizes activations dynamically; use quant.activations=tensor|token and "
                          "quant.smooth=0 with quant.qat")
    spec = weight_spec(cfg)
    layers = float_linears(model, only or target_filter(cfg))
    if not layers:
        raise ConfigError("no linear layer matches the quantization filter; check quant.targets")
    for name, linear in layers.items():
        replace_module(model, name, QATLinear(linear, spec, cfg.qat, cfg.activations, cfg.act_bits, name))
    return model


def qat_layers(model: nn.Module) -> dict[str, QATLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QATLinear)}


@torch.no_grad()
def convert_qat(model: nn.Module) -> nn.Module:
    """Replace every QATLinear by the integer layer it was trained to be (LSQ keeps its learned scales)."""
    for name, layer in qat_layers(model).items():
        q = QuantLinear.from_float(layer, layer.spec, layer.act_mode, layer.act_spec.bits, name=name)
        if layer.mode == "lsq":
            q.set_weight(layer.weight.detach().float(), layer.weight_scale.abs() + TINY_SCALE)
        replace_module(model, name, q)
    return model


@contextlib.contextmanager
def float_weights(model: nn.Module):
    """Run the QAT model as its float twin (no fake-quant) inside the block."""
    layers = list(qat_layers(model).values())
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


class DeadGradient(GptlabError):
    pass


class GradientMonitor:
    """Gradient reaching the quantized weights, summed over each step's backward passes (tensor hooks)."""

    def __init__(self, model: nn.Module, cfg: QuantConfig):
        self.cfg = cfg
        self.layers = qat_layers(model)
        self.sq_norm, self.zeros, self.count, self.dead_steps = 0.0, 0, 0, 0
        self.detected_at: int | None = None
        self.active = True  # off while a probe computes gradients of its own
        for layer in self.layers.values():
            layer.weight.register_hook(self._record)

    def _record(self, grad: Tensor) -> None:
        if not self.active:
            return
        self.sq_norm += float(grad.detach().float().pow(2).sum())
        self.zeros += int((grad == 0).sum())
        self.count += grad.numel()

    def end_step(self, step: int) -> dict[str, float]:
        """The step's figures; raises DeadGradient (or records it) after `dead_gradient_steps` silent steps."""
        out = {"qat_grad_norm": self.sq_norm ** 0.5, "qat_zero_grad_frac": self.zeros / max(self.count, 1)}
        self.dead_steps = self.dead_steps + 1 if self.count and self.sq_norm == 0.0 else 0
        self.sq_norm, self.zeros, self.count = 0.0, 0, 0
        if self.dead_steps >= self.cfg.dead_gradient_steps and self.detected_at is None:
            self.detected_at = step
            if self.cfg.dead_gradient == "error":
                raise DeadGradient(
                    f"quantization-aware training: no gradient reached any quantized weight for {self.dead_steps} "
                    f"steps (up to step {step}); the straight-through estimator is broken (quant.qat={self.cfg.qat}) — "
                    "round() has zero derivative, so its gradient must bypass it. Use quant.qat=ste, clipped or lsq")
        return out

    @contextlib.contextmanager
    def paused(self):
        self.active = False
        try:
            yield
        finally:
            self.active = True

    def clipped_fraction(self) -> float:
        sizes = [layer.weight.numel() for layer in self.layers.values()]
        fractions = [layer.clipped() for layer in self.layers.values()]
        return sum(f * n for f, n in zip(fractions, sizes)) / max(sum(sizes), 1)


def gradient_ratio(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """‖∇W‖ of the quantized weights through fake-quant ÷ ‖∇W‖ of the float twin, on one batch: about 1 when the
    STE passes gradients, 0 when it passes none."""
    from gptlab.train.losses import lm_loss

    weights = [layer.weight for layer in qat_layers(model).values()]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            quantized = torch.autograd.grad(lm_loss(model(x), y), weights, allow_unused=True)
            with float_weights(model):
                plain = torch.autograd.grad(lm_loss(model(x), y), weights, allow_unused=True)
    finally:
        model.train(was_training)

    def norm(grads):
        return sum(float(g.float().pow(2).sum()) for g in grads if g is not None) ** 0.5

    denominator = norm(plain)
    return norm(quantized) / denominator if denominator > 0 else float("nan")
