"""The ``traceexport`` command line: one module per command, each with ``register(subparsers)``.

A command module's ``register`` adds its sub-parser and sets ``func`` (``args -> exit code``) as default, and
``interrupted`` (what a Ctrl-C leaves behind and how to go on) when a command stopped part-way leaves work behind.
Exit codes everywhere: 0 success, 1 could not finish (e.g. backend unreachable), 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Order is the order shown in --help.
COMMANDS = ["map", "validate", "export", "serve", "replay", "backfill", "audit", "dlq", "status"]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the arguments, only their command's module is imported (a command's imports are
    its own: ``map`` never loads the pipeline or the HTTP transport), every command's without them."""
    parser = argparse.ArgumentParser(
        prog="traceexport",
        description="Export Dify trace records to Opik, Langfuse, OTLP backends and Amplitude.",
        epilog="Run 'traceexport COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"traceexport {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _commands_named(argv):
        try:
            module = importlib.import_module(f"traceexport.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"traceexport.cli.{name}_cmd":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def _commands_named(argv: Sequence[str] | None) -> list[str]:
    """The one command ``argv`` starts with, else every command (no arguments, ``--help``, a typo)."""
    first = list(argv or ())[:1]
    return first if first and first[0] in COMMANDS else COMMANDS


def package_version() -> str:
    """The installed distribution's version (package metadata), else the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("traceexport")
    except PackageNotFoundError:
        from traceexport import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:  # one line saying where things stand, never a traceback
        hint = getattr(args, "interrupted", None)
        print(f"traceexport {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    return code


def _quiet_after_closed_pipe() -> None:
    """Standard output's reader went away (``traceexport map ... | head``): point stdout at devnull.

    Python flushes stdout again at exit; without this, that flush raises BrokenPipeError once more.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run() -> None:
    """The console script: exit with the command's code; quietly when stdout's reader has gone."""
    from traceexport._gc import tune_for_throughput

    tune_for_throughput()  # this process is traceexport's own (the library hook never comes here)
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_after_closed_pipe()
        code = 1
    sys.exit(code)
