"""``traceexport map``: print the exact request bodies a backend would receive, without sending anything."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from traceexport.cli.common import add_mapping_arguments, iter_records, parse_key_values, report_bad
from traceexport.errors import ConfigError, RecordError, TraceExportError
from traceexport.mapping import BACKENDS, load_mapping
from traceexport.sinks import Payload, create_sink

# Placeholders stand in for credentials so the printed bodies never contain a real secret.
_PLACEHOLDER_OPTIONS: dict[str, dict[str, Any]] = {
    "amplitude": {"api_key": "<AMPLITUDE_API_KEY>"},
    "langfuse": {"public_key": "<LANGFUSE_PUBLIC_KEY>", "secret_key": "<LANGFUSE_SECRET_KEY>"},
    "opik": {"api_key": "<OPIK_API_KEY>"},
    "otlp": {"protocol": "http/json"},
}
_SECRET_ENV = ("AMPLITUDE_API_KEY", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "OPIK_API_KEY")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "map",
        help="print the request bodies a backend would receive for some records (no network)",
        description=(
            "Map Dify trace records (TaskData envelopes or bare TraceInfo objects; a JSON object, a JSON "
            "array or JSON lines) and print, one JSON document per line, the exact request bodies the "
            "backend would receive. OTLP bodies are printed in OTLP/JSON form. Credentials are replaced "
            "by placeholders. Exit 0 when every record mapped, 2 when some were rejected (one line each "
            "on stderr; the good records are still printed)."
        ),
    )
    parser.add_argument("--to", required=True, choices=BACKENDS, help="the backend whose payloads to print")
    parser.add_argument("files", nargs="+", metavar="FILE", help="record files (JSON or JSONL); '-' for stdin")
    parser.add_argument("--pretty", action="store_true", help="indent the JSON output")
    parser.add_argument(
        "--payloads",
        action="store_true",
        help="print the mapped entities one by one instead of the batched request bodies",
    )
    add_mapping_arguments(parser)
    parser.set_defaults(func=run)


def request_bodies(backend: str, payloads: list[Payload], env: Mapping[str, str]) -> list[Any]:
    """The bodies the backend's sink would send for ``payloads`` (placeholders for credentials)."""
    safe_env = {k: v for k, v in env.items() if k not in _SECRET_ENV}
    sink = create_sink(backend, backend, _PLACEHOLDER_OPTIONS[backend], safe_env)
    try:
        return sink.request_bodies(payloads)
    finally:
        sink.shutdown(timeout=0)


def run(args: argparse.Namespace) -> int:
    import os

    try:
        mapping = load_mapping(args.to, args.mapping, parse_key_values(args.option, "--option") or None)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    payloads: list[Payload] = []
    rejected = 0
    try:
        for item in iter_records(args.files):
            if isinstance(item, RecordError):
                rejected += 1
                report_bad(item)
                continue
            try:
                payloads.extend(mapping.map(item))
            except RecordError as exc:
                rejected += 1
                report_bad(RecordError(exc.reason, source=item.key))
        documents = (
            [{"kind": p.kind, "key": p.key, "body": p.body} for p in payloads]
            if args.payloads
            else request_bodies(args.to, payloads, os.environ) if payloads else []
        )
    except TraceExportError as exc:
        print(exc.render() if isinstance(exc, ConfigError) else f"error: {exc}", file=sys.stderr)
        return 2
    for document in documents:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2 if args.pretty else None, default=str))
        sys.stdout.write("\n")
    return 2 if rejected else 0
