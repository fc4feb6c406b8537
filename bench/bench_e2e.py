"""End-to-end benchmark the way users run traceexport: HTTP ingest → spool → delivery → an OTLP receiver,
against the plain OpenTelemetry SDK into the same receiver, in the same run.

    python bench/bench_e2e.py [--records 20000] [--clients 2] [--batch 500] [--skip-sdk] [--profile-serve FILE]

Everything runs on 127.0.0.1, on the machine's cores, as separate processes:

* a **receiver** (OTLP/HTTP, protobuf, ``opentelemetry-proto``) that decodes every request, keeps the set
  of distinct span ids and notes the moment the expected number arrived;
* ``python -m traceexport serve`` (fresh temp spool, fsync on — the default —, an ``otlp`` sink with
  ``http/protobuf`` to the receiver; on two or more cores it delivers from a second process);
* **load generators**: ``--clients`` threads in this process, each on one keep-alive connection, POSTing
  NDJSON bodies of ``--batch`` records (the seven community sample types in turn, every UUID fresh per
  copy) built before the clock starts;
* then the **OpenTelemetry SDK** in a fresh process of its own: ``TracerProvider`` + ``BatchSpanProcessor``
  (queue large enough to lose nothing) + ``OTLPSpanExporter`` (http/protobuf) into the same receiver, given
  the same records (their text made before its clock starts, as serve's bodies are; its peak RSS holds
  them) and turning each record's text into its spans inside its clock, as an exporter built on the SDK
  must (the same parse and ``otlp`` mapping serve uses). This is the peer the goal's ratio is judged
  on: it is what the issue's "about 3,100/s" and PEERS.md's SDK rows measured (Dify records in, spans out);
* and the SDK once more with the spans prepared before its clock starts (the SDK's own cost only, a floor no
  exporter of records reaches), for comparison.

The expected spans are the records mapped once up front with the ``otlp`` mapping (the same one serve
uses). Each clock runs from the first POST (the first span) until the receiver holds every distinct span.
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mapping import sample_texts  # bench/ is not a package: found through the sys.path entry above
from procstat import cpu_seconds, status_mb

GOAL_RATE, GOAL_SDK_RATIO, GOAL_RSS_MB = 10_000.0, 3.0, 150.0
SDK_CONVERTING = "OpenTelemetry SDK, converting records in its clock"
SDK_PREPARED = "OpenTelemetry SDK, spans prepared before its clock"
BANNER = re.compile(r"listening on (http://127\.0\.0\.1:\d+)(/v1/dify/traces)")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

RECEIVER = r"""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

