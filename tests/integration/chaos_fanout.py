"""Combined failures end to end: ``traceexport serve`` fanning out to four misbehaving fakes while it is killed.

``python -m tests.integration.chaos_fanout [--cycles N] [--seed S]`` (from the repository root) starts the Opik,
Amplitude, OTLP and Langfuse fakes in this process, each scripted on its own random schedule to answer 429 with
``Retry-After``, 503 bursts, slow answers past the sink's timeout, and connection resets after the body was read
(stored: the answer is lost); each also refuses some records' items for good (a partial rejection). Client threads
POST records the whole time; between cycles ``serve`` (or, every other time, its delivery child) is killed with
SIGKILL at a random moment and ``serve`` restarted. At the end the faults stop, the queues drain and, per sink and
record key, every record answered 202 must be delivered (all its items at the fake) or dead-lettered; the
``/metrics`` counters and ``traceexport status --json`` must agree with the fakes. It prints the figures and exits
1 on any loss or disagreement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from tests.fakes._server import RecordedRequest, Response
from tests.fakes.amplitude_server import AmplitudeFake
from tests.fakes.langfuse_server import OTEL_PATH, LangfuseFake
from tests.fakes.opik_server import OpikFake
from tests.fakes.otlp_server import OtlpFake, request_spans
from tests.support.daemon import TOKEN, Served
from tests.support.processes import delivery_children, python_env

from traceexport.mapping import load_mapping
from traceexport.records import Record, record_from_obj
from traceexport.sinks.otlp_encoding import from_wire

SAMPLES = Path(__file__).parents[1] / "data" / "samples"
MESSAGE = json.loads((SAMPLES / "05-message-chat.json").read_text("utf-8"))
WORKFLOW = json.loads((SAMPLES / "01-workflow-ok.json").read_text("utf-8"))
SINK_TIMEOUT = 2.0
AMPLITUDE_KEY = "amp-key-0123456789abcdef"
LANGFUSE_PUBLIC, LANGFUSE_SECRET = "pk-lf-chaos-public", "sk-lf-chaos-secret-0123456789"
SECRETS = (AMPLITUDE_KEY, LANGFUSE_SECRET, TOKEN)


def envelope(i: int) -> dict[str, Any]:
    """The sample chat message (every fourth: the sample workflow run) with its own id (its own record key and
    ids at every backend)."""
    if i % 4 == 0:
        base = json.loads(json.dumps(WORKFLOW))
        base["trace_info"]["workflow_run_id"] = f"30000000-0000-4000-8000-{i:012d}"
        return base
    base = json.loads(json.dumps(MESSAGE))
    base["trace_info"]["message_id"] = f"20000000-0000-4000-8000-{i:012d}"
    return base


class Chaos:
    """A fake's misbehaviour plan: per request, by the fake's own random stream, one of ok / 429 / 503 burst /
    slow (answered after the sink gave up, but stored) / reset (stored, the connection closed unanswered)."""

    def __init__(self, seed: int, weights: dict[str, float]) -> None:
        self.rng = random.Random(seed)
        self.weights = weights
        self.on = True
        self.burst = 0
        self.actions: Counter[str] = Counter()
        self.lock = threading.Lock()

    def next(self) -> str:
        with self.lock:
            if not self.on:
                return "ok"
            if self.burst > 0:
                self.burst -= 1
                action = "503"
            else:
                action = self.rng.choices(list(self.weights), list(self.weights.values()))[0]
                if action == "503":
                    self.burst = self.rng.randint(1, 6)
            self.actions[action] += 1
            return action


def chaotic(base: type, items: Callable[[Any, RecordedRequest], list[str]],
            refusal: Callable[[Any, RecordedRequest, list[int]], Response]) -> type:
    """``base`` fake with a :class:`Chaos` plan in front of it and items in ``poison`` refused for good."""

    class ChaosFake(base):  # type: ignore[valid-type,misc]
        chaos: Chaos
        poison: set[str]

        def handle(self, request: RecordedRequest) -> Response | None:  # type: ignore[override]
            action = self.chaos.next()
            if action == "429":
                return Response(429, {"error": "slow down"}, {"Retry-After": "1"})
            if action == "503":
                return Response(503, {"error": "unavailable"})
            try:
                ids = items(self, request)
            except Exception:  # let the fake itself answer what it cannot read
                ids = []
            bad = [i for i, item in enumerate(ids) if item in self.poison]
            response = refusal(self, request, bad) if bad else super().handle(request)
            if action == "slow":
                time.sleep(SINK_TIMEOUT + 0.7)
            if action == "reset":
                return None
            return response

    ChaosFake.__name__ = f"Chaos{base.__name__}"
    return ChaosFake


def _opik_items(fake: Any, request: RecordedRequest) -> list[str]:
    body = request.json()
    return [item.get("id") for key in ("traces", "spans") for item in body.get(key) or []]


def _opik_refusal(fake: Any, request: RecordedRequest, bad: list[int]) -> Response:
    return Response(422, {"errors": [f"item {i} refused by policy" for i in bad]})


def _amplitude_items(fake: Any, request: RecordedRequest) -> list[str]:
    return [e.get("insert_id") for e in request.json().get("events") or []]


def _amplitude_refusal(fake: Any, request: RecordedRequest, bad: list[int]) -> Response:
    return Response(400, {"code": 400, "error": "Invalid field values on some events",
                          "events_with_invalid_fields": {"event_properties": bad}})


def _otlp_items(fake: Any, request: RecordedRequest) -> list[str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    decoded = from_wire(request.body, content_type, request.headers.get("content-encoding", ""))
    return [s["spanId"] for s in request_spans(decoded)]


def _otlp_refusal(fake: Any, request: RecordedRequest, bad: list[int]) -> Response:
    return Response(400, {"code": 3, "message": f"{len(bad)} spans are invalid"})


def _langfuse_items(fake: Any, request: RecordedRequest) -> list[str]:
    if request.path.split("?", 1)[0] != OTEL_PATH:
        return []
    return _otlp_items(fake, request)


ChaosOpik = chaotic(OpikFake, _opik_items, _opik_refusal)
ChaosAmplitude = chaotic(AmplitudeFake, _amplitude_items, _amplitude_refusal)
ChaosOtlp = chaotic(OtlpFake, _otlp_items, _otlp_refusal)
ChaosLangfuse = chaotic(LangfuseFake, _langfuse_items, _otlp_refusal)


def expected_ids(recs: Iterable[Record]) -> dict[str, dict[str, set[str]]]:
    """sink -> record key -> the ids of the items its mapping gives that record (what must arrive)."""
    mappings = {"opik": load_mapping("opik"), "amplitude": load_mapping("amplitude"),
                "otlp": load_mapping("otlp"), "langfuse": load_mapping("langfuse")}
    out: dict[str, dict[str, set[str]]] = {name: {} for name in mappings}
    for record in recs:
        for name, mapping in mappings.items():
            ids = set()
            for payload in mapping.map(record):
                body = payload.body
                ids.add(body.get("insert_id") if name == "amplitude" else
                        body.get("spanId") if name in ("otlp", "langfuse") else body["id"])
            out[name][record.key] = ids
    return out


def received_ids(fakes: dict[str, Any]) -> dict[str, Counter[str]]:
    """sink -> item id -> how many times the fake stored it (Opik and Amplitude keep one per id)."""
    with fakes["opik"]._lock:
        opik = Counter(list(fakes["opik"].traces) + list(fakes["opik"].spans))
    with fakes["amplitude"]._lock:
        amplitude = Counter(e.get("insert_id") for e in fakes["amplitude"].events)
    otlp = Counter(s["spanId"] for s in list(fakes["otlp"].spans))
    langfuse = Counter(s["spanId"] for s in list(fakes["langfuse"].spans))
    return {"opik": opik, "amplitude": amplitude, "otlp": otlp, "langfuse": langfuse}


def config(spool: Path, fakes: dict[str, Any], max_attempts: int, max_bytes: str = "1GiB") -> str:
    return f"""spool:
  dir: {spool}
  delivery_process: true
  max_bytes: {max_bytes}
