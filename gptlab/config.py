"""Typed run configuration: dataclasses, YAML files and dotted `--set key=value` overrides.

Every value is checked against its field's type and range when the config is built, so a typo or a bad value
fails at the command line with a message that names the key, never deep inside training.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gptlab.errors import ConfigError

PositionKind = Literal["learned", "sinusoidal", "rope", "alibi", "none"]


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 50257  # set from the data's tokenizer when training
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    dropout: float = 0.0
    bias: bool = True
    positions: PositionKind = "learned"
    # sinusoidal positions: the table at the embeddings' init scale, the original Transformer's recipe (embeddings
    # × √d + a unit table), or the init-scale table times a learned gain (see gptlab.model.positions)
    sinusoidal_scale: Literal["init", "transformer", "learned"] = "init"
    rope_base: float = 10000.0
    rope_fraction: float = 1.0  # share of each head's dimensions that RoPE rotates
    # RoPE context extension without retraining (evaluation or fine-tuning time): position interpolation
    # ("linear"), NTK-aware base scaling ("ntk") or YaRN ("yarn"), by `rope_scaling_factor` over block_size.
    rope_scaling: Literal["none", "linear", "ntk", "yarn"] = "none"
    rope_scaling_factor: float = 1.0
    # Learned positions past the table: "error", or "clamp" (every later position reuses the last learned vector).
    learned_overflow: Literal["error", "clamp"] = "error"
    tie_embeddings: bool = True
    # Stability refinements (GPT-2 defaults first)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_placement: Literal["pre", "post"] = "pre"  # post: x = norm(x + f(x)), the original Transformer
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (learned gain) before attention
    logit_softcap: float = 0.0  # > 0: output logits = cap · tanh(logits / cap)
    init: Literal["gpt2", "plain"] = "gpt2"  # plain: N(0, 0.02) everywhere, no 1/sqrt(2·n_layer) on c_proj
    zero_init_proj: bool = False  # start every residual projection (attention and MLP c_proj) at zero (speedruns)
    activation: Literal["gelu", "relu2"] = "gelu"  # the MLP's: GPT-2's tanh GELU, or ReLU squared (speedruns)
    # sdpa: PyTorch's fused scaled_dot_product_attention; manual: softmax(QKᵀ/√d + mask)·V spelled out, the
    # textbook path (same result, more memory and time: lesson 6 measures the difference)
    attention: Literal["sdpa", "manual"] = "sdpa"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size"):
            _require(getattr(self, name) > 0, f"model.{name}", f"must be positive, got {getattr(self, name)}")
        _require(self.n_embd % self.n_head == 0, "model.n_embd",
                 f"{self.n_embd} is not divisible by model.n_head={self.n_head}; pick n_embd = n_head × head size")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        _require(self.rope_base > 1.0, "model.rope_base", f"must be > 1, got {self.rope_base}")
        _require(0.0 < self.rope_fraction <= 1.0, "model.rope_fraction", f"must be in (0, 1], got {self.rope_fraction}")
        _require(self.logit_softcap >= 0, "model.logit_softcap", f"must be >= 0 (0 = off), got {self.logit_softcap}")
        _require(self.rope_scaling_factor >= 1.0, "model.rope_scaling_factor",
                 f"must be >= 1 (the extended length over block_size), got {self.rope_scaling_factor}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 2000
    batch_size: int = 12
    grad_accum: int = 1  # micro-batches per optimizer step; the loss is the same mean at any split
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"  # wsd: warmup, stable, linear decay
    decay_fraction: float = 0.2  # wsd: share of the steps spent decaying to min_lr at the end
    weight_decay: float = 0.1
    # adamw: AdamW on every weight. muon: Muon (momentum, then orthogonalised by Newton-Schulz) on the blocks'
    # 2-D weight matrices, AdamW on embeddings, head, norms and biases. Muon's update is rescaled to AdamW's
    # typical RMS (torch's "match_rms_adamw"), so train.lr means the same for both; muon_lr_scale multiplies it
    # for the Muon matrices only.
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr_scale: float = 1.0
    muon_momentum: float = 0.95
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 turns clipping off
    decay_embeddings: bool = False  # weight decay on embedding tables too (never on norms and biases)
    z_loss: float = 0.0  # > 0: add z_loss · mean(logsumexp(logits)²), keeping output logits from drifting
    # A non-finite loss or gradient never reaches the weights: stop (default), skip the batch, or roll back to
    # the last checkpoint and continue with the learning rate multiplied by rollback_lr_factor.
    on_nonfinite: Literal["stop", "skip", "rollback"] = "stop"
    rollback_lr_factor: float = 0.5
    spike_threshold: float = 6.0  # a loss above the running median by this many robust deviations is a spike
    spike_window: int = 50
    eval_every: int = 250
    eval_batches: int = 20
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 1337
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 = autocast; weights stay fp32
    # torch.compile the model for the training steps (the saved weights are the same). On the CPU it runs torch's
    # attention, GELU and cross-entropy, not gptlab's C++ kernels: eager measured 1.03-1.2x faster (bench train)
    compile: bool = False
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, more time
    threads: int = 0  # 0 = one per core
    device: Literal["cpu", "cuda"] = "cpu"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches",
                     "checkpoint_every", "log_every"):
            _require(getattr(self, name) > 0, f"train.{name}", f"must be positive, got {getattr(self, name)}")
        _require(self.lr > 0, "train.lr", f"must be positive, got {self.lr}")
        _require(0 <= self.min_lr <= self.lr, "train.min_lr", f"must be in [0, train.lr={self.lr}], got {self.min_lr}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(0 <= self.beta1 < 1, "train.beta1", f"must be in [0, 1), got {self.beta1}")
        _require(0 <= self.beta2 < 1, "train.beta2", f"must be in [0, 1), got {self.beta2}")
        _require(self.eps > 0, "train.eps", f"must be positive, got {self.eps}")
        _require(self.muon_lr_scale > 0, "train.muon_lr_scale", f"must be positive, got {self.muon_lr_scale}")
        _require(0 <= self.muon_momentum < 1, "train.muon_momentum", f"must be in [0, 1), got {self.muon_momentum}")
        _require(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        _require(0 < self.decay_fraction <= 1, "train.decay_fraction", f"must be in (0, 1], got {self.decay_fraction}")
        _require(self.z_loss >= 0, "train.z_loss", f"must be >= 0 (0 = off), got {self.z_loss}")
        _require(0 < self.rollback_lr_factor <= 1, "train.rollback_lr_factor",
                 f"must be in (0, 1], got {self.rollback_lr_factor}")
        _require(self.spike_threshold > 0, "train.spike_threshold", f"must be positive, got {self.spike_threshold}")
        _require(self.spike_window >= 5, "train.spike_window", f"must be at least 5, got {self.spike_window}")
        _require(self.threads >= 0, "train.threads", f"must be >= 0 (0 = one per core), got {self.threads}")


# Model settings that change how positions are read, not the weights: `gptlab eval --set` may change them.
EVAL_TIME_KEYS = ("model.rope_scaling", "model.rope_scaling_factor", "model.learned_overflow")

LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the blocks' linear layers; r = 0 means none (a plain run)."""
    r: int = 0
    alpha: float = 16.0
    scaling: Literal["lora", "rslora"] = "lora"  # update scaled by alpha/r, or alpha/sqrt(r) (rank-stabilized)
    targets: str = ",".join(LORA_TARGETS)  # comma-separated, from LORA_TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _require(self.r >= 0, "lora.r", f"must be >= 0 (0 = no adapters), got {self.r}")
        _require(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        _require(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.target_list if t not in LORA_TARGETS]
        _require(not bad and bool(self.target_list), "lora.targets",
                 f"unknown {', '.join(bad) or 'empty list'}; choose from {','.join(LORA_TARGETS)}")

    @property
    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    @property
    def scale(self) -> float:
        """The factor on B·A: alpha/r (LoRA) or alpha/sqrt(r) (rsLoRA)."""
        return self.alpha / (self.r if self.scaling == "lora" else self.r ** 0.5)


@dataclass(frozen=True)
class QuantConfig:
    """Integer quantization of the blocks' linear layers (and the head with targets=all): after training
    (`gptlab quantize`) or during it (qat != none)."""
    bits: int = 8  # weights, 2 … 8
    scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    # One scale per tensor, or per row (a weight's output channel); group_size > 0 splits each row into groups
    # of that many input channels, each with its own scale (needs granularity=channel).
    granularity: Literal["tensor", "channel"] = "channel"
    group_size: int = 0
    clip_ratio: float = 1.0  # the range is this share of each group's largest |weight| (< 1 clips outliers)
    targets: Literal["blocks", "all"] = "blocks"  # all: the output head too (the embedding table stays float)
    # Activations entering each quantized layer (int8): none, dynamic per tensor, dynamic per token, or static per
    # tensor with scales from calibration batches.
    activations: Literal["none", "tensor", "token", "static"] = "none"
    act_bits: int = 8
    smooth: float = 0.0  # SmoothQuant migration strength alpha (0 = off; 0.5 is the usual choice)
    calib_batches: int = 8  # batches of training data for static scales and smoothing
    calib_seed: int = 0
    # Quantization-aware training: fake-quant in forward and a straight-through estimator in backward: plain,
    # clipped (no gradient outside the range), learned step size (LSQ), or "broken" (the gradient through round
    # left at zero: a deliberate mistake, for the lesson).
    qat: Literal["none", "ste", "clipped", "lsq", "broken"] = "none"
    dead_gradient: Literal["error", "record"] = "error"  # a QAT run whose weights get no gradient: stop or note it
    dead_gradient_steps: int = 3  # ... after this many steps with zero gradient on every quantized weight

    def __post_init__(self) -> None:
        _require(2 <= self.bits <= 8, "quant.bits", f"must be in 2..8, got {self.bits}")
        _require(2 <= self.act_bits <= 8, "quant.act_bits", f"must be in 2..8, got {self.act_bits}")
        _require(self.group_size >= 0, "quant.group_size", f"must be >= 0 (0 = whole rows), got {self.group_size}")
        _require(self.group_size == 0 or self.granularity == "channel", "quant.group_size",
                 "groups split rows: use it with quant.granularity=channel")
        _require(0 < self.clip_ratio <= 1, "quant.clip_ratio", f"must be in (0, 1], got {self.clip_ratio}")
        _require(0 <= self.smooth < 1, "quant.smooth", f"must be in [0, 1) (0 = off), got {self.smooth}")
        _require(self.calib_batches > 0, "quant.calib_batches", f"must be positive, got {self.calib_batches}")
        _require(self.dead_gradient_steps > 0, "quant.dead_gradient_steps",
                 f"must be positive, got {self.dead_gradient_steps}")
        _require(not (self.qat == "lsq" and self.scheme == "asymmetric"), "quant.qat",
                 "lsq learns a symmetric step size; use quant.scheme=symmetric with it")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)


