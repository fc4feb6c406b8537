"""What a backend should have received for some TaskData files (``traceexport map``), and what its fake did.

Both sides become ``{entity id: entity}`` in the form the fakes store: Opik traces and spans by id,
Amplitude events by ``insert_id``, OTLP and Langfuse spans (decoded the way the fakes decode protobuf) by
span id. ``traceexport map`` runs as a user runs it, in a subprocess with the sinks' environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from tests.fakes.otlp_server import request_spans
from traceexport.sinks.otlp_encoding import from_wire

BACKENDS = ("opik", "langfuse", "otlp", "amplitude")


def mapped(backend: str, files: Sequence[str], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The entities ``traceexport map --to backend FILES`` prints, by id; fails on any rejected record."""
    done = subprocess.run([sys.executable, "-m", "traceexport", "map", "--to", backend, *files],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"map --to {backend} exited {done.returncode}: {done.stderr}"
    documents = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return entities(backend, documents)


def entities(backend: str, documents: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Request bodies of ``backend`` as ``{entity id: entity}``."""
    out: dict[str, dict[str, Any]] = {}
    for document in documents:
        if backend == "opik":
            out.update({f"trace:{t['id']}": t for t in document.get("traces", [])})
            out.update({f"span:{s['id']}": s for s in document.get("spans", [])})
        elif backend == "amplitude":
            out.update({str(e["insert_id"]): e for e in document["events"]})
        else:
            request = from_wire(json.dumps(document).encode(), "application/json", "")  # OTLP/JSON: hex ids
            out.update({s["spanId"]: s for s in request_spans(request)})
    return out


def received(backend: str, fake: Any) -> dict[str, dict[str, Any]]:
    """What ``fake`` stored, as ``{entity id: entity}``."""
    if backend == "opik":
        return {**{f"trace:{k}": v for k, v in fake.traces.items()}, **{f"span:{k}": v for k, v in fake.spans.items()}}
    if backend == "amplitude":
        return {str(e["insert_id"]): e for e in fake.events}
    return {s["spanId"]: s for s in fake.spans}


def differences(expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> list[str]:
    """Missing, unexpected and differing entities, one line each (empty when equal)."""
    lines = [f"missing {key}: {json.dumps(expected[key])[:300]}" for key in sorted(expected.keys() - got.keys())]
    lines += [f"unexpected {key}" for key in sorted(got.keys() - expected.keys())]
    for key in sorted(expected.keys() & got.keys()):
        want, have = expected[key], got[key]
        if want != have:
            fields = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            lines.append(f"differs {key}: " + "; ".join(
                f"{f}: {json.dumps(want.get(f))[:300]} != {json.dumps(have.get(f))[:300]}" for f in fields))
    return lines