retry:
  max_attempts: {max_attempts}
  max_age: 10m
  initial_backoff: 200ms
  max_backoff: 2s
sources:
  http:
    token: ${{TEST_TOKEN}}
sinks:
  opik:
    type: opik
    url: {fakes['opik'].url}
    timeout: {SINK_TIMEOUT}
    max_items: 40
  amplitude:
    type: amplitude
    api_key: {AMPLITUDE_KEY}
    server_url: {fakes['amplitude'].url}/2/httpapi
    timeout: {SINK_TIMEOUT}
    max_events: 40
  otlp:
    type: otlp
    endpoint: {fakes['otlp'].url}
    timeout: {SINK_TIMEOUT}
    max_spans: 40
  langfuse:
    type: langfuse
    host: {fakes['langfuse'].url}
    public_key: {LANGFUSE_PUBLIC}
    secret_key: {LANGFUSE_SECRET}
    timeout: {SINK_TIMEOUT}
    max_spans: 40
"""


class Clients:
    """Threads POSTing batches of new records; a batch without a 202 is posted again until one comes."""

    def __init__(self, threads: int, batch: int, seed: int) -> None:
        self.base: str | None = None
        self.accepted: set[int] = set()
        self.answers: Counter[str] = Counter()
        self.bad_answers: list[str] = []
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._batch = batch
        self._rng = random.Random(seed)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _take(self) -> list[int]:
        with self._lock:
            first = self._next
            self._next += self._batch
        return list(range(first, first + self._batch))

    def _run(self) -> None:
        ids = self._take()
        while not self._stop.is_set():
            base = self.base
            if base is None:
                time.sleep(0.05)
                continue
            body = json.dumps([envelope(i) for i in ids]).encode()
            try:
                answer = httpx.post(f"{base}/v1/dify/traces", content=body, timeout=10,
                                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
            except httpx.HTTPError as exc:
                with self._lock:
                    self.answers[type(exc).__name__] += 1
                time.sleep(0.1)
                continue
            with self._lock:
                self.answers[str(answer.status_code)] += 1
            if answer.status_code == 202:
                with self._lock:
                    self.accepted.update(ids)
                ids = self._take()
                time.sleep(self._rng.uniform(0.0, 0.05))
            elif answer.status_code == 503:
                time.sleep(0.2)
            else:
                with self._lock:
                    self.bad_answers.append(f"{answer.status_code} {answer.text[:200]}")
                time.sleep(0.2)


def delivery_child(parent: int) -> int | None:
    children = delivery_children(parent)
    return children[0] if children else None


def metrics(base: str) -> dict[str, dict[str, float]]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    out: dict[str, dict[str, float]] = {}
    for name, sink, value in re.findall(r'^traceexport_(\w+)\{sink="([^"]+)"\} (\S+)$', text, re.MULTILINE):
        out.setdefault(sink, {})[name] = float(value)
    return out


def cli(spool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "traceexport", *args, "--spool", str(spool)], capture_output=True,
                          text=True, env=python_env(), timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--root", default="")
    parser.add_argument("--poison-every", type=int, default=37)
    parser.add_argument("--max-attempts", type=int, default=30)
    parser.add_argument("--pause", type=float, nargs=2, default=(2.0, 6.0), help="seconds between kills")
    parser.add_argument("--max-bytes", default="1GiB", help="spool.max_bytes (small: back-pressure as well)")
    parser.add_argument("--restart-gap", type=float, default=1.0, help="at most this many seconds after a kill")
    parser.add_argument("--drain-cycles", type=int, default=3, help="kill cycles after the posts stop")
    parser.add_argument("--chaos-drain", type=float, default=20.0, help="seconds of faults after the posts stop")
    parser.add_argument("--fault-scale", type=float, default=1.0, help="multiplies every fault's weight")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.root or tempfile.mkdtemp(prefix="chaos2-"))
    spool = root / "spool"
    weights = {
        "opik": {"ok": 0.80, "429": 0.05, "503": 0.05, "slow": 0.05, "reset": 0.05},
        "amplitude": {"ok": 0.75, "429": 0.10, "503": 0.05, "slow": 0.03, "reset": 0.07},
        "otlp": {"ok": 0.80, "429": 0.03, "503": 0.10, "slow": 0.02, "reset": 0.05},
        "langfuse": {"ok": 0.75, "429": 0.05, "503": 0.05, "slow": 0.10, "reset": 0.05},
    }
    fakes: dict[str, Any] = {
        "opik": ChaosOpik(), "amplitude": ChaosAmplitude(api_key=AMPLITUDE_KEY),
        "otlp": ChaosOtlp(), "langfuse": ChaosLangfuse(LANGFUSE_PUBLIC, LANGFUSE_SECRET),
    }
    poison_offset = {"opik": 1, "amplitude": 5, "otlp": 11, "langfuse": 17}
    for n, (name, fake) in enumerate(fakes.items()):
        scaled = {k: v if k == "ok" else v * args.fault_scale for k, v in weights[name].items()}
        fake.chaos = Chaos(args.seed * 100 + n, scaled)
        fake.poison = set()
        fake._httpd.handle_error = lambda request, address: None  # a client that gave up: no stack on stderr
        fake.start()
    # Poison: every poison_every-th record (per sink a different offset) has all its items refused for good.
    clients = Clients(threads=6, batch=5, seed=args.seed)

    def poison_for(count: int) -> None:
        recs = [record_from_obj(envelope(i)) for i in range(count) if any(
            (i + off) % args.poison_every == 0 for off in poison_offset.values())]
        ids = expected_ids(recs)
        for name, fake in fakes.items():
            for rec in recs:
                i = int(rec.key.rsplit("-", 1)[1])
                if (i + poison_offset[name]) % args.poison_every == 0:
                    fake.poison.update(ids[name][rec.key])

    poison_for(20_000)
    served: Served | None = None
    settings = config(spool, fakes, args.max_attempts, args.max_bytes)
    kills: list[str] = []
    slow_stops: list[str] = []
    logs: list[Path] = []
    try:
        served = Served(root, settings, name="serve-0")
        logs.append(served.log_path)
        clients.base = served.base
        clients.start()
        for cycle in range(args.cycles + args.drain_cycles):
            if cycle == args.cycles:
                clients.stop()
            time.sleep(rng.uniform(*args.pause))
            if cycle % 3 == 2:
                clients.base = None
                started = time.monotonic()
                code = served.stop()
                took = time.monotonic() - started
                kills.append(f"cycle {cycle}: SIGTERM serve {served.proc.pid}: exit {code} after {took:.1f}s")
                if took > 12:
                    slow_stops.append(f"cycle {cycle}: serve took {took:.1f}s to stop on SIGTERM")
                served = Served(root, settings, name=f"serve-{cycle + 1}")
                logs.append(served.log_path)
                clients.base = served.base
                continue
            if cycle % 3 == 1:
                child = delivery_child(served.proc.pid)
                if child is not None:
                    os.kill(child, signal.SIGKILL)
                    kills.append(f"cycle {cycle}: delivery child {child}")
                continue
            clients.base = None
            os.kill(served.proc.pid, signal.SIGKILL)
            served.proc.wait(10)
            kills.append(f"cycle {cycle}: serve {served.proc.pid}")
            time.sleep(rng.uniform(0.0, args.restart_gap))
            served = Served(root, settings, name=f"serve-{cycle + 1}")
            logs.append(served.log_path)
            clients.base = served.base
        clients.stop()
        time.sleep(args.chaos_drain)
        for fake in fakes.values():
            fake.chaos.on = False
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            figures = metrics(served.base)
            depth = sum(f.get("queue_depth", 0) for f in figures.values())
            if depth == 0:
                break
            time.sleep(1)
        time.sleep(2)
        figures = metrics(served.base)
        status = json.loads(cli(spool, "status", "--json").stdout or "{}")
        dlq = json.loads(cli(spool, "dlq", "list", "--json").stdout or "[]")
    finally:
        if served is not None:
            served.stop()
        for fake in fakes.values():
            fake.stop()

    accepted = sorted(clients.accepted)
    recs = [record_from_obj(envelope(i)) for i in accepted]
    expected = expected_ids(recs)
    received = received_ids(fakes)
    dead: dict[str, dict[str, Any]] = {name: {} for name in fakes}
    for entry in dlq:
        dead.setdefault(entry["sink"], {})[entry["record_key"]] = entry
    problems: list[str] = []
    report: dict[str, Any] = {"root": str(root), "accepted": len(accepted), "kills": kills,
                              "answers": dict(clients.answers), "bad_answers": clients.bad_answers[:5]}
    for name, fake in fakes.items():
        delivered = partial = lost = both = 0
        dup_items = sum(c - 1 for c in received[name].values() if c > 1)
        for rec in recs:
            ids = expected[name][rec.key]
            got = sum(1 for i in ids if received[name][i])
            in_dlq = rec.key in dead[name]
            if got == len(ids):
                delivered += 1
                both += in_dlq
            elif in_dlq:
                partial += got > 0
            else:
                lost += 1
                if len(problems) < 40:
                    problems.append(f"{name}: {rec.key} neither delivered ({got}/{len(ids)} items) nor dead-lettered")
        poisoned = sum(1 for rec in recs if expected[name][rec.key] & fake.poison)
        m = figures.get(name, {})
        s = (status.get("sinks") or {}).get(name) or {}
        report[name] = {
            "delivered": delivered, "dead_lettered": len(dead[name]), "dlq_and_delivered": both,
            "dlq_partly_delivered": partial, "lost": lost, "poisoned": poisoned, "duplicate_items": dup_items,
            "fake_actions": dict(fake.chaos.actions),
            "fake_requests": Counter(str(r.status) for r in fake.requests),
            "metrics": {k: m.get(k) for k in ("records_accepted_total", "records_exported_total",
                                              "records_dead_lettered_total", "records_retried_total",
                                              "dead_letters", "queue_depth")},
            "status": s,
            "reasons": Counter(e["reason"][:90] for e in dead[name].values()).most_common(4),
        }
        counted = {"accepted": m.get("records_accepted_total"), "exported": m.get("records_exported_total"),
                   "dead_lettered": m.get("records_dead_lettered_total")}
        for key, value in counted.items():
            if s.get(key) != value:
                problems.append(f"{name}: /metrics says {key} {value}, status {s.get(key)}")
        if m.get("dead_letters") != sum(1 for e in dlq if e["sink"] == name):
            problems.append(f"{name}: traceexport_dead_letters {m.get('dead_letters')} but dlq list has "
                            f"{sum(1 for e in dlq if e['sink'] == name)}")
        if (counted["exported"] or 0) + (counted["dead_lettered"] or 0) != counted["accepted"]:
            problems.append(f"{name}: exported {counted['exported']} + dead-lettered {counted['dead_lettered']} "
                            f"!= accepted {counted['accepted']} with nothing queued")
    problems += slow_stops
    report["problems"] = problems
    leaked = [f"{p.name}: {secret[:6]}..." for p in logs for secret in SECRETS
              if secret in p.read_text(errors="replace")]
    report["secret_leaks"] = leaked
    tracebacks = [p.name for p in logs if "Traceback" in p.read_text(errors="replace")]
    report["tracebacks_in"] = tracebacks
    print(json.dumps(report, indent=1, default=str))
    return 1 if problems or leaked else 0


if __name__ == "__main__":
    raise SystemExit(main())
