"""The ``traceexport`` command line: one module per command, each with ``register(subparsers)``.

A command module's ``register`` adds its sub-parser and sets ``func`` (``args -> exit code``) as default.
Exit codes everywhere: 0 success, 1 could not finish (e.g. backend unreachable), 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order shown in --help.
COMMANDS = ["map", "validate", "export", "serve", "replay", "dlq", "status"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traceexport",
        description="Export Dify trace records to Opik, Langfuse, OTLP backends and Amplitude.",
        epilog="Run 'traceexport COMMAND --help' for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"traceexport.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"traceexport.cli.{name}_cmd":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


def run() -> None:
    sys.exit(main())
