"""Celery source benchmark: one ``traceexport serve`` sidecar draining a backlog on Dify's ``ops_trace`` queue.

    python bench/bench_celery.py [--records 20000] [--stream mixed|message] [--runs 1] [--workdir DIR]
                                 [--concurrency 1] [--prefetch N]

Not a test (CI does not run it). Per run it:

* starts a real ``redis-server`` (127.0.0.1, a free port, stopped by its pid, as the tests do) and fills queue
  ``ops_trace`` with ``--records`` of Dify's ``process_trace_tasks`` messages, each with its TaskData file in a
  local storage directory, as Dify's API leaves them (``tests/support/dify_producer.py``: the first message
  sent by Celery's own ``delay()``, the others that message with fresh ids; files written first);
* starts an OTLP/HTTP receiver in another process that answers at once and keeps the bodies in a file,
  decoding them (the distinct span ids) only when asked, after the clock stopped;
* starts ``python -m traceexport serve`` with ``sources.celery`` on that queue and storage and an ``otlp`` sink
  to the receiver (fsync on, delivery in a second process on 2+ cores: the defaults), and samples the queue:
  **consumed** is when Redis holds no message and nothing unacknowledged any more (every record accepted
  into the spool, then acknowledged), **delivered** when the receiver has every span the records make;
* prints records/s for both, CPU per record of each process (the sidecar, its delivery process, redis-server,
  the receiver), peak RSS (VmHWM) of the sidecar's processes, and the ratio to the 5,000 records/s goal.

The records are the seven community types in turn with fresh UUIDs (``mixed``), or chat messages only
(``message``, two spans each), as in ``bench_pipeline.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support: the redis-server helper and Dify's producer
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_mapping's record stream

from tests.support.dify_producer import DifyProducer  # noqa: E402
from tests.support.redis_server import RedisServer, redis_server_binary  # noqa: E402

from bench_mapping import envelope_stream, sample_texts  # noqa: E402 - after the path set-up above
from procstat import child_pids, cpu_seconds, status_mb  # noqa: E402 - bench/ is on the path
from traceexport.mapping import load_mapping  # noqa: E402
from traceexport.records import record_from_obj  # noqa: E402

GOAL_RATE = 5000.0
UNACKED = "traceexport.unacked"

RECEIVER = r"""
import json, sys, tempfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
# Bodies go to a file as they come (answered at once, nothing decoded then); GET /state decodes those not yet
# decoded and counts the distinct span ids, GET /count only counts requests, GET /reset forgets everything.
lock = threading.Lock()
spill = tempfile.TemporaryFile(dir=sys.argv[1])
state = {"arrivals": [], "decoded": 0, "offset": 0, "seen": set(), "received": 0, "last_new": 0.0}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            spill.seek(0, 2)
            spill.write(len(body).to_bytes(4, "big") + body)
            state["arrivals"].append(time.monotonic())
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        with lock:
            if self.path == "/reset":
                spill.seek(0)
                spill.truncate()
                state.update(arrivals=[], decoded=0, offset=0, seen=set(), received=0, last_new=0.0)
            answer = self.count() if self.path == "/state" else {"requests": len(state["arrivals"])}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def count(self):
        spill.flush()
        spill.seek(state["offset"])
        seen = state["seen"]
        for arrived in state["arrivals"][state["decoded"]:]:
            body = spill.read(int.from_bytes(spill.read(4), "big"))
            request = ExportTraceServiceRequest.FromString(body)
            ids = [s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            before = len(seen)
            seen.update(ids)
            state["received"] += len(ids)
            if len(seen) > before:
                state["last_new"] = arrived
        state["decoded"], state["offset"] = len(state["arrivals"]), spill.tell()
        return {"received": state["received"], "requests": state["decoded"], "last_new": state["last_new"],
                "distinct": len(seen)}
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"http://127.0.0.1:{s.server_address[1]}", flush=True)
s.serve_forever()
"""


class Sampler:
    """Peak RSS and CPU of the sidecar and its children, sampled every 50 ms until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.05)

    def sample(self) -> None:
        for pid in (self.pid, *child_pids(self.pid)):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                name = ("sidecar (ingest)" if pid == self.pid else
                        "resource tracker" if b"resource_tracker" in command else "delivery process")
                self.peak[name] = max(self.peak.get(name, 0.0), status_mb(pid, "VmHWM"))
                self.cpu[name] = cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                continue

    def mark(self) -> dict[str, float]:
        """The CPU seconds of each process so far (sampled now)."""
        self.sample()
        return dict(self.cpu)

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()


