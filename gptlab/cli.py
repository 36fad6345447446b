"""`gptlab <command>`: each command is a thin wrapper over a library function (gptlab/commands/, one module per
command group, each parser beside its handler).

Errors in the user's input end the command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from gptlab.commands import ab, bench, data, doctor, evaluate, interop, lab, quant, quickstart, report, sample, train
from gptlab.commands.common import Parser
from gptlab.errors import GptlabError

# The command groups, in the order `gptlab --help` lists them; each registers its parsers beside its handlers.
COMMANDS = (data, train, sample, quant, evaluate, report, quickstart, interop, lab, ab, bench, doctor)

EXAMPLES = """\
examples:
  gptlab quickstart
  gptlab prepare --corpus shakespeare --tokenizer char --out runs/data/char
  gptlab train --data runs/data/char --out runs/small --set model.n_layer=4 --set train.max_steps=2000
  gptlab train --resume runs/small --set train.max_steps=4000
  gptlab sample --run runs/small --prompt "ROMEO." --max-new-tokens 300 --temperature 0.8 --top-k 40
  gptlab eval --run runs/small --lengths 64,128,256
  gptlab report --run runs/small
  gptlab finetune --run runs/small --data runs/data/poems --out runs/lora --set lora.r=8 --set lora.scaling=rslora
  gptlab lab run tying --profile quick
  gptlab bench train --set model.n_layer=4 --set model.n_embd=128
  gptlab quantize --run runs/small --out runs/small-int4 --set quant.bits=4 --set quant.group_size=32
  gptlab quant inspect --run runs/small --set quant.bits=4
  gptlab sample --run runs/small --quant int8 --prompt "ROMEO."
  gptlab export hf --run runs/small --out runs/small-hf
  gptlab import hf path/to/gpt2-dir --out runs/gpt2 && gptlab train --init-from runs/gpt2 --data DATA --out runs/ft
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gptlab", description="Build, train, sample and evaluate GPT-2-style models from scratch.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMANDS:
        group.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, torchrun stopping its workers): handled like Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument (one line already printed)
        return e.code if isinstance(e.code, int) else 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        args.func(args)
    except GptlabError as e:
        print(f"gptlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave that cannot be read or written (loops, permissions, long names)
        what = f"{e.filename}: " if e.filename else ""
        print(f"gptlab {args.command}: error: {what}{e.strerror or e}; check the path and try again", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        hint = getattr(args, "interrupt_hint", "continue a run with `gptlab train --resume RUN_DIR`")
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"\ngptlab {args.command}: {how}; checkpoints already written are intact ({hint})", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if "torch" in sys.modules:  # leave a torchrun process group cleanly
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
