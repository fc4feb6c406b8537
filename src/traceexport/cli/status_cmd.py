"""``traceexport status``: delivery counters, queue depth and oldest pending age per sink, from the spool."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from traceexport.errors import ConfigError
from traceexport.pipeline.metrics import snapshot
from traceexport.pipeline.spool import Spool, spool_dir_default

T = TypeVar("T")
_COLUMNS = ("accepted", "exported", "retried", "dead_lettered", "dropped", "queue_depth",
            "oldest_pending_age_seconds")
_HEADINGS = ("ACCEPTED", "EXPORTED", "RETRIED", "DEAD", "DROPPED", "PENDING", "OLDEST")


def add_spool_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--spool DIR`` option every spool-reading command shares."""
    parser.add_argument("--spool", type=Path, default=None, metavar="DIR",
                        help="spool directory (default: $TRACEEXPORT_SPOOL, else ./traceexport-spool)")


def open_spool(args: argparse.Namespace) -> Spool | None:
    """The existing spool named by ``args.spool``; prints why and returns None when there is none."""
    try:
        return Spool(args.spool or spool_dir_default(), create=False)
    except ConfigError as exc:
        print(f"error: {exc.problems[0]}", file=sys.stderr)
        return None


def query_spool(args: argparse.Namespace, query: Callable[[Spool], T]) -> T | None:
    """Run ``query`` on the existing spool and close it; None (after saying why) when there is no spool."""
    spool = open_spool(args)
    if spool is None:
        return None
    try:
        return query(spool)
    finally:
        spool.close()


def register(sub: Any) -> None:
    """Add the ``status`` command."""
    parser = sub.add_parser(
        "status", help="show delivery counters and queue depth per sink",
        description="Show, per sink, the records accepted, exported, retried, dead-lettered and dropped, the "
                    "records still pending and the age of the oldest one. Reads the spool, so it works "
                    "while a daemon or export is running in another process.")
    add_spool_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the status of the spool; 0, or 2 when there is no spool."""
    snap = query_spool(args, snapshot)
    if snap is None:
        return 2
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
        return 0
    print(f"spool {snap['spool']}: {snap['records']} records, {snap['spool_bytes'] / 1e6:.1f} MB")
    if not snap["sinks"]:
        print("no sinks have used this spool yet")
        return 0
    width = max(len("SINK"), *(len(s) for s in snap["sinks"]))
    print(f"{'SINK':<{width}}  " + "  ".join(f"{h:>9}" for h in _HEADINGS))
    for name, figures in snap["sinks"].items():
        cells = [str(figures[c]) for c in _COLUMNS[:-1]] + [_age(figures[_COLUMNS[-1]])]
        print(f"{name:<{width}}  " + "  ".join(f"{c:>9}" for c in cells))
    if any(snap["dead_letters"].values()):
        print("dead letters kept: run 'traceexport dlq list' to see them")
    return 0


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
