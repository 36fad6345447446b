"""`gptlab sample`: text from a trained run, streamed with the KV cache."""

from __future__ import annotations

import argparse
import sys

from gptlab.commands.common import add_device_arg, checked_device, count, number


def cmd_sample(args: argparse.Namespace) -> None:
    from gptlab.generate import StreamingDecoder, check_prompt, generate
    from gptlab.run import load_model
    from gptlab.train.distributed import set_threads

    set_threads()
    device = checked_device(args.device)
    if args.adapter:
        from gptlab.adapters.merge import load_with_adapter

        model, tok, _ = load_with_adapter(args.run, args.adapter, args.checkpoint)
        model = model.to(device)
    else:
        model, tok, _ = load_model(args.run, args.checkpoint, device=device, quant=args.quant)
    prompt = args.prompt if args.prompt is not None else ("\n" if tok.eot_id is None else None)
    ids = tok.encode(prompt) if prompt is not None else [tok.eot_id]
    check_prompt(model, ids, args.max_new_tokens)  # before anything is printed
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        tokens = generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, seed,
                          compiled=args.compile)
        if prompt:
            sys.stdout.write(prompt)
        decoder = StreamingDecoder(tok)
        for t in tokens:
            sys.stdout.write(decoder.push(t))
            sys.stdout.flush()
        sys.stdout.write(decoder.flush() + "\n")
        if i + 1 < args.num_samples:
            sys.stdout.write("-" * 40 + "\n")
    if args.compile:
        from gptlab import static_decode

        print(f"decoding: {static_decode.status}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text with the KV cache, streaming it to the terminal.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--prompt", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=count(1), default=200)
    p.add_argument("--temperature", type=number(0), default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=count(1), help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=number(0, 1, low_open=True),
                   help="sample among the most likely tokens whose probability sums to p")
    p.add_argument("--seed", type=count(0, 2**63 - 1 - 10**6), help="make sampling repeatable")
    p.add_argument("--num-samples", type=count(1, 10**6), default=1)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--compile", action="store_true", help="decode with a step compiled once (torch.compile, a "
                   "fixed-size cache): less overhead per token after a compile of seconds; worth it for long or "
                   "many samples. Falls back to eager decoding where compiling fails, and says so")
    add_device_arg(p, "sample")
    p.add_argument("--adapter", metavar="ADAPTER_DIR", help="add a LoRA adapter (gptlab finetune or PEFT) to --run")
    p.add_argument("--quant", choices=["none", "int8", "int4"], default="none", help="quantize the weights of "
                   "every linear layer, head included, on loading: int8 per channel or int4 in groups of 32, with "
                   "gptlab's integer decode kernels")
    p.set_defaults(func=cmd_sample)
