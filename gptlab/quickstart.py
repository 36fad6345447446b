"""`gptlab quickstart`: prepare the built-in corpus, train a small model, print samples, write a report."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from gptlab.config import build_config
from gptlab.data import is_data_dir, load_data, prepare
from gptlab.generate import sample_text
from gptlab.report import band_verdict, write_summary
from gptlab.run import load_model
from gptlab.rundir import is_run
from gptlab.train.loop import resume, train

PROMPTS = ["HAMLET.\n", "To be, or not", "KING."]


MINUTES = 3.0  # training time the quickstart plans for, on whatever machine it runs
# The quickstart trains gptlab's speedrun recipe (lesson 7's choice: a 4-layer, d-128 model), not a larger model for
# fewer steps: in the same minutes on 2 cores the small model reaches a lower val loss on this corpus (README).
RECIPE = "speedrun.yaml"
# The step counts a quickstart may plan, about √2 apart (below 1,000 the samples say little). Each rung's schedule
# is `on_rung`; `gptlab bands list` shows which rungs ship a reference band.
RUNGS = (1000, 1400, 2000, 2800, 4000, 5600, 8000)


def quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None,
               max_steps: int | None = None, minutes: float = MINUTES) -> Path:
    """`max_steps` (or --set train.max_steps=...) fixes the steps; otherwise they are planned to fill `minutes` of
    training on this machine, measured from a few steps of the same model first."""
    out = Path(out)
    overrides = list(overrides or []) + ([f"train.max_steps={max_steps}"] if max_steps else [])
    t0 = time.perf_counter()
    print("1/3 preparing the complete works of Shakespeare (char level) ...", flush=True)
    data_dir = out / "data"
    # an interrupted quickstart reuses its data (a resume checks the token files are unchanged)
    meta = load_data(data_dir).meta if is_data_dir(data_dir) else prepare("shakespeare", data_dir, "char")
    print(f"    {meta['train_tokens']:,} train / {meta['val_tokens']:,} val characters, vocabulary {meta['vocab_size']}, "
          f"{len(meta['split']['val_documents'])} works held out for validation", flush=True)
    phases = {"prepare": time.perf_counter() - t0}
    run_dir = out / "run"
    print(f"2/3 training into {run_dir} ...", flush=True)
    if is_run(run_dir):  # an interrupted quickstart picks up where it stopped
        summary = resume(run_dir, [o for o in overrides if o.startswith("train.max_steps=")])
    else:
        cfg_file = resources.files("gptlab") / "configs" / RECIPE
        with resources.as_file(cfg_file) as path:
            cfg = build_config(path, overrides)
        chosen = {o.split("=", 1)[0] for o in overrides}
        if "train.max_steps" not in chosen:
            cfg = sized_to_machine(cfg, meta["vocab_size"], minutes)
        cfg = on_rung(cfg, cfg.train.max_steps, keep=chosen)
        print_expected_band(cfg, meta)
        summary = train(out / "data", run_dir, cfg)
    phases["train"] = time.perf_counter() - t0 - phases["prepare"]
    print("3/3 sampling ...", flush=True)
    model, tok, cfg = load_model(run_dir, "best")
    samples = []
    for i, prompt in enumerate(PROMPTS):
        text = sample_text(model, tok, prompt, 300, seed=i)
        samples.append(text)
        print("-" * 60 + "\n" + text, flush=True)
    wall = time.perf_counter() - t0
    phases["sample"] = wall - phases["prepare"] - phases["train"]
    timing = ", ".join(f"{name} {seconds:.{0 if seconds >= 10 else 1}f} s" for name, seconds in phases.items())
    m = cfg.model
    facts = {
        "corpus": f"complete works of Shakespeare, char level ({meta['vocab_size']} symbols)",
        "model": f"{m.n_layer} layers, {m.n_head} heads, d {m.n_embd}, context {m.block_size}, "
                 f"{summary['parameters']:,} parameters",
        "training": f"{summary['step']} steps × {cfg.train.batch_size} × {m.block_size} tokens, "
                    f"{summary['elapsed_s']:.0f} s, {summary['tokens_per_s']:,.0f} tokens/s",
        "best val loss": f"{summary['best_val_loss']:.4f} nats/char",
        "quickstart wall time": f"{wall:.0f} s ({timing})",
    }
    report = write_summary(run_dir, "gptlab quickstart", facts, samples)
    print("-" * 60)
    print(f"best val loss {summary['best_val_loss']:.4f}; wall time {wall:.0f} s ({timing}); report: {report}")
    print(f"against the reference band: {band_verdict(run_dir)[1]}")
    return report


def print_expected_band(cfg, meta: dict) -> None:
    """Up front: the val loss this config reaches over seeds, from its reference band, if gptlab ships one."""
    import dataclasses

    from gptlab.bands import curve_identity, find_band

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=meta["vocab_size"]))
    band = find_band(curve_identity(cfg, meta["tokenizer"], meta.get("tokens_sha256")))
    if band is None:
        print(f"    no reference band for {cfg.train.max_steps} steps of this config: the report will show the curve "
              "alone", flush=True)
        return
    print(f"    expected val loss at step {band.steps[-1]}: {band.mean[-1]:.3f} (95 % of seeds within "
          f"{band.lo[-1]:.3f}–{band.hi[-1]:.3f}; {len(band.seeds)} seeds on {band.machine})", flush=True)


def on_rung(cfg, steps: int, keep: set[str] = frozenset()):
    """The quickstart recipe shortened to `steps`: warmup a tenth of it (the recipe's 100 at most), and five
    evaluations and checkpoints whatever the length, so every rung's curve has the same shape and cost. Settings
    named in `keep` (the user's own --set) stay as they are."""
    import dataclasses

    every = max(1, steps // 5)
    schedule = {"max_steps": steps, "warmup_steps": min(cfg.train.warmup_steps, max(1, steps // 10)),
                "eval_every": every, "checkpoint_every": every}
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, **{k: v for k, v in schedule.items() if f"train.{k}" not in keep}))


def sized_to_machine(cfg, vocab_size: int, minutes: float):
    """The quickstart config on the highest rung of RUNGS that fits in `minutes` here."""
    import dataclasses

    from gptlab.budget import plan_steps, seconds_per_step, training_step
    from gptlab.train.distributed import set_threads

    set_threads(cfg.train.threads)
    measured = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    step_s = seconds_per_step(training_step(measured, vocab_size))
    steps = plan_steps(step_s, minutes, RUNGS)
    note = (" (the ladder's top; more time would not add steps)" if steps == max(RUNGS) else
            f" (the lowest rung: a curve worth reading takes about {steps * step_s / 60:.1f} min here)"
            if steps * step_s > minutes * 60 else "")
    print(f"    one step takes {step_s:.3f} s here: {steps} steps fit in about {minutes:g} min of training{note}; "
          "--minutes or --max-steps change it", flush=True)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))
