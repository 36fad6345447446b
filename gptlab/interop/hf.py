"""GPT-2 checkpoints to and from Hugging Face `transformers`, verified before anything is written.

gptlab's module names follow transformers' GPT-2, so a conversion renames a prefix (`transformer.`), renames the
position table (`positions.wpe` ↔ `transformer.wpe`) and transposes the four Conv1D weights, which transformers
stores as (in, out). After converting, both models run on the same tokens and the result is refused unless the
logits agree within `TOLERANCE`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from gptlab.config import ModelConfig, RunConfig
from gptlab.errors import CheckpointError, ConfigError, GptlabError
from gptlab.interop.hf_tokenizer import export_tokenizer, import_tokenizer
from gptlab.io import check_distinct, check_output_dir, replace_dir, temp_dir_beside
from gptlab.memory import model_bytes, parameter_count, require_memory
from gptlab.model import GPT
from gptlab.paths import contained, resolve
from gptlab.run import load_model, write_model_run
from gptlab.rundir import check_model_run_out, run_info
from gptlab.tensorfile import max_abs_diff, read_tensors, require_finite, write_tensors
from gptlab.train.checkpoint import load_model_state, model_state

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TOLERANCE = 1e-4
HF_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state.items():
        if name == "lm_head.weight":
            key = name
        elif name == "positions.wpe.weight":
            key = "transformer.wpe.weight"
        else:
            key = f"transformer.{name}"
        out[key] = t.t().contiguous() if name.endswith(CONV1D) else t.contiguous()
    return out


def from_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of older transformers
            continue
        name = key.removeprefix("transformer.")
        name = "positions.wpe.weight" if name == "wpe.weight" else name
        out[name] = t.t().contiguous() if name.endswith(CONV1D) else t.contiguous()
    return out


def check_exportable(cfg: ModelConfig) -> None:
    problems = []
    if cfg.positions != "learned":
        problems.append(f"model.positions={cfg.positions} (GPT-2 has learned absolute positions only)")
    if not cfg.bias:
        problems.append("model.bias=false (GPT-2's layers all have biases)")
    for key, plain in (("norm", "layernorm"), ("norm_placement", "pre"), ("qk_norm", False), ("logit_softcap", 0.0),
                       ("activation", "gelu")):
        if getattr(cfg, key) != plain:
            problems.append(f"model.{key}={getattr(cfg, key)} (GPT-2 has {key}={plain})")
    if cfg.learned_overflow != "error":
        problems.append(f"model.learned_overflow={cfg.learned_overflow} (GPT-2 stops at its position table)")
    if problems:
        raise GptlabError(f"this model cannot be expressed as a transformers GPT-2: {'; '.join(problems)}")


def hf_config(cfg: ModelConfig, eot_id: int | None, **extra):
    """transformers' GPT2Config of the same shape (`extra`: more GPT2Config settings, e.g. attn_implementation)."""
    from transformers import GPT2Config

    special = eot_id if eot_id is not None else cfg.vocab_size - 1
    return GPT2Config(**extra, vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function="gelu_new",
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                      layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_embeddings,
                      bos_token_id=special, eos_token_id=special, architectures=["GPT2LMHeadModel"])


def max_logit_difference(ours: GPT, theirs, n_tokens: int = 48, seed: int = 0) -> float:
    """max |Δlogits| of the two models on the same random tokens (fp32, eval mode); inf when either side is not
    finite, so the check that follows fails closed."""
    g = torch.Generator().manual_seed(seed)
    T = min(n_tokens, ours.cfg.block_size)
    idx = torch.randint(0, ours.cfg.vocab_size, (2, T), generator=g)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        return max_abs_diff(ours(idx), theirs(input_ids=idx).logits)


