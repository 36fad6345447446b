"""Loading a run's model (and writing a run that holds one model): the run directory's layout and records are in
gptlab.rundir; here the model is built, its recorded transforms replayed and its weights loaded."""

from __future__ import annotations

from pathlib import Path

from gptlab.config import RunConfig, save_yaml
from gptlab.io import atomic_write_json, replace_dir, temp_dir_beside
from gptlab.memory import model_bytes, require_memory
from gptlab.model import GPT
from gptlab.rundir import check_model_run_out, load_run_config, run_info
from gptlab.tensorfile import require_finite
from gptlab.tokenizers import Tokenizer, load_tokenizer
from gptlab.train.checkpoint import load_checkpoint, load_model_state
from gptlab.transforms import recipe, replay


def write_model_run(out: str | Path, cfg: RunConfig, tok: Tokenizer, model: GPT, info: dict,
                    overwrite: bool = False) -> None:
    """A run directory holding `model` as its only checkpoint (step 0), built in a temp folder and renamed.

    Weights that are not finite are refused: no command writes a model that cannot be used."""
    from gptlab.train.checkpoint import Checkpoint, model_state, save_checkpoint

    out = Path(out)
    check_model_run_out(out, overwrite)
    state = model_state(model)
    require_finite(state, f"the model for {out} (nothing was written)")
    with temp_dir_beside(out) as tmp:
        tmp = tmp / "run"
        tmp.mkdir()
        save_yaml(cfg, tmp / "config.yaml")
        atomic_write_json(tmp / "run.json", {"data": None, "tokenizer": tok.kind, **info})
        tok.save(tmp / "tokenizer")
        save_checkpoint(tmp, Checkpoint(step=0, model=state, meta=info), ("last", "best"))
        replace_dir(tmp, out)


def load_model(run_dir: str | Path, which: str = "best", device: str = "cpu",
               overrides: list[str] | None = None, quant: str = "none") -> tuple[GPT, Tokenizer, RunConfig]:
    """The trained model (in eval mode), its tokenizer and its config, for sampling and evaluation.

    `overrides` may change only how positions are read (`EVAL_TIME_KEYS`, e.g. RoPE scaling), never weights.
    A quantized run (made by `gptlab quantize`) loads with its integer layers, a quantization-aware training run
    with its fake-quant layers; `quant="int8"` or `"int4"` quantizes a float model's linear layers (head
    included) on loading, for faster decoding (`gptlab.quant.quantize_on_load`)."""
    from gptlab.config import EVAL_TIME_KEYS, apply_overrides
    from gptlab.errors import ConfigError

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    for text in overrides or []:
        key = text.split("=", 1)[0].strip()
        if key not in EVAL_TIME_KEYS:
            raise ConfigError(f"--set {key} would change the trained model; at evaluation only "
                              f"{', '.join(EVAL_TIME_KEYS)} may be set")
    cfg = apply_overrides(cfg, overrides or [])
    ckpt = load_checkpoint(run_dir, which, with_state=False)
    require_finite(ckpt.model, f"the {which} checkpoint of {run_dir}")
    require_memory(model_bytes(cfg.model), f"the model of {run_dir}", "use a machine with more memory")
    model = GPT(cfg.model)
    steps = recipe(cfg, run_info(run_dir))
    replay(model, cfg, steps)  # LoRA, QAT, quantization: the structure the checkpoint's weights fit
    load_model_state(model, ckpt.model, f"checkpoint of {run_dir}")
    if quant != "none":
        if steps:
            raise ConfigError(f"--quant {quant} quantizes a plain float model; {run_dir} is already quantized, "
                              "quantization-aware or an adapter run (merge it first)")
        from gptlab.quant.ptq import quantize_on_load

        quantize_on_load(model, quant)
    return model.to(device).eval(), load_tokenizer(run_dir / "tokenizer"), cfg