state = {"ids": set(), "spans": 0, "requests": 0, "expect": 0, "reached": None, "first": None}
lock = threading.Lock()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = ExportTraceServiceRequest.FromString(body)
        ids = [span.span_id for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
        now = time.monotonic()
        with lock:
            if state["first"] is None:
                state["first"] = now
            state["ids"].update(ids)
            state["spans"] += len(ids)
            state["requests"] += 1
            if state["reached"] is None and state["expect"] and len(state["ids"]) >= state["expect"]:
                state["reached"] = now
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        url = urlsplit(self.path)
        with lock:
            if url.path == "/reset":
                expect = int(parse_qs(url.query).get("expect", ["0"])[0])
                state.update(ids=set(), spans=0, requests=0, expect=expect, reached=None, first=None)
            answer = {"distinct": len(state["ids"]), "spans": state["spans"], "requests": state["requests"],
                      "reached": state["reached"], "first": state["first"]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 128
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
"""

CONFIG = """
sources:
  http:
    listen: 127.0.0.1:0
sinks:
  receiver:
    type: otlp
    endpoint: {receiver}
    protocol: http/protobuf
spool:
  dir: {spool}
"""

# ``serve`` under cProfile in every thread (the HTTP server answers each connection in a thread of its own);
# the merged statistics are written at exit (SIGTERM stops serve cleanly).
PROFILED_SERVE = r"""
import atexit, cProfile, pstats, sys, threading
out = sys.argv[1]
sys.argv = ["traceexport", *sys.argv[2:]]
profiles = []
run = threading.Thread.run
def profiled_run(self):
    profile = cProfile.Profile()
    profiles.append(profile)
    profile.enable()
    try:
        run(self)
    finally:
        profile.disable()
threading.Thread.run = profiled_run
main = cProfile.Profile()
def dump():
    main.disable()
    stats = pstats.Stats(main)
    for profile in profiles:
        with __import__("contextlib").suppress(Exception):
            stats.add(profile)
    stats.dump_stats(out)
atexit.register(dump)
main.enable()
from traceexport.cli import main as cli_main
sys.exit(cli_main())
"""


# -- the records ---------------------------------------------------------------------------------------
class Stream:
    """The seven sample records as templates; copy ``i`` gets UUIDs of its own (deterministic, distinct)."""

    def __init__(self) -> None:
        texts = [json.dumps(json.loads(t), ensure_ascii=False, separators=(",", ":")) for t in sample_texts()]
        slots: dict[str, int] = {}
        self.templates: list[tuple[list[str], list[int]]] = []
        for text in texts:
            pieces, holes, last = [], [], 0
            for match in _UUID.finditer(text):
                pieces.append(text[last:match.start()])
                holes.append(slots.setdefault(match.group(), len(slots)))
                last = match.end()
            pieces.append(text[last:])
            self.templates.append((pieces, holes))
        self.per_copy = len(self.templates)

    def record(self, index: int) -> str:
        """Record ``index``: type ``index % 7`` of copy ``index // 7``."""
        copy, which = divmod(index, self.per_copy)
        pieces, holes = self.templates[which]
        out = [pieces[0]]
        for hole, piece in zip(holes, pieces[1:], strict=True):
            out.append(str(uuid.UUID(int=(hole + 1) << 96 | copy, version=4)))
            out.append(piece)
        return "".join(out)

    def body(self, start: int, count: int) -> bytes:
        """An NDJSON body of records ``start`` .. ``start + count - 1``."""
        return "\n".join(self.record(i) for i in range(start, start + count)).encode("utf-8")


def mapped_spans(texts: Iterable[str], mapping: Any = None) -> Iterator[list[dict[str, Any]]]:
    """The OTLP span dicts each record text maps to (the ``otlp`` mapping serve uses, or ``mapping`` if given:
    loaded once beforehand), record by record."""
    from traceexport.mapping import load_mapping
    from traceexport.records import Record, parse_records

    mapping = mapping or load_mapping("otlp")
    for index, text in enumerate(texts):
        (record,) = parse_records(text)
        if not isinstance(record, Record):
            sys.exit(f"sample record {index} does not parse: {record}")
        yield [payload.body for payload in mapping.map(record)]


def expected_span_ids(stream: Stream, start: int, count: int) -> set[str]:
    """The distinct span ids records ``start`` .. ``start + count - 1`` must arrive as."""
    texts = (stream.record(index) for index in range(start, start + count))
    return {span["spanId"] for spans in mapped_spans(texts) for span in spans}


# -- processes -----------------------------------------------------------------------------------------


def delivery_child(pid: int) -> int | None:
    """serve's delivery process: its child started by multiprocessing's spawn (not the resource tracker)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                return int(entry.name)
    return None


class Receiver:
    """The OTLP receiver process and its control endpoints (``/reset?expect=N``, ``/count``)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            raise SystemExit("the receiver did not start (is opentelemetry-proto installed? pip install -e '.[test]')")

    def control(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    def reset(self, expect: int) -> None:
        self.control(f"/reset?expect={expect}")

    def wait(self, expect: int, idle_timeout: float, busy: threading.Event | None = None) -> dict[str, Any]:
        """Poll until ``expect`` distinct spans arrived, or nothing new came for ``idle_timeout`` seconds
        (while ``busy`` is not set: the load generators are done)."""
        last, changed = -1, time.monotonic()
        while True:
            state = self.control("/count")
            if state["distinct"] >= expect:
                return state
            if state["distinct"] != last:
                last, changed = state["distinct"], time.monotonic()
            elif (busy is None or not busy.is_set()) and time.monotonic() - changed > idle_timeout:
                return state
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Serve:
    """``python -m traceexport serve`` on a fresh spool, sending to the receiver."""

    def __init__(self, work: Path, receiver_url: str, profile: Path | None) -> None:
        self.spool = work / "spool"
        config = work / "serve.yaml"
        config.write_text(CONFIG.format(receiver=receiver_url, spool=self.spool))
        self.log_path = work / "serve.log"
        serve_args = ["serve", "--config", str(config)]
        argv = ([sys.executable, "-c", PROFILED_SERVE, str(profile), *serve_args] if profile
                else [sys.executable, "-m", "traceexport", *serve_args])
        env = {**os.environ, "TRACEEXPORT_LOG_LEVEL": "info"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env)
        deadline = time.monotonic() + 60
        while (match := BANNER.search(self.log())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve did not start:\n{self.log()[-2000:]}")
            time.sleep(0.05)
        self.host_port = match.group(1).removeprefix("http://")
        self.path = match.group(2)
        self.child: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def pids(self) -> dict[str, int]:
        """serve's parent (ingest) and, once it runs, its delivery process."""
        if self.child is None:
            self.child = delivery_child(self.proc.pid)
        return {"serve": self.proc.pid, **({"delivery": self.child} if self.child else {})}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- load generation -----------------------------------------------------------------------------------
@dataclass
class Load:
    """Bodies shared by the client threads, and what the threads saw."""

    bodies: list[bytes]
    next_body: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bytes | None:
        with self.lock:
            if self.next_body >= len(self.bodies):
                return None
            self.next_body += 1
            return self.bodies[self.next_body - 1]

    def count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1


def post_all(host_port: str, path: str, load: Load) -> None:
    """One client: POST bodies on one keep-alive connection until none is left; retried on 503."""
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Content-Type": "application/x-ndjson"}
    try:
        while (body := load.take()) is not None:
            while True:
                conn.request("POST", path, body=body, headers=headers)
                answer = conn.getresponse()
                answer.read()
                load.count(answer.status)
                if answer.status != 503:
                    break
                time.sleep(float(answer.getheader("Retry-After") or 1))
    finally:
        conn.close()


def run_clients(serve: Serve, load: Load, clients: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=post_all, args=(serve.host_port, serve.path, load), daemon=True)
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


# -- the two runs --------------------------------------------------------------------------------------
@dataclass
class Result:
    """One side's figures."""

    name: str
    records: int
    expected: int
    received: int = 0
    seconds: float = 0.0
    cpu_us: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    note: str = ""
    ingest_seconds: float = 0.0  # serve: until the last POST was answered

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def delivered(self) -> float:
        return 100.0 * self.received / self.expected if self.expected else 0.0


def run_serve(args: argparse.Namespace, stream: Stream, receiver: Receiver, work: Path) -> Result:
    """serve, warmed up by one batch, then ``--records`` records posted by ``--clients`` threads."""
    warmup = stream.per_copy * 2
    print(f"building {args.records:,} records in bodies of {args.batch} and mapping them once for the "
          "expected span ids ...", flush=True)
    bodies = [stream.body(warmup + i, min(args.batch, args.records - i)) for i in range(0, args.records, args.batch)]
    expected = len(expected_span_ids(stream, warmup, args.records))
    serve = Serve(work, receiver.url, args.profile_serve)
    try:
        receiver.reset(expect=len(expected_span_ids(stream, 0, warmup)))
        warm = Load([stream.body(0, warmup)])
        post_all(serve.host_port, serve.path, warm)
        state = receiver.wait(len(expected_span_ids(stream, 0, warmup)), idle_timeout=30)
        if warm.statuses != {202: 1} or state["reached"] is None:
            raise SystemExit(f"warm-up failed: answers {warm.statuses}, receiver {state}\n{serve.log()[-2000:]}")
        receiver.reset(expect=expected)
        pids = {**serve.pids(), "receiver": receiver.proc.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        load = Load(bodies)
        generator_before = time.process_time()
        busy = threading.Event()
        busy.set()
        start = time.monotonic()
        threads = run_clients(serve, load, args.clients)
        posted: list[float] = []
        waiter = threading.Thread(target=lambda: ([t.join() for t in threads], posted.append(time.monotonic()),
                                                  busy.clear()), daemon=True)
        waiter.start()
        state = receiver.wait(expected, idle_timeout=args.idle_timeout, busy=busy)
        waiter.join()
        cpu = {name: (cpu_seconds(pid) - before[name]) for name, pid in pids.items()}
        cpu["load generator"] = time.process_time() - generator_before
        result = Result("traceexport serve", args.records, expected, state["distinct"])
        result.seconds = (state["reached"] or posted[0]) - start
        result.ingest_seconds = posted[0] - start
        result.cpu_us = {name: seconds / args.records * 1e6 for name, seconds in cpu.items()}
        result.peak_rss_mb = {name: status_mb(pid, "VmHWM") for name, pid in serve.pids().items()}
        bad = {status: n for status, n in load.statuses.items() if status != 202}
        result.note = f"answers {load.statuses}" if bad else f"{len(bodies)} posts, all 202"
        if state["spans"] != state["distinct"]:
            result.note += f"; {state['spans'] - state['distinct']} spans received twice"
        return result
    finally:
        serve.stop()


def run_sdk_in_child(args: argparse.Namespace, receiver: Receiver, expected: int, *, convert: bool = False) -> Result:
    """The OpenTelemetry SDK side in a fresh process (its CPU and RSS its own); ``convert``: with each record's
    conversion to spans inside the SDK's clock."""
    name = SDK_CONVERTING if convert else SDK_PREPARED
    for module in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        try:
            importlib.import_module(module)
        except ImportError:
            return Result(name, args.records, expected,
                          note=f"skipped: {module} is not installed (pip install -e '.[test]')")
    before = cpu_seconds(receiver.proc.pid)
    child = subprocess.run([sys.executable, __file__, "--phase", "sdk-convert" if convert else "sdk",
                            "--records", str(args.records), "--url", receiver.url,
                            "--idle-timeout", str(args.idle_timeout)],
                           check=False, capture_output=True, text=True)
    if child.returncode:
        return Result(name, args.records, expected, note=f"failed: {child.stderr.strip()[-800:]}")
    result = Result(**json.loads(child.stdout.strip().splitlines()[-1]))
    result.cpu_us["receiver"] = (cpu_seconds(receiver.proc.pid) - before) / args.records * 1e6
    return result


def sdk_phase(args: argparse.Namespace) -> None:
    """In the child: make the spans of ``--records`` records with the SDK and wait for the receiver.

    ``--phase sdk`` makes them from spans prepared before the clock starts (the SDK's own cost only);
    ``--phase sdk-convert`` turns each record's text into its spans inside the clock, as an exporter built on
    the SDK must (the same parse and ``otlp`` mapping serve uses, so the conversion costs both sides alike)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from traceexport.mapping import load_mapping

    convert = args.phase == "sdk-convert"
    stream = Stream()
    template_count = min(args.records, stream.per_copy * 50)  # distinct content; ids come from the SDK
    templates = [[_sdk_span(span) for span in spans]
                 for spans in mapped_spans(stream.record(i) for i in range(template_count))]
    spans_total = sum(len(templates[i % template_count]) for i in range(args.records))
    # The records' text is made before the clock starts, as serve's request bodies are: making it (fresh
    # UUIDs in each copy) costs more than a tenth of the converting SDK's time per record.
    texts = [stream.record(i) for i in range(args.records)] if convert else []
    converted = (map(_sdk_spans, mapped_spans(texts, load_mapping("otlp"))) if convert
                 else (templates[i % template_count] for i in range(args.records)))
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-e2e"}))
    exporter = OTLPSpanExporter(endpoint=f"{args.url}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=spans_total + 1024))
    tracer = provider.get_tracer("bench-e2e")
    receiver = Receiver.__new__(Receiver)  # the parent's receiver, through its control endpoints
    receiver.url = args.url
    receiver.reset(expect=spans_total)
    before = cpu_seconds(os.getpid())
    busy = threading.Event()
    busy.set()
    start = time.monotonic()
    for spans in converted:  # with convert, each record is parsed and mapped here, inside the clock
        contexts: dict[str, Any] = {}
        for span_id, parent_id, name, kind, begin, end, attributes, status in spans:
            parent = contexts.get(parent_id) if parent_id else None
            span = tracer.start_span(name, context=trace.set_span_in_context(parent) if parent else None,
                                     kind=kind, attributes=attributes, start_time=begin)
            if status is not None:
                span.set_status(status)
            span.end(end_time=end)
            contexts[span_id] = span
    provider.force_flush()  # end of input, as serve's delivery sends its last partial batch
    busy.clear()
    state = receiver.wait(spans_total, idle_timeout=args.idle_timeout, busy=busy)
    cpu = cpu_seconds(os.getpid()) - before
    result = Result(SDK_CONVERTING if convert else SDK_PREPARED, args.records, spans_total, state["distinct"],
                    (state["reached"] or time.monotonic()) - start, {"sdk (in-process)": cpu / args.records * 1e6},
                    {"sdk (in-process)": status_mb(os.getpid(), "VmHWM")},
                    f"{spans_total:,} spans, BatchSpanProcessor max_queue_size={spans_total + 1024:,}")
    provider.shutdown()
    print(json.dumps(result.__dict__))


def _sdk_spans(spans: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [_sdk_span(span) for span in spans]


def _sdk_span(span: dict[str, Any]) -> tuple[Any, ...]:
    """An OTLP span dict as the arguments of the SDK's ``start_span`` (attribute values it accepts)."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attributes: dict[str, Any] = {}
    for key, value in (span.get("attributes") or {}).items():
        if value is None:
            continue
        primitive = isinstance(value, str | bool | int | float)
        if primitive or (isinstance(value, list) and all(isinstance(v, str | bool | int | float) for v in value)):
            attributes[key] = value
        else:
            attributes[key] = json.dumps(value, ensure_ascii=False, default=str)
    code = (span.get("status") or {}).get("code", "UNSET")
    status = None if code == "UNSET" else Status(StatusCode[code], (span.get("status") or {}).get("message"))
    return (span["spanId"], span.get("parentSpanId"), span["name"], SpanKind[span.get("kind", "INTERNAL")],
            int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"]), attributes, status)


# -- report --------------------------------------------------------------------------------------------
def report(serve: Result, converting: Result, prepared: Result, clients: int, batch: int) -> None:
    print(f"\n{serve.records:,} records (the seven sample types in turn, fresh ids), NDJSON posts of {batch} from "
          f"{clients} clients, fsync on; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    for result in (serve, converting, prepared):
        if not result.seconds:
            print(f"{result.name}: {result.note}")
            continue
        print(f"{result.name}: {result.rate:,.0f} records/s end to end ({result.seconds:.2f} s), "
              f"{result.received:,} of {result.expected:,} distinct spans = {result.delivered:.1f} % delivered"
              f" ({result.note})")
        if result.ingest_seconds:
            print(f"  HTTP ingest: {result.records / result.ingest_seconds:,.0f} records/s (last POST answered after "
                  f"{result.ingest_seconds:.2f} s)")
        print("  CPU per record: " + ", ".join(f"{name} {us:,.0f} us" for name, us in result.cpu_us.items()))
        print("  peak RSS (VmHWM): " + ", ".join(f"{name} {mb:,.0f} MB" for name, mb in result.peak_rss_mb.items()))
    if serve.seconds and converting.seconds:
        ratio = serve.rate / converting.rate
        print(f"ratio serve / SDK converting records: x{ratio:.2f} (goal >= x{GOAL_SDK_RATIO:.0f}: "
              f"{'met' if ratio >= GOAL_SDK_RATIO else 'MISSED'})")
    if serve.seconds and prepared.seconds:
        print(f"ratio serve / SDK with prepared spans: x{serve.rate / prepared.rate:.2f} (the SDK's own cost only, "
              "for comparison)")
    if serve.seconds:
        rss = max(serve.peak_rss_mb.values(), default=0.0)
        print(f"goal >= {GOAL_RATE:,.0f} records/s: {'met' if serve.rate >= GOAL_RATE else 'MISSED'}; "
              f"100 % delivered: {'met' if serve.received >= serve.expected else 'MISSED'}; "
              f"peak RSS <= {GOAL_RSS_MB:.0f} MB per process: {'met' if rss <= GOAL_RSS_MB else 'MISSED'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records to post (default 20,000)")
    parser.add_argument("--batch", type=int, default=500, help="records per POST (default 500)")
    parser.add_argument("--clients", type=int, default=2, help="client threads posting at once (default 2)")
    parser.add_argument("--skip-sdk", action="store_true", help="measure serve only")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="give up when no new span arrived for this many seconds after the last post")
    parser.add_argument("--profile-serve", type=Path, default=None, metavar="FILE",
                        help="run serve's parent process under cProfile (all threads) and write its stats here")
    parser.add_argument("--workdir", type=Path, default=None, help="where the spool goes (default: a temp dir)")
    parser.add_argument("--phase", choices=("all", "sdk", "sdk-convert"), default="all", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase != "all":
        sdk_phase(args)
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    if (work / "spool").exists():
        raise SystemExit(f"{work / 'spool'} exists: give a --workdir without a spool (each run starts empty)")
    work.mkdir(parents=True, exist_ok=True)
    stream = Stream()
    receiver = Receiver()
    try:
        serve = run_serve(args, stream, receiver, work)
        print(f"serve: {serve.rate:,.0f} records/s, {serve.delivered:.1f} % delivered", flush=True)
        sides = ([Result(name, args.records, serve.expected, note="skipped (--skip-sdk)")
                  for name in (SDK_CONVERTING, SDK_PREPARED)] if args.skip_sdk
                 else [run_sdk_in_child(args, receiver, serve.expected, convert=convert) for convert in (True, False)])
    finally:
        receiver.stop()
    report(serve, *sides, args.clients, args.batch)
    if args.profile_serve:
        print(f"serve's profile: {args.profile_serve} (python -m pstats {args.profile_serve})")
    print(f"(work dir {work}: the spool and serve.log; delete it when done)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
