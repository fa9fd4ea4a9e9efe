"""``vla-accel``: demo | bench | export | info | replay | doctor | serve | import.

Each subcommand lives in ``vla_accel.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only for the command that runs, so ``vla-accel doctor``
does not pay for torch and ``vla-accel --help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vla_accel.errors import VlaAccelError

COMMANDS = {
    "demo": "run the VLA node on the embedded default (CPU, reference model) with a synthetic camera",
    "bench": "benchmark backends side by side: latency percentiles, throughput, speedup, parity",
    "export": "export the reference model to ONNX / OpenVINO / TFLite (cached by content hash)",
    "info": "show a model's spec, parameter count and FLOPs per inference",
    "replay": "replay a rosbag2 bag through one or more backends and write a report",
    "doctor": "list every backend, whether it can run here, and what is missing",
    "serve": "serve a policy to many robots from a Triton Inference Server (dynamic batching, metrics)",
    "import": "import a trained LeRobot checkpoint: ONNX graphs + spec + parity check against LeRobot",
}
# Command -> module name where the command is a Python keyword.
MODULES = {"import": "import_"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-accel", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=f"vla_accel.commands.{MODULES.get(name, name)}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # The command is the first argument naming one; its module adds its own arguments before the
    # real parse, so `vla-accel replay --help` lists replay's options.
    command = next((a for a in argv if a in COMMANDS), None)
    if command is None:
        parser.parse_args(argv)  # prints help / errors for unknown commands
        parser.print_help()
        return 2
    module = importlib.import_module(f"vla_accel.commands.{MODULES.get(command, command)}")
    sub = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001 (argparse API gap)
    module.add_arguments(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(module.run(args) or 0)
    except VlaAccelError as exc:
        print(f"vla-accel {command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