def serve_env() -> dict[str, str]:
    """This environment, with this checkout's ``src`` first on PYTHONPATH (the sidecar runs in another directory)."""
    import traceexport

    src = str(Path(traceexport.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}


def receiver_state(url: str, path: str = "/state") -> dict[str, Any]:
    """The receiver's counters (``/state`` decodes everything it got; ``/count`` only counts requests)."""
    with urllib.request.urlopen(url + path, timeout=600) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def backlog(records: int, stream: str) -> tuple[list[bytes], int]:
    """``records`` Dify envelopes with fresh ids, and the distinct span ids the otlp mapping makes of them."""
    texts = sample_texts()
    if stream == "message":
        texts = [t for t in texts if '"trace_info_type":"MessageTraceInfo"' in t.replace(" ", "")]
    envelopes = envelope_stream(texts, -(-records // len(texts)))[:records]
    mapping = load_mapping("otlp")
    spans = {p.key for e in envelopes for p in mapping.map(record_from_obj(json.loads(e)))}
    return envelopes, len(spans)


def config_text(work: Path, redis_url: str, storage: Path, receiver: str, args: argparse.Namespace) -> str:
    """The sidecar's config: the Celery source on the benchmark's queue and storage, one otlp sink."""
    celery = {"broker_url": redis_url, "storage": {"type": "local", "path": str(storage)},
              "concurrency": args.concurrency, "other_tasks_queue": None}
    if args.prefetch:
        celery["prefetch"] = args.prefetch
    config = {
        "spool": {"dir": str(work / "spool")},
        "sinks": {"otlp": {"type": "otlp", "traces_endpoint": receiver + "/v1/traces"}},
        "sources": {"http": {"listen": "127.0.0.1:0"}, "celery": celery},
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def one_run(index: int, args: argparse.Namespace, receiver: str, work: Path) -> dict[str, Any]:
    """Fill a fresh Redis with the backlog, let one sidecar drain it; the figures."""
    run_dir = work / f"run-{index}"
    storage = run_dir / "storage"
    storage.mkdir(parents=True)
    envelopes, spans = backlog(args.records, args.stream)
    receiver_state(receiver, "/reset")
    with RedisServer.start(run_dir / "redis") as redis:
        producer = DifyProducer(redis.url(1), storage)
        started = time.perf_counter()
        producer.send_many(envelopes)
        producer.close()
        filled = time.perf_counter() - started
        client = redis.client(1)
        queued = int(client.llen("ops_trace"))
        print(f"\nrun {index + 1}: {queued:,} messages on ops_trace and their files (filled in {filled:.1f}s); "
              f"{spans:,} spans expected", flush=True)
        config = run_dir / "traceexport.yaml"
        config.write_text(config_text(run_dir, redis.url(1), storage, receiver, args))
        redis_cpu = cpu_seconds(redis.process.pid)
        receiver_cpu = cpu_seconds(args.receiver_pid)
        log = (run_dir / "serve.log").open("wb")
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "traceexport", "serve", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir,
                                env=serve_env())
        log.close()
        sampler = Sampler(proc.pid)
        consumed = delivered = first = None
        at_first: dict[str, float] = {}
        taken_at_first = 0
        at_consumed: dict[str, float] = {}
        try:
            deadline = start + args.timeout
            while time.monotonic() < deadline and proc.poll() is None:
                left = int(client.llen("ops_trace")) + int(client.hlen(UNACKED))
                if first is None and left < queued:
                    first = time.monotonic() - start
                    at_first, taken_at_first = sampler.mark(), queued - left
                    redis_cpu = cpu_seconds(redis.process.pid)
                if consumed is None and left == 0:
                    consumed = time.monotonic() - start
                    at_consumed = sampler.mark()
                    redis_cpu = cpu_seconds(redis.process.pid) - redis_cpu
                if consumed is not None and receiver_state(receiver, "/count")["requests"]:
                    got = receiver_state(receiver)
                    if got["distinct"] >= spans:
                        delivered = got["last_new"] - start
                        break
                time.sleep(0.05 if consumed is None else 0.5)
        finally:
            sampler.stop()
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            proc.wait(60)
        got = receiver_state(receiver)
        files_left = sum(1 for _ in (storage / "ops_trace").rglob("*.json"))
    output = (run_dir / "serve.log").read_text(errors="replace")
    if consumed is None or delivered is None:
        raise SystemExit(f"run {index + 1} did not finish in {args.timeout}s (consumed: {consumed}, receiver: "
                         f"{got}); serve log:\n{output[-3000:]}")
    steady = queued - taken_at_first  # records consumed between the two marks
    return {"records": queued, "spans": spans, "first": first, "consumed": consumed, "delivered": delivered,
            "steady": steady, "steady_cpu": {n: at_consumed.get(n, 0.0) - at_first.get(n, 0.0) for n in at_consumed
                                             if n != "resource tracker"},
            "distinct": got["distinct"], "received": got["received"], "files_left": files_left,
            "peaks": {n: mb for n, mb in sampler.peak.items() if n != "resource tracker"},
            "cpu": {n: s for n, s in sampler.cpu.items() if n != "resource tracker"},
            "redis_cpu": redis_cpu, "receiver_cpu": cpu_seconds(args.receiver_pid) - receiver_cpu}


def report(f: dict[str, Any]) -> None:
    """Print one run's figures."""
    n = f["records"]
    consumed = n / f["consumed"]
    print(f"  consumed (Redis → spool, acknowledged): {consumed:,.0f} records/s ({n:,} in {f['consumed']:.1f}s "
          f"from start, first message taken at {f['first']:.1f}s); goal {GOAL_RATE:,.0f}/s: "
          f"x{consumed / GOAL_RATE:.2f} {'met' if consumed >= GOAL_RATE else 'MISSED'}")
    steady = n / (f["consumed"] - f["first"])
    print(f"    from the first message taken: {steady:,.0f} records/s; CPU per record meanwhile: " + ", ".join(
        f"{name} {cpu / f['steady'] * 1e6:,.0f} us" for name, cpu in f["steady_cpu"].items())
          + f", redis-server {f['redis_cpu'] / f['steady'] * 1e6:,.0f} us")
    ingest = f["steady_cpu"].get("sidecar (ingest)", 0.0) / f["steady"]
    if ingest:
        print(f"    one core's worth of the sidecar's consuming process: {1 / ingest:,.0f} records/s")
    print(f"  delivered end to end: {n / f['delivered']:,.0f} records/s (last new span at {f['delivered']:.1f}s); "
          f"{f['distinct']:,} distinct spans of {f['spans']:,} ({f['received']:,} received)"
          + ("" if f["distinct"] == f["spans"] else "  <-- MISMATCH"))
    print(f"  files left in storage: {f['files_left']}" + ("" if f["files_left"] == 0 else "  <-- NOT CLEANED"))
    print("  CPU per record: " + ", ".join(f"{name} {cpu / n * 1e6:,.0f} us" for name, cpu in f["cpu"].items())
          + f" (start-up included), receiver {f['receiver_cpu'] / n * 1e6:,.0f} us")
    print("  peak RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in f["peaks"].items()), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=20000, help="messages in the backlog (default 20000)")
    parser.add_argument("--stream", choices=("mixed", "message"), default="mixed")
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh Redis (default 1)")
    parser.add_argument("--concurrency", type=int, default=1, help="sources.celery.concurrency (default 1)")
    parser.add_argument("--prefetch", type=int, default=0, help="sources.celery.prefetch (default: the source's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take (default 600)")
    parser.add_argument("--workdir", type=Path, default=None, help="where Redis, storage, spool and logs go")
    args = parser.parse_args()
    if redis_server_binary() is None:
        print("bench_celery needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-celery-"))
    work.mkdir(parents=True, exist_ok=True)
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(work)], stdout=subprocess.PIPE, text=True)
    args.receiver_pid = receiver.pid
    try:
        assert receiver.stdout is not None
        url = receiver.stdout.readline().strip()
        for index in range(args.runs):
            report(one_run(index, args, url, work))
    finally:
        receiver.kill()
        receiver.wait()
    print(f"(work dir {work}; delete it when done)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
