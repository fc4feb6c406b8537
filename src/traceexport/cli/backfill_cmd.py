"""``traceexport backfill``: rebuild trace records from Dify's PostgreSQL and deliver them.

Reads Dify's database read-only and rebuilds the records Dify's own TraceTask makes from the same rows:
workflow runs, messages, and a tool record for each tool an agent message used. Dataset retrieval,
moderation, suggested questions and conversation titles cannot be rebuilt: Dify keeps neither their content
nor the moment they ran, which is their identity. A rebuilt record has the same backend ids as the live one,
so a window that was also exported live gains no duplicates. The records go through the spool and the
mappings like any others (workflow runs get their node spans from the same database).

Resumable: a checkpoint in <spool>/backfill/ remembers the last page the spool accepted; the same command
run again continues there (--restart starts over). Exit codes: 0 all delivered; 1 could not finish
(pending after --timeout, or dead-lettered after the retries ran out); 2 bad input (database unreachable or
refused, unknown schema, bad flags, records a backend refused).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traceexport.cli.common import Progress, exit_2_on_bad_input, number, seconds_to_wait, whole_number
from traceexport.cli.replay_cmd import report
from traceexport.cli.serve_cmd import add_common_flags, overrides_from
from traceexport.cli.spool_delivery import SpoolDelivery
from traceexport.cli.timespec import TimeSpecError, is_span, parse_time
from traceexport.config import Config, resolve_config
from traceexport.config.resolve import DATABASE_URL_ENV
from traceexport.errors import DaemonConflictError, RecordError, SourceError
from traceexport.logs import setup_logging

if TYPE_CHECKING:
    from traceexport.difydb.checkpoint import Checkpoint

MAX_PROBLEMS = 20


def register(subparsers: Any) -> None:
    """Add the ``backfill`` sub-command."""
    parser = subparsers.add_parser("backfill", help="rebuild past records from Dify's database and deliver them",
                                   description=(__doc__ or "").replace("``", ""),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dify_db_flags(parser)
    add_common_flags(parser, serve=False)
    parser.add_argument("--dry-run", action="store_true",
                        help="read, rebuild and map only; print counts per type; send nothing")
    parser.add_argument("--max-rate", type=number(0, 1e9, above=True), metavar="ROWS_PER_S",
                        help="read at most this many rows per second (spares a production database)")
    parser.add_argument("--restart", action="store_true", help="ignore this job's checkpoint and start over")
    parser.add_argument("--timeout", type=seconds_to_wait(), default=600.0, metavar="SECONDS",
                        help="how long to wait for delivery to finish (default 600)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar with rate and ETA on stderr (default: when stderr is a terminal)")
    parser.add_argument("--page-size", type=whole_number(1, 100_000), default=500, help=argparse.SUPPRESS)
    parser.set_defaults(func=run,
                        interrupted="its checkpoint keeps its place; run the same backfill again to resume")


def add_dify_db_flags(parser: argparse.ArgumentParser, *, since_required: bool = False) -> None:
    """The flags ``backfill`` and ``audit`` share: the database and the window."""
    parser.add_argument("--dify-db", metavar="URL",
                        help="Dify's PostgreSQL, postgresql://user:password@host:port/dbname (env "
                             f"{DATABASE_URL_ENV}, else the config file's enrich.database_url); a read-only "
                             "login is enough")
    parser.add_argument("--since", metavar="T", required=since_required,
                        help="from this time (ISO date or datetime, UTC unless an offset is given, or a span back "
                             "from now: 30d, 12h)" + ("" if since_required else "; default: the beginning"))
    parser.add_argument("--until", metavar="T", help="up to (not including) this time; default: now")
    parser.add_argument("--apps", metavar="ID[,ID...]", help="only these Dify app ids")
    parser.add_argument("--types", metavar="TYPE[,TYPE...]",
                        help="only these record types: workflow, message, tool (default: all three)")
    parser.add_argument("--dify-version", choices=["auto", "1.10", "1.14"], default="auto",
                        help="the record layout of your Dify (default: told from the schema)")
    parser.add_argument("--files-url", metavar="URL",
                        help="Dify's FILES_URL, which prefixes file links in records (env FILES_URL; "
                             "default http://127.0.0.1:5001, Dify's own default)")
    parser.add_argument("--statement-timeout", type=number(0, 86400, above=True), default=60.0, metavar="SECONDS",
                        help="longest any one query may run on Dify's database (default 60)")


class Job:
    """What a backfill or audit reads, from the flags: the database, its window, the reader."""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        """``url``: Dify's database, as :func:`resolve_with_database` found it."""
        from traceexport.difydb import REBUILDABLE, Window
        from traceexport.difydb.reader import NOT_REBUILDABLE

        self.url = url
        try:
            since = parse_time(args.since, flag="--since") if args.since else None
            until = parse_time(args.until, flag="--until") if args.until else parse_time("0s")
        except TimeSpecError as exc:
            raise SourceError(str(exc)) from None
        if since is not None and since >= until:
            bound = f"--until ({until.isoformat()})" if args.until else \
                f"now ({until.isoformat(timespec='seconds')}, --until's default)"
            raise SourceError(f"--since ({since.isoformat()}) is not before {bound}")
        types = _split(args.types) or list(REBUILDABLE)
        for name in types:
            if name in NOT_REBUILDABLE:
                raise SourceError(f"--types {name}: cannot be rebuilt from Dify's database: {NOT_REBUILDABLE[name]}")
            if name not in REBUILDABLE:
                raise SourceError(f"--types {name}: unknown; choose from {', '.join(REBUILDABLE)}")
        apps = _split(args.apps)
        for app in apps:
            if not _is_uuid(app):
                raise SourceError(f"--apps {app!r} is not a Dify app id (a UUID)")
        self.window = Window(since=since, until=until, apps=tuple(apps) or None, types=frozenset(types))
        self.files_url = args.files_url or os.environ.get("FILES_URL") or "http://127.0.0.1:5001"
        self.layout = None if args.dify_version == "auto" else args.dify_version
        self.statement_timeout = args.statement_timeout
        self.page_size: int = 500
        self.max_rate: float | None = None
        self.conn: Any = None

    def open(self, *, page_size: int = 500, max_rate: float | None = None) -> Any:
        """Connect, check the schema; the reader."""
        from traceexport.difydb import connect, inspect
        from traceexport.difydb.connect import read_error

        self.page_size, self.max_rate = page_size, max_rate
        self.conn = connect(self.url, statement_timeout=self.statement_timeout)
        try:
            schema = inspect(self.conn, self.layout)
        except Exception as exc:
            psycopg = importlib.import_module("psycopg")
            if isinstance(exc, psycopg.Error):  # e.g. the schema check ran past --statement-timeout
                raise read_error(exc) from exc
            raise
        self.schema = schema
        return self.open_reader()

    def source(self) -> Any:
        """Dify's database as the audit reads it."""
        from traceexport.audit.window import Source

        return Source(self.url, self.layout, self.files_url, self.statement_timeout)

    def open_reader(self) -> Any:
        """A reader on the open connection (a fresh one per pass over the window)."""
        from traceexport.difydb import DifyReader

        return DifyReader(self.conn, self.schema, files_url=self.files_url, page_size=self.page_size,
                          max_rate=self.max_rate)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _absolute(text: str | None) -> bool:
    """Whether a --since/--until value names a fixed time (not a span back from now, not absent)."""
    return text is not None and not is_span(text)


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def resolve_with_database(args: argparse.Namespace) -> tuple[Config, str]:
    """The config and Dify's database: ``--dify-db``, else ``TRACEEXPORT_DIFY_DATABASE_URL``, else the config
    file's ``enrich.database_url`` (the one the daemon's enricher and periodic audit read). The node enricher
    reads the same database. SourceError when none is given."""
    env = dict(os.environ)
    if args.dify_db and args.dify_db.strip():
        env[DATABASE_URL_ENV] = args.dify_db  # the flag wins over the variable, which wins over the file
    config = resolve_config(overrides_from(args), env, serve=False)
    setup_logging(config.log_level, config.log_format)
    url = config.enrich.database_url.get_secret_value() if config.enrich.database_url is not None else ""
    if not url.strip():
        raise SourceError(f"no Dify database: pass --dify-db URL, set {DATABASE_URL_ENV}, or set "
                          "enrich.database_url in the config file (--config)")
    return config, url


