"""``traceexport status``: delivery counters, queue depth, oldest pending age and delivery latency per sink,
from the spool."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from traceexport.cli.common import spool_option
from traceexport.errors import ConfigError, Problem
from traceexport.pipeline.metrics import snapshot
from traceexport.pipeline.owner import owner
from traceexport.pipeline.spool import Spool, spool_dir_default
from traceexport.pipeline.spool_dir import SPOOL_FILE, check_spool_dir
from traceexport.pipeline.turns import turn_holder
from traceexport.shown import shown

T = TypeVar("T")
_TOTALS = ("accepted", "exported", "retried", "dropped")  # counters: totals since the spool began, only rise
_HEADINGS = ("ACCEPTED", "EXPORTED", "RETRIED", "DROPPED", "IN DLQ", "PENDING", "OLDEST", "P50", "P95")


def add_spool_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--spool DIR`` option every spool-reading command shares."""
    parser.add_argument("--spool", type=Path, default=None, metavar="DIR",
                        help="spool directory (default: $TRACEEXPORT_SPOOL, else ./traceexport-spool)")


def spool_path(args: argparse.Namespace) -> Path:
    """The spool directory ``args`` names: ``--spool``, else ``$TRACEEXPORT_SPOOL``, else the default."""
    return Path(args.spool) if args.spool else spool_dir_default()


def spool_exists(spool_dir: Path) -> bool:
    """True once something has created a spool there (nothing accepted yet is not an error); ConfigError when
    the path is of the wrong kind (``check_spool_dir``) or cannot be looked into (no permission)."""
    check_spool_dir(spool_dir)
    try:
        return (spool_dir / SPOOL_FILE).is_file()
    except OSError as exc:
        raise ConfigError([Problem("", f"spool {shown(spool_dir)}: {exc.strerror or exc}")],
                          title="cannot open spool") from exc


def query_spool(args: argparse.Namespace, query: Callable[[Spool], T], empty: T) -> T | None:
    """Run ``query`` on the spool and close it; ``empty`` when there is no spool yet (nothing is created
    by looking); None, after saying why on stderr, when the spool cannot be opened or the query fails on it
    (e.g. a purge on a spool this user may only read)."""
    spool_dir = spool_path(args)
    try:
        if not spool_exists(spool_dir):
            return empty
        spool = Spool(spool_dir, create=False)
    except ConfigError as exc:
        print(f"error: {exc.problems[0]}", file=sys.stderr)
        return None
    try:
        return query(spool)
    except sqlite3.Error as exc:
        print(f"error: spool {shown(spool_dir)}: {exc}", file=sys.stderr)
        return None
    finally:
        spool.close()


def empty_snapshot(spool_dir: Path) -> dict[str, Any]:
    """What ``status --json`` says about a spool nothing was accepted into yet."""
    return {"spool": str(spool_dir), "spool_bytes": 0, "records": 0, "dead_letters": {}, "sinks": {}}


def register(sub: Any) -> None:
    """Add the ``status`` command."""
    parser = sub.add_parser(
        "status", help="show delivery counters, queue depth and delivery latency per sink",
        description="Show, per sink, the records accepted, exported, retried and dropped since the spool began, "
                    "the entries in its dead letter now, the records still pending, the age of the oldest one "
                    "and the p50/p95 delivery latency. --json has the same figures plus the lifetime counters "
                    "(dead_lettered, replayed, ...) that /metrics serves. Reads "
                    "the spool, so it works while a daemon or export is running in another process.")
    add_spool_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the status of the spool; 0 (also when nothing was accepted yet), 2 when it cannot be read."""
    snap = query_spool(args, snapshot, empty_snapshot(spool_path(args)))
    if snap is None:
        return 2
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
        return 0
    print(f"spool {shown(snap['spool'])}: {snap['records']} records, {snap['spool_bytes'] / 1e6:.1f} MB")
    if not snap["sinks"]:
        print("nothing accepted yet: no sink has used this spool")
        return 0
    width = max(len("SINK"), *(len(s) for s in snap["sinks"]))
    print(f"{'SINK':<{width}}  " + "  ".join(f"{h:>9}" for h in _HEADINGS))
    for name, figures in snap["sinks"].items():
        delivery = figures.get("latency", {}).get("delivery_latency", {})
        cells = [str(figures[c]) for c in _TOTALS] + [str(snap["dead_letters"].get(name, 0)),
                                                       str(figures["queue_depth"]),
                                                       _age(figures["oldest_pending_age_seconds"])]
        cells += [_latency(delivery.get("p50_seconds")), _latency(delivery.get("p95_seconds"))]
        print(f"{name:<{width}}  " + "  ".join(f"{c:>9}" for c in cells))
    print("ACCEPTED..DROPPED: totals since the spool began; IN DLQ: entries in the dead letter now (--json's "
          "dead_lettered: every record ever dead-lettered)")
    print("P50/P95: delivery latency (acceptance to acknowledgement) since the spool began, estimated from "
          "its histogram")
    if any(snap["dead_letters"].values()):
        print(f"dead letters kept: run 'traceexport dlq list{spool_option(snap['spool'])}' to see them")
    _name_undelivered(snap)
    return 0


def _name_undelivered(snap: dict[str, Any]) -> None:
    """A line for each sink holding pending records that neither the daemon running on the spool nor a command
    delivers to (taken out of the daemon's config or renamed, or left by an interrupted command): they wait
    there for good unless something delivers them or they are retired."""
    spool_dir = Path(snap["spool"])
    daemon = owner(spool_dir)
    if daemon is None:
        return
    for name, figures in snap["sinks"].items():
        if figures["queue_depth"] and not daemon.delivers(name) and turn_holder(spool_dir, name) is None:
            print(f"{name}: {figures['queue_depth']} records pending, but {daemon.describe()} on this spool does "
                  f"not deliver to it (not in its config): add it back and restart, run again the command that "
                  f"left them (export, replay, ...), or run 'traceexport dlq retire{spool_option(spool_dir)} "
                  f"{name}' to move them to its dead letter")


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else _age(seconds) if seconds >= 120 else f"{seconds:.1f}s"
