"""`gptlab train`, `finetune` and `merge`: training runs, LoRA adapters, and folding an adapter in."""

from __future__ import annotations

import argparse
import sys

from gptlab.commands.common import add_config_args, count
from gptlab.errors import GptlabError


LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint")


def launch_processes(nproc: int, argv: list[str], nnodes: int = 1, node_rank: int = 0,
                     endpoint: str | None = None) -> None:
    """Run this same command under torchrun with `nproc` processes on this node (data parallel), one node of
    `nnodes` when several are given (static rendezvous at `endpoint`, HOST:PORT of node 0); returns when they end."""
    import subprocess

    rest, skip = [], False
    for a in argv:  # the same arguments without the launch flags
        if skip or a.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            skip = False
            continue
        if a in LAUNCH_FLAGS:
            skip = True
            continue
        rest.append(a)
    if nnodes > 1:
        host, _, port = (endpoint or "").rpartition(":")
        if not host or not port.isdigit():
            raise GptlabError(f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT of node 0, e.g. 10.0.0.1:29500")
        where = [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={host}", f"--master_port={port}"]
    else:
        where = ["--standalone"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}",
           "-m", "gptlab", *rest]
    import os

    threads = max(1, len(os.sched_getaffinity(0)) // nproc)  # torchrun's default of 1 starves larger machines
    rc = subprocess.call(cmd, env={"OMP_NUM_THREADS": str(threads), **os.environ})
    if rc:
        raise SystemExit(rc)


def cmd_train(args: argparse.Namespace) -> None:
    from gptlab.config import build_config
    from gptlab.train.distributed import is_main_process, launched_by_torchrun
    from gptlab.train.loop import resume, train

    if args.nproc < 1:
        raise GptlabError(f"--nproc must be at least 1, got {args.nproc}")
    if args.device:
        args.overrides = [*args.overrides, f"train.device={args.device}"]
    if args.nnodes > 1 and args.node_rank >= args.nnodes:
        raise GptlabError(f"--node-rank {args.node_rank} must be below --nnodes {args.nnodes}")
    if (args.nproc > 1 or args.nnodes > 1) and not launched_by_torchrun():
        return launch_processes(args.nproc, args.argv, args.nnodes, args.node_rank, args.rdzv_endpoint)
    if args.resume:
        if args.config:
            raise GptlabError("--config cannot be combined with --resume: the run keeps its own config.yaml")
        summary = resume(args.resume, args.overrides, args.data)
        run_dir = args.resume
    else:
        if not args.data or not args.out:
            raise GptlabError("train needs --data DATA_DIR and --out RUN_DIR (or --resume RUN_DIR)")
        summary = train(args.data, args.out, build_config(args.config, args.overrides), init_from=args.init_from)
        run_dir = args.out
    if not is_main_process():
        return
    val = "" if summary["val_loss"] is None else f", val loss {summary['val_loss']:.4f}"
    print(f"{run_dir}: step {summary['step']}, train loss {summary['final_loss']:.4f}{val} "
          f"({summary['elapsed_s']:.0f}s of training)")


def cmd_finetune(args: argparse.Namespace) -> None:
    from gptlab.config import build_config
    from gptlab.train.loop import resume, train

    if args.resume:
        summary, out = resume(args.resume, args.overrides, args.data), args.resume
    else:
        if not (args.run and args.data and args.out):
            raise GptlabError("finetune needs --run BASE_RUN --data DATA_DIR --out ADAPTER_DIR (or --resume ADAPTER_DIR)")
        cfg = build_config(args.config, args.overrides)
        if cfg.lora.r == 0:
            raise GptlabError("finetune trains LoRA adapters: give a rank, e.g. --set lora.r=16 "
                              "(and lora.alpha, lora.scaling=rslora); for full fine-tuning use `train --init-from`")
        summary, out = train(args.data, args.out, cfg, init_from=args.run), args.out
    val = "" if summary["val_loss"] is None else f", val loss {summary['val_loss']:.4f}"
    print(f"{out}: step {summary['step']}{val}; adapter (PEFT format) in {out}/adapter_config.json + "
          "adapter_model.safetensors")


def cmd_merge(args: argparse.Namespace) -> None:
    from gptlab.adapters.merge import merge_adapter

    diff = merge_adapter(args.run, args.adapter, args.out, args.overwrite)
    print(f"wrote {args.out}: {args.run} with {args.adapter} merged in (verified: max |Δlogits| {diff:.1e})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (or resume a run)",
                       description="Train a GPT on DATA_DIR into RUN_DIR, or continue RUN_DIR with --resume. "
                                   "A resumed run continues bit for bit: same batches, same losses.")
    p.add_argument("--data", metavar="DATA_DIR", help="made by `gptlab prepare`")
    p.add_argument("--out", metavar="RUN_DIR", help="new run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--init-from", metavar="RUN_DIR", help="start from this run's weights and model config "
                   "(fine-tuning, e.g. a model made by `gptlab import hf`)")
    p.add_argument("--nproc", type=count(1, 1024), default=1, metavar="N",
                   help="data-parallel processes, launched with torchrun (gloo on CPU, nccl on GPU); "
                   "train.batch_size stays the global batch, so the run follows the single-process one (default 1; "
                   "`torchrun --nproc_per_node=N -m gptlab train ...` does the same)")
    p.add_argument("--nnodes", type=count(1, 4096), default=1, metavar="N",
                   help="machines taking part (default 1); run the same command on each with its --node-rank. "
                   "Every node needs the data at the same path; RUN_DIR must be on a filesystem all nodes share "
                   "(rank 0 writes it, a resume or rollback reads it everywhere)")
    p.add_argument("--node-rank", type=count(0, 4095), default=0, metavar="R", help="this machine's place, 0..N-1")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address and a free port, the same on "
                   "every node (with --nnodes > 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where to train (same as --set train.device=...; "
                   "default cpu); with --nproc N on cuda, one GPU per process over nccl")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a run with LoRA / rsLoRA adapters (PEFT-compatible files)",
                       description="Train low-rank adapters on a base run's frozen weights. Only the adapters train; "
                                   "the result is a run directory that is also a PEFT adapter directory. "
                                   "Scale: alpha/r (lora.scaling=lora) or alpha/sqrt(r) (lora.scaling=rslora).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  gptlab finetune --run runs/base --data runs/data/poems --out runs/lora16 "
                              "--set lora.r=16 --set lora.alpha=16 --set lora.scaling=rslora --set train.max_steps=300")
    p.add_argument("--run", metavar="BASE_RUN", help="the run to adapt (its best checkpoint)")
    p.add_argument("--data", metavar="DATA_DIR", help="prepared with the base run's tokenizer "
                   "(`gptlab prepare --tokenizer-from BASE_RUN/tokenizer`)")
    p.add_argument("--out", metavar="ADAPTER_DIR")
    p.add_argument("--resume", metavar="ADAPTER_DIR", help="continue an interrupted fine-tune")
    add_config_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("merge", help="fold a LoRA adapter into its base run, as a new plain run")
    p.add_argument("--run", required=True, metavar="BASE_RUN")
    p.add_argument("--adapter", required=True, metavar="ADAPTER_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a model written by "
                   "merge, quantize or import (anything else is never overwritten)")
    p.set_defaults(func=cmd_merge)