def quiet_transformers() -> None:
    """Keep transformers' progress bars and optional-kernel warnings (torchao's GPU kernels) off the terminal."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's enum registrations
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load_hf_model(directory: Path):
    quiet_transformers()
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(directory), local_files_only=True, attn_implementation="eager",
                                           dtype=torch.float32)


def is_hf_dir(path: Path) -> bool:
    """A transformers GPT-2 directory (what `export hf` writes), not a gptlab run."""
    try:
        config = json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "gpt2" and not (path / "config.yaml").exists()


def export_hf(run_dir: str | Path, out: str | Path, which: str = "best", overwrite: bool = False) -> float:
    """Write RUN_DIR's model and tokenizer as a transformers GPT-2 directory; returns the verified max |Δlogits|.

    A non-empty `out` is refused unless it is a transformers GPT-2 directory and `overwrite` is set."""
    out = Path(out)
    check_distinct(out, run_dir)
    check_output_dir(out, "transformers GPT-2 directory", is_hf_dir, overwrite)
    model, tok, cfg = load_model(run_dir, which)
    if cfg.lora.r > 0:
        raise GptlabError(f"{run_dir} is a LoRA fine-tune: its adapter (PEFT format) is already in {run_dir}; export "
                          "the base run, or merge first with `gptlab merge --run BASE --adapter "
                          f"{run_dir} --out MERGED` and export that")
    if run_info(run_dir).get("quantized") or cfg.quant.qat != "none":
        raise GptlabError(f"{run_dir} is quantized; export the float run it came from")
    check_exportable(cfg.model)
    with temp_dir_beside(out) as tmp:
        tmp = tmp / "export"
        tmp.mkdir()
        hf_config(cfg.model, tok.eot_id).save_pretrained(str(tmp))
        write_tensors(to_hf_state(model_state(model)), tmp / "model.safetensors", metadata={"format": "pt"})
        export_tokenizer(tok, tmp)
        diff = max_logit_difference(model, _load_hf_model(tmp))
        if not diff < TOLERANCE:
            raise CheckpointError(f"exported model disagrees with the original (max |Δlogits| {diff:.2e} ≥ "
                                  f"{TOLERANCE}); nothing was written")
        replace_dir(tmp, out)
    return diff


def confinement_root(directory: Path) -> Path:
    """The folder whose files a model directory may point into: itself, or for a snapshot in the Hugging Face
    cache (models--ORG--NAME/snapshots/REV, whose files link to ../../blobs/), the model's cache folder."""
    d = resolve(directory)
    if d.parent.name == "snapshots" and d.parent.parent.name.startswith("models--"):
        return d.parent.parent
    return d


def _member(directory: Path, name: str, source: str) -> Path:
    """`directory / name`, refused when it (through `..` or a symlink) leads outside the model's folder."""
    return contained(directory, name, source, root=confinement_root(directory))


def _check_members(directory: Path) -> None:
    for p in directory.iterdir():
        _member(directory, p.name, str(directory))