def run(args: argparse.Namespace) -> int:
    """Backfill; the exit code."""
    return exit_2_on_bad_input(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    config, url = resolve_with_database(args)
    job = Job(args, url)
    try:
        reader = job.open(page_size=args.page_size, max_rate=args.max_rate)
        if args.dry_run:
            return _dry_run(config, job, reader, args)
        return _backfill(config, job, reader, args)
    finally:
        job.close()


def _progress(job: Job, reader: Any, args: argparse.Namespace) -> Progress:
    enabled = sys.stderr.isatty() if args.progress is None else args.progress
    return Progress("backfill", reader.count(job.window) if enabled else 0, enabled, unit=" rows")


def _dry_run(config: Config, job: Job, reader: Any, args: argparse.Namespace) -> int:
    from traceexport.config.resolve import load_sink_mapping

    mappings = {name: load_sink_mapping(sc) for name, sc in config.sinks.items()}
    counts: dict[str, int] = {}
    payloads = dict.fromkeys(mappings, 0)
    problems = 0
    out = _progress(job, reader, args)
    for page in reader.pages(job.window):
        for text in page.problems:
            problems += 1
            if problems <= MAX_PROBLEMS:
                out.line(f"bad record: {text}")
        for record in page.records:
            counts[record.type] = counts.get(record.type, 0) + 1
            for name, mapping in mappings.items():
                sink = config.sinks[name]
                if (sink.records is None or record.type in sink.records) and (
                        sink.apps is None or record.app_id in sink.apps):
                    try:
                        payloads[name] += len(mapping.map(record))
                    except RecordError as exc:
                        problems += 1
                        out.line(f"bad record: {record.key}: {exc.reason}")
        out.advance(page.rows, f"{sum(counts.values())} records")
    out.close()
    by_type = ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "no records"
    by_sink = ", ".join(f"{n} payloads for {s}" for s, n in payloads.items())
    print(f"backfill (dry run, Dify {job.schema.layout} layout): {by_type}; {by_sink}; {problems} problem(s)",
          file=sys.stderr)
    return 2 if problems else 0


def _backfill(config: Config, job: Job, reader: Any, args: argparse.Namespace) -> int:
    from traceexport.difydb import masked_url
    from traceexport.difydb.checkpoint import Checkpoint, job_id
    from traceexport.pipeline.spool_dir import check_spool_dir

    spool_dir = Path(config.spool.dir)
    check_spool_dir(spool_dir)  # a file where the spool should be: one line, before the checkpoint is made there
    checkpoint = Checkpoint(spool_dir, job_id(masked_url(job.url), args.since, args.until, job.window,
                                              sorted(config.sinks)))
    checkpoint.claim()
    try:
        return _backfill_claimed(config, job, reader, args, checkpoint)
    finally:
        checkpoint.release()


def _backfill_claimed(config: Config, job: Job, reader: Any, args: argparse.Namespace,
                      checkpoint: Checkpoint) -> int:
    """The backfill, once this process holds the job's checkpoint."""
    spool_dir = Path(config.spool.dir)
    fixed = (args.since is None or _absolute(args.since)) and _absolute(args.until)
    if checkpoint.done and fixed and checkpoint.covered and not args.restart:
        print(f"backfill: this window was already backfilled ({checkpoint.records} records); "
              "--restart sends it again", file=sys.stderr)
        return 0
    # A window relative to now moves on, and one ending in the future gains rows: a finished job starts anew.
    if args.restart or checkpoint.done:
        checkpoint.reset()
    job.window = checkpoint.pin(job.window)
    out = _progress(job, reader, args)
    try:
        delivery = SpoolDelivery(config, spool_dir, out.line, "backfill", enrich_ahead=True)
    except DaemonConflictError as exc:
        out.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if checkpoint.resumed:
        out.line(f"backfill: resuming after {checkpoint.records} records already in the spool")
    accepted = refused = problems = 0
    try:
        for page in reader.pages(job.window, checkpoint.positions):
            for text in page.problems:
                problems += 1
                if problems <= MAX_PROBLEMS:
                    out.line(f"bad record: {text}")
            too_large = delivery.accept(page.records) if page.records else []
            for index, reason in too_large:
                out.line(f"error: record {page.records[index].key}: {reason}")
            refused += len(too_large)
            accepted += len(page.records) - len(too_large)
            checkpoint.advance(page.stream, page.position, len(page.records) - len(too_large))
            out.advance(page.rows, f"{accepted} records")
        checkpoint.finish()
        out.close()
        idle, metrics, dead = delivery.finish(args.timeout)
    finally:
        out.close()
        delivery.close()
    summary = (f"backfill: {accepted} records accepted (Dify {job.schema.layout} layout), "
               f"{problems + refused} problem(s)")
    return report(summary, metrics, idle, dead, spool_dir, delivery.by_daemon, bad=bool(problems or refused),
                  again="the spool keeps them: 'traceexport serve' or 'traceexport dlq replay' delivers them")
