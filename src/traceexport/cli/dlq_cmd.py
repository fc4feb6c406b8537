"""``traceexport dlq``: list, show, replay and purge the dead letter kept in the spool; retire a sink."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from traceexport.cli.status_cmd import add_spool_argument, query_spool
from traceexport.pipeline import deadletter
from traceexport.pipeline.spool import Spool

T = TypeVar("T")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """Epoch seconds from an ISO 8601 time (naive = UTC) or an age such as ``30m``, ``2h``, ``7d`` ago."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use ISO 8601 like 2025-01-31T12:00:00Z, or an age like 30m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def register(sub: Any) -> None:
    """Add the ``dlq`` command and its sub-commands."""
    parser = sub.add_parser(
        "dlq", help="inspect, replay or purge dead-lettered records",
        description="Records a sink refused permanently, or gave up on after its retries, are kept in the "
                    "spool's dead letter with the reason. Replay moves them back to their sink's queue: a "
                    "running daemon, or the next 'traceexport export'/'serve' on the same spool, delivers them.")
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION")
    listing = actions.add_parser("list", help="list dead letters (oldest first)",
                                 description="List dead letters, oldest first.")
    _add_filters(listing)
    listing.add_argument("--json", action="store_true", help="print a JSON array (without envelopes)")
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", help="show one dead letter with its record",
                              description="Show one dead letter, including the stored record envelope.")
    add_spool_argument(show)
    show.add_argument("id", type=int, metavar="ID", help="dead letter id (from 'dlq list')")
    show.set_defaults(func=run_show)
    again = actions.add_parser("replay", help="move dead letters back to their sink's queue",
                               description="Move dead letters back to their sink's queue for another try.")
    _add_filters(again)
    again.add_argument("--since", type=parse_when, metavar="T",
                       help="only entries whose last attempt was at or after T (ISO 8601 time, or age: 2h)")
    again.add_argument("ids", nargs="*", type=int, metavar="ID", help="only these ids (default: all matching)")
    again.set_defaults(func=run_replay)
    purge = actions.add_parser("purge", help="delete dead letters for good",
                               description="Delete dead letters for good. Needs --yes.")
    _add_filters(purge)
    purge.add_argument("--before", type=parse_when, metavar="T",
                       help="only entries whose last attempt was before T (ISO 8601 time, or age: 7d)")
    purge.add_argument("--yes", action="store_true", help="confirm the deletion")
    purge.set_defaults(func=run_purge)
    retire = actions.add_parser(
        "retire", help="dead-letter what a sink removed from the config is still owed",
        description="A sink taken out of the config keeps its undelivered records in the spool (nothing is "
                    "dropped silently). Retire moves them to its dead letter with a reason, so the spool can "
                    "free them: then 'dlq purge --sink SINK --yes' deletes them, or, if the sink comes back, "
                    "'dlq replay --sink SINK' queues them again. Meant for sinks no daemon delivers to.")
    add_spool_argument(retire)
    retire.add_argument("sink", metavar="SINK", help="the sink's name, as 'traceexport status' lists it")
    retire.set_defaults(func=run_retire)
    parser.set_defaults(func=lambda args: _usage(parser))


def _add_filters(parser: argparse.ArgumentParser) -> None:
    """The spool location and ``--sink``, shared by the sub-commands that select dead letters."""
    add_spool_argument(parser)
    parser.add_argument("--sink", help="only this sink's dead letters")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _query_one(args: argparse.Namespace, query: Callable[[Spool], T | None], missing: str) -> T | None:
    """What ``query`` finds in the spool, or None after saying why (no spool, or ``missing``)."""
    found = query_spool(args, lambda spool: [query(spool)])
    if found is None:
        return None
    if found[0] is None:
        print(f"error: {missing}", file=sys.stderr)
    return found[0]


def _stamp(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_list(args: argparse.Namespace) -> int:
    """Print dead letters as a table or JSON."""
    entries = query_spool(args, lambda spool: deadletter.list_entries(spool, args.sink))
    if entries is None:
        return 2
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("the dead letter is empty" + (f" for sink {args.sink}" if args.sink else ""))
        return 0
    print(f"{'ID':>6}  {'SINK':<12} {'TYPE':<18} {'ATTEMPTS':>8}  {'LAST ATTEMPT':<20}  REASON")
    for e in entries:
        kind = "permanent" if e.permanent else "gave up"
        print(f"{e.id:>6}  {e.sink:<12} {e.record_type:<18} {e.attempts:>8}  {_stamp(e.last_attempt):<20}  "
              f"[{kind}] {e.reason[:160]}")
    print(f"{len(entries)} entries; 'traceexport dlq show ID' for one, 'traceexport dlq replay' to retry")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print one dead letter as JSON, envelope included."""
    entry = _query_one(args, lambda spool: deadletter.get_entry(spool, args.id), f"no dead letter with id {args.id}")
    if entry is None:
        return 2
    data = entry.as_dict()
    data["first_attempt_utc"], data["last_attempt_utc"] = _stamp(entry.first_attempt), _stamp(entry.last_attempt)
    print(json.dumps(data, indent=2))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """Move matching dead letters back to their sinks' queues."""
    moved = query_spool(args, lambda spool: deadletter.replay(spool, args.sink, since=args.since, ids=args.ids))
    if moved is None:
        return 2
    if not moved:
        print("nothing to replay")
        return 0
    for sink, n in sorted(moved.items()):
        print(f"{n} record{'s' if n != 1 else ''} queued again for {sink}")
    print("a running daemon delivers them now; otherwise run 'traceexport export --to SINK' on this spool")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    """Delete matching dead letters; refuses without --yes."""
    if not args.yes:
        would = query_spool(args, lambda spool: deadletter.count(spool, args.sink, before=args.before))
        if would is not None:
            print(f"error: would delete {would} dead letters for good; add --yes to confirm", file=sys.stderr)
        return 2
    n = query_spool(args, lambda spool: deadletter.purge(spool, args.sink, before=args.before))
    if n is None:
        return 2
    print(f"deleted {n} dead letter{'s' if n != 1 else ''}")
    return 0


def run_retire(args: argparse.Namespace) -> int:
    """Dead-letter every record still owed to one sink."""
    moved = _query_one(args, lambda spool: deadletter.retire(spool, args.sink),
                       f"this spool has no sink named {args.sink!r} ('traceexport status' lists them)")
    if moved is None:
        return 2
    print(f"{moved} record{'s' if moved != 1 else ''} still owed to {args.sink} moved to its dead letter; "
          f"'traceexport dlq purge --sink {args.sink} --yes' deletes them")
    return 0