def _read_index(directory: Path, index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{index} is not a valid shard index (a JSON object with a weight_map of tensor name "
                              "→ shard file)") from None
    paths = []
    for name in shards:
        path = _member(directory, name, str(index))
        if not path.is_file():
            raise CheckpointError(f"{index} names the shard {name}, which is missing")
        paths.append(path)
    return paths


def _read_hf_weights(directory: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return read_tensors(single, "weights file")
    if index.is_file():
        return {k: v for s in _read_index(directory, index) for k, v in read_tensors(s, "weights shard").items()}
    pickle = directory / "pytorch_model.bin"
    if pickle.is_file():
        if not allow_pickle:
            raise CheckpointError(f"{directory} holds only a pickle checkpoint (pytorch_model.bin); gptlab reads "
                                  "safetensors. Pass --allow-pickle to load it with torch.load(weights_only=True)")
        try:
            state = torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a damaged or hostile pickle
            raise CheckpointError(f"cannot read {pickle}: {str(e).splitlines()[0][:200]}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{pickle} does not hold a state dict of tensors")
        return state
    raise CheckpointError(f"{directory} has no model.safetensors (nor a sharded index, nor pytorch_model.bin)")


def _int_setting(c: dict, key: str, path: Path) -> int:
    v = c.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise CheckpointError(f"{path}: {key} must be a positive integer, got {v!r}")
    return v


def read_hf_config(directory: Path) -> ModelConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a transformers model directory (no config.json)")
    try:
        c = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise CheckpointError(f"{path} is not valid JSON") from None
    if not isinstance(c, dict):
        raise CheckpointError(f"{path} must hold a JSON object of settings, not {type(c).__name__}")
    if c.get("model_type") != "gpt2":
        raise CheckpointError(f"{directory} holds a {c.get('model_type')!r} model; gptlab imports GPT-2 only")
    shape = {k: _int_setting(c, k, path) for k in ("vocab_size", "n_layer", "n_head", "n_embd", "n_positions")}
    for key, kind in (("layer_norm_epsilon", (int, float)), ("activation_function", str), ("n_inner", (int, type(None))),
                      ("tie_word_embeddings", bool)):
        if key in c and (not isinstance(c[key], kind) or isinstance(c[key], bool) and kind is not bool):
            raise CheckpointError(f"{path}: {key} has the wrong type ({c[key]!r})")
    unsupported = []
    if c.get("activation_function", "gelu_new") not in HF_ACTIVATIONS:
        unsupported.append(f"activation_function={c['activation_function']}")
    if c.get("n_inner") not in (None, 4 * shape["n_embd"]):
        unsupported.append(f"n_inner={c['n_inner']}")
    if c.get("scale_attn_by_inverse_layer_idx") or not c.get("scale_attn_weights", True):
        unsupported.append("non-standard attention scaling")
    if not math.isclose(c.get("layer_norm_epsilon", 1e-5), 1e-5):
        unsupported.append(f"layer_norm_epsilon={c['layer_norm_epsilon']}")
    if c.get("add_cross_attention"):
        unsupported.append("cross-attention")
    if unsupported:
        raise CheckpointError(f"{directory}: gptlab's GPT-2 cannot express {', '.join(unsupported)}")
    try:
        return ModelConfig(vocab_size=shape["vocab_size"], n_layer=shape["n_layer"], n_head=shape["n_head"],
                           n_embd=shape["n_embd"], block_size=shape["n_positions"], dropout=0.0, bias=True,
                           positions="learned", tie_embeddings=c.get("tie_word_embeddings", True))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def import_hf(hf_dir: str | Path, out: str | Path, allow_pickle: bool = False, overwrite: bool = False) -> float:
    """Turn a local transformers GPT-2 directory into a gptlab run; returns the verified max |Δlogits|."""
    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir} is not a directory; give a local transformers model directory")
    check_distinct(out, hf_dir)
    check_model_run_out(out, overwrite)
    _check_members(hf_dir)
    cfg = RunConfig(model=read_hf_config(hf_dir))
    # the file's tensors, gptlab's model and transformers' twin are in memory at once
    require_memory(3 * model_bytes(cfg.model), f"importing {hf_dir} ({parameter_count(cfg.model):,} parameters)",
                   "check n_layer, n_embd, n_positions and vocab_size in its config.json")
    state = from_hf_state(_read_hf_weights(hf_dir, allow_pickle))
    require_finite(state, f"the weights of {hf_dir}")
    model = GPT(cfg.model)
    if cfg.model.tie_embeddings:
        state.pop("lm_head.weight", None)  # the tie is restored by the model itself
    load_model_state(model, state, str(hf_dir))
    tok = import_tokenizer(hf_dir)
    try:
        twin = _load_hf_model(hf_dir)
    except Exception as e:  # transformers raises many types for a directory it cannot load
        raise CheckpointError(f"transformers cannot load {hf_dir}: {str(e).splitlines()[0][:200]}") from None
    diff = max_logit_difference(model, twin)
    if not diff < TOLERANCE:
        raise CheckpointError(f"imported model disagrees with transformers (max |Δlogits| {diff:.2e}); nothing written")
    write_model_run(out, cfg, tok, model, {"imported_from": str(hf_dir.resolve())}, overwrite)
    return diff