# ----------------------------------------------------------------------------------------------------------------
# dict <-> dataclass, with type checks that name the key


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _valid_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the field type `tp`; strings from the command line are parsed here."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        number = None
        if isinstance(value, str):
            try:
                number = tp(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or isinstance(value, int)):
            number = tp(value)
        if number is None:
            raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
        if tp is float and not math.isfinite(number):  # NaN passes no range check and inf passes too many
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp}")  # a programming error, not a user one


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", root: type | None = None) -> Any:
    root = root or cls
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(_valid_keys(root))}")
        tp = hints[name]
        values[name] = from_dict(tp, value, f"{key}.", root) if dataclasses.is_dataclass(tp) else _coerce(tp, value, key)
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set model.n_layer=6")
    key, value = text.split("=", 1)
    return key.strip().split("."), value.strip()


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of `cfg` with dotted `key=value` overrides applied and the whole config re-validated."""
    data = to_dict(cfg)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{'.'.join(path)}'; valid keys: {', '.join(_valid_keys(type(cfg)))}")
            node = node[part]
        if path[-1] not in node or isinstance(node[path[-1]], dict):
            raise ConfigError(f"unknown config key '{'.'.join(path)}'; valid keys: {', '.join(_valid_keys(type(cfg)))}")
        node[path[-1]] = value  # a string: _coerce parses it against the field type
    return from_dict(type(cfg), data)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping such as 'model: {{n_layer: 4}}'")
    return data


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(config_file: str | Path | None = None, overrides: list[str] | None = None,
                 base: RunConfig | None = None) -> RunConfig:
    """Defaults (or `base`) ← YAML file ← `--set` overrides, validated at each step."""
    data = to_dict(base or RunConfig())
    if config_file is not None:
        data = merge_dicts(data, load_yaml(config_file))
    cfg = from_dict(RunConfig, data)
    return apply_overrides(cfg, overrides or [])


def save_yaml(cfg: Any, path: str | Path) -> None:
    from gptlab.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)
