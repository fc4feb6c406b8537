"""``traceexport export --to SINK[,SINK...] FILE...``: map and deliver records from files, durably.

Records go through a :class:`~traceexport.pipeline.Pipeline` on the ``--spool`` directory, so an
interrupted export resumes: run the same command (or ``export --to SINK`` with no file) on that spool.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from traceexport.cli.status_cmd import add_spool_argument
from traceexport.errors import ConfigError, RecordError, SpoolFullError, TraceExportError
from traceexport.pipeline import Pipeline, PipelineSettings, RetryPolicy, Route, deadletter, spool_dir_default
from traceexport.records import Record, parse_records
from traceexport.sinks import SINK_MODULES, create_sink

_CHUNK = 500


def build_routes(sink_types: Sequence[str], env: Mapping[str, str] | None = None) -> list[Route]:
    """One route per sink type, sinks configured from environment variables alone.

    This is the seam for config files: a config-driven caller builds its own routes (named sinks, options,
    extra mapping files, filters, sampling) and hands them to the same :func:`deliver`.
    """
    from traceexport.mapping import load_mapping

    routes = []
    for sink_type in sink_types:
        sink = create_sink(sink_type, env=env)
        routes.append(Route(sink=sink, mapping=load_mapping(sink.backend)))
    return routes


def register(sub: Any) -> None:
    """Add the ``export`` command."""
    parser = sub.add_parser(
        "export", help="map and deliver records from files to one or more sinks",
        description="Map Dify trace records and deliver them to the named sinks, through a durable spool: "
                    "records are retried with backoff, refused ones are kept in the dead letter, and an "
                    "interrupted export resumes when run again on the same spool. Sinks are configured "
                    "by their usual environment variables (OPIK_*, LANGFUSE_*, OTEL_EXPORTER_OTLP_*, "
                    "AMPLITUDE_*, TRACEEXPORT_FILE_SINK_DIR).",
        epilog="Exit status: 0 every record was accepted by every sink; 2 some records were bad input or "
               "refused permanently (see stderr and 'traceexport dlq list'); 1 delivery could not finish "
               "(records are kept in the spool).",
    )
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="JSON, JSON array or JSON lines of Dify records (TaskData envelopes or bare "
                             "TraceInfo objects); '-' reads stdin. Without FILE, delivers what the spool holds.")
    parser.add_argument("--to", required=True, metavar="SINK[,SINK...]",
                        help=f"sinks to deliver to, comma-separated: {', '.join(sorted(SINK_MODULES))}")
    add_spool_argument(parser)
    parser.add_argument("--type", dest="type_name", metavar="TYPE",
                        help="record type of bare TraceInfo objects that do not say theirs (e.g. workflow)")
    parser.add_argument("--max-attempts", type=int, default=6, metavar="N",
                        help="attempts per record before it goes to the dead letter (default: 6)")
    parser.add_argument("--max-age", type=float, default=60.0, metavar="SECONDS",
                        help="stop retrying a record this long after its first attempt (default: 60)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="stop waiting for delivery after this long; what is left stays in the spool "
                             "(default: 300)")
    parser.set_defaults(func=run)


def read_inputs(files: Sequence[str], type_name: str | None) -> tuple[list[Record], list[str]]:
    """Every record of ``files`` and a one-line problem for each input that could not be used."""
    records: list[Record] = []
    problems: list[str] = []
    for name in files:
        try:
            text = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            problems.append(f"{name}: cannot read: {exc.strerror}")
            continue
        for item in parse_records(text, source="stdin" if name == "-" else name, type_name=type_name):
            if isinstance(item, RecordError):
                problems.append(str(item))
            else:
                records.append(item)
    return records, problems


def run(args: argparse.Namespace) -> int:
    """Deliver the files' records; see the command's exit status."""
    sink_types = list(dict.fromkeys(s.strip() for s in args.to.split(",") if s.strip()))
    if not sink_types:
        print("error: --to needs at least one sink", file=sys.stderr)
        return 2
    try:
        routes = build_routes(sink_types)
    except ConfigError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    records, problems = read_inputs(args.files, args.type_name)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    policy = RetryPolicy(max_attempts=max(args.max_attempts, 1), max_age=args.max_age,
                         initial_backoff=0.5, max_backoff=max(min(30.0, args.max_age / 4), 0.5))
    spool_dir = args.spool or spool_dir_default()
    try:
        code = deliver(Path(spool_dir), routes, records, PipelineSettings(retry=policy), args.timeout)
    except TraceExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return max(code, 2 if problems and code == 0 else code)


def deliver(spool_dir: Path, routes: list[Route], records: Sequence[Record], settings: PipelineSettings,
            timeout: float) -> int:
    """Accept ``records`` and wait for delivery; report on stderr; the export exit status."""
    deadline = time.monotonic() + timeout
    pipe = Pipeline(spool_dir, routes, settings)
    names = pipe.sink_names
    before_dlq = deadletter.last_id(pipe.spool)
    before = {n: pipe.spool.counters().get(n, {}).get("exported", 0) for n in names}
    pipe.start()
    try:
        if not _accept_all(pipe, records, deadline):
            _report_stuck(pipe, spool_dir, names, accepted_all=False)
            return 1
        idle = pipe.flush(max(deadline - time.monotonic(), 0.0))
    finally:
        pipe.stop()
    try:
        counters = pipe.spool.counters()
        for name in names:
            n = counters.get(name, {}).get("exported", 0) - before[name]
            print(f"{name}: {n} record{'s' if n != 1 else ''} delivered", file=sys.stderr)
        dead = [e for e in deadletter.list_entries(pipe.spool, after_id=before_dlq) if e.sink in names]
        for e in dead:
            print(f"error: {e.sink}: {e.record_type} record {e.record_key}: {e.reason}", file=sys.stderr)
        if not idle:
            _report_stuck(pipe, spool_dir, names, accepted_all=True)
            return 1
        gave_up = sorted({e.sink for e in dead if not e.permanent})
        if gave_up:
            sinks = ",".join(gave_up)
            print(f"error: delivery to {sinks} did not succeed within the retry limit; the records are kept "
                  f"in the dead letter of spool {spool_dir}. To resume: traceexport dlq replay --spool "
                  f"{spool_dir} --sink SINK, then traceexport export --spool {spool_dir} --to {sinks}",
                  file=sys.stderr)
            return 1
        return 2 if dead else 0
    finally:
        pipe.close()


def _accept_all(pipe: Pipeline, records: Sequence[Record], deadline: float) -> bool:
    for start in range(0, len(records), _CHUNK):
        chunk = records[start:start + _CHUNK]
        while True:
            try:
                pipe.accept(chunk)
                break
            except SpoolFullError as exc:
                if time.monotonic() + exc.retry_after > deadline:
                    print(f"error: {exc}", file=sys.stderr)
                    return False
                time.sleep(min(exc.retry_after, 1.0))
    return True


def _report_stuck(pipe: Pipeline, spool_dir: Path, names: list[str], accepted_all: bool) -> None:
    pending = {n: c for n, c in pipe.pending().items() if c}
    left = ", ".join(f"{c} for {n}" for n, c in pending.items()) or "none pending"
    note = "" if accepted_all else " (not every input record was accepted: run the export again)"
    print(f"error: delivery did not finish before --timeout ({left}){note}; the undelivered records are kept "
          f"in spool {spool_dir}. To resume: traceexport export --spool {spool_dir} --to {','.join(names)}",
          file=sys.stderr)
