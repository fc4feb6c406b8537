"""Helpers shared by the commands: reading record files, reporting bad records, parsing options."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from traceexport.errors import ConfigError, RecordError
from traceexport.records import Record, parse_records


def read_input(name: str) -> bytes:
    """The bytes of a file, or of standard input for ``-``; a ConfigError when it cannot be read."""
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"], title="cannot read input") from exc


def iter_records(files: Sequence[str]) -> Iterator[Record | RecordError]:
    """Every record (or RecordError) in the named files, in order."""
    for name in files:
        source = "<stdin>" if name == "-" else name
        yield from parse_records(read_input(name), source)


def spool_option(spool_dir: str | os.PathLike[str]) -> str:
    """`` --spool DIR`` for a printed command, or ``""`` when ``spool_dir`` is what the command finds anyway.

    The default is ``$TRACEEXPORT_SPOOL``, else ``./traceexport-spool`` (see ``spool_dir_default``).
    """
    default = os.environ.get("TRACEEXPORT_SPOOL") or "traceexport-spool"
    if os.path.abspath(spool_dir) == os.path.abspath(default):
        return ""
    return f" --spool {shlex.quote(str(spool_dir))}"


def report_bad(error: RecordError) -> None:
    """One line on stderr for a bad record."""
    print(f"rejected: {error}", file=sys.stderr)


def parse_key_values(pairs: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as YAML scalars: true, 3, text) into a dict."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"{flag} {pair!r}: expected KEY=VALUE")
            continue
        try:
            out[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    if problems:
        raise ConfigError(problems, title="invalid options")
    return out


def add_mapping_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mapping FILE`` (repeatable) and ``--option KEY=VALUE`` (repeatable)."""
    parser.add_argument(
        "--mapping",
        action="append",
        metavar="FILE",
        default=[],
        help="a mapping file extending the built-in one ('extends: builtin'); repeat to layer several",
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="set a mapping option, e.g. send_content=false or node_events=true (see mappings/README.md)",
    )
