"""``traceexport audit``: does each backend hold what Dify's database holds? Counts, missing, different.

Rebuilds the window's records from Dify's PostgreSQL (as backfill does), maps each for every sink it is routed
to, hashes the payloads, and compares with the delivery ledger in the spool: per sink, app, record type and day,
how many records Dify holds, how many the sink acknowledged, which are missing (dead-lettered ones with their
reason) and which were delivered with different content. --fix backfills exactly the missing and different
records, each only to the sinks that lack it, then audits again (with --json: one object holding "before",
"fixed" (records sent per sink) and "after", also when nothing was missing).

The sinks: those of --config/--to; without either, those the spool has delivered to (a sink named after its
type, e.g. langfuse, built from its environment variables; a sink only a config file defines needs --config).
Dify's database: --dify-db, else TRACEEXPORT_DIFY_DATABASE_URL, else the config file's enrich.database_url.
The ledger keeps acknowledgements for ledger.retention (30 days by default): audit windows older than that
report everything as missing. Exit codes: 0 nothing missing or different; 3 something is; 2 bad input
(database unreachable or refused, unknown schema, bad flags, unknown sink).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from traceexport.cli.backfill_cmd import Job, add_dify_db_flags, resolve_with_database
from traceexport.cli.common import exit_2_on_bad_input, seconds_to_wait
from traceexport.cli.serve_cmd import add_common_flags, overrides_from
from traceexport.config import Config
from traceexport.errors import SourceError
from traceexport.shown import shown

EXIT_MISSING = 3
MAX_PROBLEMS = 20  # rows that cannot be rebuilt listed one per line


def register(subparsers: Any) -> None:
    """Add the ``audit`` sub-command."""
    parser = subparsers.add_parser("audit", help="compare what Dify's database holds with what each sink received",
                                   description=(__doc__ or "").replace("``", ""),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dify_db_flags(parser, since_required=True)
    add_common_flags(parser, serve=False)
    parser.add_argument("--sink", metavar="NAME[,NAME...]",
                        help="only these sinks (default: every sink of --config/--to; without either, every sink "
                             "the spool has delivered to)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--fix", action="store_true",
                        help="backfill exactly the missing and different records to the sinks lacking them, "
                             "then audit again")
    parser.add_argument("--timeout", type=seconds_to_wait(), default=600.0, metavar="SECONDS",
                        help="with --fix: how long to wait for delivery (default 600)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Audit (and fix); the exit code."""
    return exit_2_on_bad_input(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    _sinks_from_spool(args)
    config, url = resolve_with_database(args)
    config = _only_sinks(config, args.sink)
    job = Job(args, url)
    try:
        job.open()  # the schema's one-line errors before anything else
        report = audit(config, job)
        if not args.fix:
            _print(report, args.json)
            return int(report.exit_code)
        if report.exit_code == 0:  # nothing to send: with --json still the shape --fix always has
            _print_fixed(report, {}, report, args.json)
            return int(report.exit_code)
        if not args.json:
            _print(report, False)
        fixed = fix(config, job, report, args.timeout)
        again = audit(config, job)
        _print_fixed(report, fixed, again, args.json)
        return int(again.exit_code)
    finally:
        job.close()


def _sinks_from_spool(args: argparse.Namespace) -> None:
    """Without --config or --to (flag or variable), audit the sinks the spool has delivered to, as ``--to``
    would name them: a sink named after its type (opik, langfuse, ...) is built from its environment
    variables, with its built-in mapping. A sink only a config file defines (its name is not a type) needs
    that file: SourceError when asked for (--sink) or when it is all there is, else one note on stderr."""
    from traceexport.cli.status_cmd import spool_exists
    from traceexport.config.models import SINK_TYPES
    from traceexport.pipeline.spool import Spool, spool_dir_default

    given = overrides_from(args).with_env(os.environ)
    if given.config or given.to:
        return
    spool_dir = Path(given.spool) if given.spool else spool_dir_default()
    if not spool_exists(spool_dir):
        return  # the audit says there is no spool
    spool = Spool(spool_dir, create=False)
    try:
        recorded = sorted(spool.sink_bits())
    finally:
        spool.close()
    wanted = _names(args.sink) or recorded
    unknown = [name for name in wanted if name not in recorded]
    if unknown:
        raise SourceError(f"--sink {unknown[0]}: spool {shown(spool_dir)} never delivered to a sink of that name "
                          f"(it has: {', '.join(recorded) or 'none'})")
    typed = [name for name in wanted if name in SINK_TYPES]
    by_file = [name for name in wanted if name not in SINK_TYPES]
    if by_file and (args.sink or not typed):
        raise SourceError(f"sink {', '.join(by_file)} of spool {shown(spool_dir)} is defined by a config file (its "
                          "type and mapping are not in the spool): pass --config with the file serve uses")
    if by_file:
        print(f"audit: not auditing {', '.join(by_file)} (defined by a config file: pass --config to audit them)",
              file=sys.stderr)
    args.to = ",".join(typed) or None


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _only_sinks(config: Config, names: str | None) -> Config:
    if not names:
        return config
    wanted = _names(names)
    unknown = [n for n in wanted if n not in config.sinks]
    if unknown:
        raise SourceError(f"--sink {unknown[0]}: no such sink (configured: {', '.join(config.sinks)})")
    return config.model_copy(update={"sinks": {n: config.sinks[n] for n in wanted}})


def audit(config: Config, job: Job) -> Any:
    """The window's report against the spool's ledger; the rows it could not audit said on stderr."""
    from traceexport.audit.window import audit as audit_window
    from traceexport.audit.window import ledger_reader
    from traceexport.cli.status_cmd import spool_exists
    from traceexport.pipeline.spool import Spool

    unbuildable = _Unbuildable()
    spool_dir = Path(config.spool.dir)
    try:
        if not spool_exists(spool_dir):
            print(f"audit: no spool at {shown(spool_dir)}: nothing was delivered from it (give the --spool serve uses)",
                  file=sys.stderr)
            return audit_window(config, _NoLedger(), job.source(), job.window, unbuildable)
        spool = Spool(spool_dir, create=False)
        try:
            with ledger_reader(spool, job.window) as ledger:
                _warn_before_ledger(ledger.started_at(), config, job)
                return audit_window(config, ledger, job.source(), job.window, unbuildable)
        finally:
            spool.close()
    finally:
        unbuildable.summary()


class _Unbuildable:
    """Rows of the window no record can be made of (backfill's "bad record" lines): not audited, so the report
    says nothing of them; each is one stderr line (the first ``MAX_PROBLEMS``), then how many in all."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, text: str) -> None:
        self.count += 1
        if self.count <= MAX_PROBLEMS:
            print(f"audit: not audited (cannot be rebuilt): {text}", file=sys.stderr)

    def summary(self) -> None:
        if self.count > MAX_PROBLEMS:
            print(f"audit: {self.count:,} rows of the window cannot be rebuilt and were not audited", file=sys.stderr)


def _warn_before_ledger(started: int, config: Config, job: Job) -> None:
    """A stderr line when the window reaches back before the ledger began or past its retention: deliveries
    made then left no row (or lost it), so their records show as missing."""
    from datetime import UTC, datetime, timedelta

    since = job.window.since
    if since is None:
        return
    began = datetime.fromtimestamp(started, UTC).replace(tzinfo=None)
    kept_from = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=config.ledger.retention)
    if since < began:
        print(f"audit: the ledger in {config.spool.dir} began at {began.isoformat(timespec='seconds')}Z; "
              "deliveries made before then are not in it and their records show as missing", file=sys.stderr)
    elif config.ledger.retention and since < kept_from:
        print(f"audit: the ledger keeps deliveries for ledger.retention; those before "
              f"{kept_from.isoformat(timespec='seconds')}Z were pruned and their records show as missing",
              file=sys.stderr)


class _NoLedger:
    """The ledger of a spool that does not exist: nothing acknowledged, nothing dead-lettered."""

    def acknowledged(self, sink_name: str, keys: Any, /) -> dict[str, tuple[str, int]]:
        return {}

    def dead_letters(self, sink_name: str, keys: Any, /) -> dict[str, str]:
        return {}


def fix(config: Config, job: Job, report: Any, timeout: float) -> dict[str, int]:
    """Backfill each sink's missing and different records to that sink only; how many per sink. Says so on
    stderr, and which sinks still had some pending after ``timeout`` (the spool keeps them)."""
    from traceexport.cli.spool_delivery import SpoolDelivery

    sent: dict[str, int] = {}
    pending: dict[str, int] = {}
    for sink, keys in report.keys_to_fix().items():
        if not keys:
            continue
        one = config.model_copy(update={"sinks": {sink: config.sinks[sink]}})
        delivery = SpoolDelivery(one, Path(config.spool.dir), lambda text: print(text, file=sys.stderr), "audit",
                                 enrich_ahead=True)
        try:
            for page in job.open_reader().pages(job.window):
                wanted = [r for r in page.records if r.key in keys]
                if wanted:
                    delivery.accept(wanted)
                    sent[sink] = sent.get(sink, 0) + len(wanted)
            idle, metrics, _ = delivery.finish(timeout)
        finally:
            delivery.close()
        if not idle:  # the audit after the fix shows them missing: say why, and that they are not lost
            pending[sink] = sum(s["queue_depth"] for s in metrics["sinks"].values())
    what = ", ".join(f"{n} record(s) to {s}" for s, n in sent.items()) or "nothing (the rows changed since)"
    print(f"audit --fix: re-sent {what}; auditing again", file=sys.stderr)
    for sink, count in pending.items():
        print(f"audit --fix: {count} record(s) for {sink} still pending after --timeout {timeout:g}s; the spool "
              f"{config.spool.dir} keeps them ('traceexport serve' delivers them)", file=sys.stderr)
    return sent


def _print_fixed(before: Any, fixed: dict[str, int], after: Any, as_json: bool) -> None:
    """What ``--fix`` prints: the audit after it (text), or one object with ``before``, ``fixed`` and ``after``
    (JSON), also when nothing was missing."""
    from traceexport.audit.render import to_json

    if as_json:
        print(json.dumps({"before": to_json(before), "fixed": fixed, "after": to_json(after)}, indent=2))
    else:
        _print(after, False)


def _print(report: Any, as_json: bool) -> None:
    from traceexport.audit.render import to_json, to_text

    if as_json:
        print(json.dumps(to_json(report), indent=2))
    else:
        print(to_text(report))
