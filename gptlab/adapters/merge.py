"""A base run plus an adapter: load them together for sampling, or fold the adapter in as a new plain run."""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab.adapters.lora import merge_and_unload
from gptlab.adapters.peft_format import load_adapter
from gptlab.config import LoraConfig, replace
from gptlab.errors import CheckpointError
from gptlab.io import check_distinct
from gptlab.run import load_model, write_model_run
from gptlab.rundir import check_model_run_out
from gptlab.tensorfile import max_abs_diff

MERGE_TOLERANCE = 1e-5


def load_with_adapter(base_run: str | Path, adapter: str | Path, which: str = "best"):
    """The base run's model with the adapter in `adapter` added (eval mode), its tokenizer and config."""
    model, tok, cfg = load_model(base_run, which)
    if cfg.lora.r > 0:
        raise CheckpointError(f"{base_run} already carries adapters; pass the plain base run as --run")
    lora = load_adapter(model, adapter)
    return model.eval(), tok, replace(cfg, lora=lora)


@torch.no_grad()
def merge_adapter(base_run: str | Path, adapter: str | Path, out: str | Path, overwrite: bool = False) -> float:
    """Write base + adapter as a plain run in `out`, after checking merged logits equal the adapter's."""
    check_distinct(out, base_run, adapter)
    check_model_run_out(out, overwrite)
    model, tok, cfg = load_with_adapter(base_run, adapter)
    idx = torch.randint(0, cfg.model.vocab_size, (2, min(64, cfg.model.block_size)),
                        generator=torch.Generator().manual_seed(0))
    before = model(idx)
    merge_and_unload(model)
    diff = max_abs_diff(model(idx), before)
    if not diff <= MERGE_TOLERANCE:  # fails closed: a NaN anywhere makes diff infinite
        raise CheckpointError(f"merged model differs from base + adapter by {diff:.2e} (> {MERGE_TOLERANCE}); "
                              "nothing was written")
    write_model_run(out, replace(cfg, lora=LoraConfig()), tok, model,
                    {"merged_from": str(Path(base_run).resolve()), "adapter": str(Path(adapter).resolve())},
                    overwrite)
    return diff
