"""`gptlab bench train | decode | time-to-loss`: speed against a baseline measured in the same run."""

from __future__ import annotations

import argparse

from gptlab.commands.common import add_config_args, add_set, count, number, output_file


def cmd_bench_train(args: argparse.Namespace) -> None:
    from gptlab.bench.train import bench_train

    bench_train(args.config, with_device(args), args.steps, args.warmup, args.vs, args.json, args.breakdown)


def cmd_bench_decode(args: argparse.Namespace) -> None:
    from gptlab.bench.decode import bench_decode

    bench_decode(args.config, with_device(args), args.prompt_tokens, args.new_tokens, args.repeats, args.dtype,
                 args.vs, args.json, args.quant, args.compile)


def cmd_bench_time_to_loss(args: argparse.Namespace) -> None:
    from gptlab.bench.time_to_loss import bench_time_to_loss

    bench_time_to_loss(args.corpus, args.target, args.check_every, args.recipe, args.overrides, args.threads,
                       args.json, args.vs_script)


def with_device(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])


def _common(p: argparse.ArgumentParser, vs: tuple[str, ...] = ("transformers",)) -> None:
    if vs:
        p.add_argument("--device", choices=["cpu", "cuda"], help="where both sides run (default cpu; same as --set "
                       "train.device=...): on cuda the ceilings (matmul peak, read bandwidth) are the GPU's")
        p.add_argument("--vs", choices=list(vs), help="also time transformers' GPT2LMHeadModel"
                       + (" or llama.cpp (a GGUF of the same weights, through llama-cpp-python)" if len(vs) > 1 else "")
                       + ", same shape")
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the results as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure speed against a baseline and the machine's limits, in the same run",
                       description="Side-by-side benchmarks: every ratio is against a baseline measured in the same "
                                   "run. Each prints a table and a JSON line.")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    q = what.add_parser("train", help="tokens/s and MFU of a training step",
                        description="Tokens/s and MFU of a training step (default GPT-2 124M shape, batch 4 × 256), "
                                    "MFU against the fp32 matmul peak measured in the same run; --vs transformers "
                                    "times transformers' GPT2LMHeadModel on the same shape.")
    add_config_args(q)
    q.add_argument("--steps", type=count(1), default=20, help="timed optimizer steps (default 20)")
    q.add_argument("--warmup", type=count(0), default=3, help="untimed steps first (default 3)")
    q.add_argument("--breakdown", action="store_true", help="also profile 2 steps of each side and print where a "
                   "step's time goes (matrix products, attention, loss, optimizer, ...), and the ratio gptlab "
                   "would reach if everything but its matrix products took no time")
    _common(q)
    q.set_defaults(func=cmd_bench_train)

    q = what.add_parser("decode", help="batch-1 greedy decoding with the KV cache",
                        description="Batch-1 greedy decoding with the KV cache (default GPT-2 124M, prompt 16, 128 "
                                    "new tokens) against the memory-bandwidth bound measured in the same run; --vs "
                                    "transformers runs its generate on the same weights, --vs llama.cpp a GGUF of "
                                    "them (f32, f16 for bfloat16, q8_0 for int8, q4_0 for int4).")
    add_config_args(q)
    q.add_argument("--prompt-tokens", type=count(1), default=16, help="prompt length (default 16)")
    q.add_argument("--new-tokens", type=count(1), default=128, help="tokens generated (default 128)")
    q.add_argument("--repeats", type=count(1), default=3, help="timed generations, the fastest counts (default 3)")
    q.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weight and cache dtype (default float32)")
    q.add_argument("--quant", choices=["none", "int8", "int4"], default="none", help="int8 (per channel) or int4 "
                   "(groups of 32) weights in every linear layer, on gptlab's integer kernels; transformers stays "
                   "fp32, the baseline a user would otherwise run")
    q.add_argument("--compile", action="store_true", help="also time gptlab's compiled static decode step (a "
                   "fixed-size cache, compiled once per generation length; `gptlab sample --compile`), beside the "
                   "eager one, with its compile time")
    _common(q, vs=("transformers", "llama.cpp"))
    q.set_defaults(func=cmd_bench_decode)

    q = what.add_parser("time-to-loss", help="training seconds to a val loss on Tiny Shakespeare",
                        description="Training seconds and tokens until the Tiny Shakespeare char model reaches a val "
                                    "loss, for the reference recipe (the minimal GPT script's CPU recipe) and "
                                    "gptlab's speedrun recipe (gptlab/configs/speedrun.yaml, chosen by lesson 7; "
                                    "its settings are printed), side by side on the same validation windows. "
                                    "--vs-script also runs the minimal GPT script itself from your checkout and "
                                    "compares whole processes (data preparation included).")
    add_set(q, "change the speedrun recipe, e.g. --set train.lr=0.002 (repeatable)")
    q.add_argument("--recipe", metavar="FILE",
                   help="another recipe as a config file (default gptlab/configs/speedrun.yaml)")
    q.add_argument("--vs-script", metavar="DIR", help="a checkout of the minimal GPT script (nanoGPT: the folder "
                   "with its train.py); its CPU recipe runs first, timed as a whole process")
    q.add_argument("--corpus", metavar="PATH", help="tinyshakespeare.txt (default: ../shared/data/tinyshakespeare.txt "
                   "when present)")
    q.add_argument("--target", type=number(0, low_open=True), default=1.886,
                   help="val loss to reach (default 1.886, the reference recipe's final val loss)")
    q.add_argument("--check-every", type=count(1), default=50, help="steps between val checks (default 50)")
    q.add_argument("--threads", type=count(0, 4096), default=0, help="intra-op threads (default: one per core)")
    _common(q, vs=())
    q.set_defaults(func=cmd_bench_time_to_loss)
