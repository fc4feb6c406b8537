"""Soak test: ``traceexport serve`` under mixed traffic for a long run, with connection churn, backend
outages and daemon restarts; prints memory, file descriptors, loss and duplicates at the end.

    python bench/bench_soak.py [--minutes 30] [--rate 400] [--workdir DIR]

Not a test (CI does not run it): it takes as long as ``--minutes`` says. Everything runs on 127.0.0.1:

* a **receiver** process (OTLP/HTTP, protobuf) that appends every span id it is sent to a file before
  it answers, and answers what the bench tells it to (200, 503, or 429 with ``Retry-After``);
* the **daemon** (``python -m traceexport serve``) with an ``otlp`` sink pointed at the receiver;
* **clients** in this process posting NDJSON batches of the seven community record types with fresh ids:
  half of them open a new connection for every request (curl, most webhook senders), half keep one
  open. A client retries until it gets ``202``. When a connection breaks after the request was sent (the
  daemon was killed mid-request) the client cannot know whether it was accepted; it sends the batch
  again and the bench counts those records as "ambiguous": their second copy is the client's, not a
  daemon duplicate.

The schedule (as fractions of the run): backend answers 503 (10 %), backend killed (25 %), daemon
SIGTERM + restart (35 %), backend throttles with 429 (50 %), daemon kill -9 + restart (60 %), daemon
kill -9 while the backend is down (75 %), daemon SIGTERM + restart (85 %). After the traffic stops, the
daemon drains its spool; then every span the acknowledged records map to (computed here with the same
``otlp`` mapping) is looked up in the receiver's file.

The last lines: resident memory and open file descriptors of the daemon and of its delivery process,
sampled every few seconds (after warm-up, and at the end), then records acknowledged, spans expected,
lost, dead-lettered and duplicated.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench_mapping import envelope_stream, sample_texts  # bench/ is not a package: found via sys.path[0]
from traceexport.mapping import load_mapping
from traceexport.records import Record, parse_records

RECEIVER = r"""
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
port, spans_path, mode_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = open(spans_path, "a", buffering=1)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            mode = open(mode_path).read().strip()
        except OSError:
            mode = "ok"
        if mode in ("503", "429"):
            self.send_response(int(mode))
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest.FromString(body)
        ids = [span.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
        out.write("".join(i + "\n" for i in ids))
        out.flush()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer.request_queue_size = 128
s = ThreadingHTTPServer(("127.0.0.1", port), H)
print("ready", flush=True)
s.serve_forever()
"""

CONFIG = """
sources:
  http:
    listen: 127.0.0.1:{listen}
sinks:
  receiver:
    type: otlp
    endpoint: http://127.0.0.1:{receiver}
    protocol: http/protobuf
spool:
  dir: {spool}
retry:
  max_age: 24h
"""


def free_port() -> int:
    """A port nothing listens on now (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f}s")


class Receiver:
    """The OTLP/HTTP receiver process: started, stopped (even kill -9) and switched between answers."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.spans = work / "received-spans.txt"
        self.mode = work / "receiver-mode"
        self.mode.write_text("ok")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(self.port), str(self.spans),
                                      str(self.mode)], stdout=subprocess.DEVNULL)
        wait_port(self.port, 30)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def answer(self, mode: str) -> None:
        self.mode.write_text(mode)


class Daemon:
    """``traceexport serve`` as a process on a fixed port and spool, restarted as the schedule says."""

    def __init__(self, work: Path, receiver_port: int) -> None:
        self.port = free_port()
        self.spool = work / "spool"
        self.config = work / "soak.yaml"
        self.config.write_text(CONFIG.format(listen=self.port, receiver=receiver_port, spool=self.spool))
        self.log = work / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = {"sigterm": 0, "kill -9": 0}

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "traceexport", "serve", "--config",
                                          str(self.config)], stdout=subprocess.DEVNULL, stderr=log)
        wait_port(self.port, 60)

    def stop(self, hard: bool = False) -> None:
        if self.proc is None:
            return
        children = child_pids(self.proc.pid)
        if hard:
            self.proc.kill()
        else:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.proc = None
        self.restarts["kill -9" if hard else "sigterm"] += 1
        # kill -9 leaves the delivery process to notice on its own; the restart must not race an old one
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in children if Path(f"/proc/{pid}").exists()]
        if survivors:
            print(f"  !! delivery process {survivors} still alive 30 s after its daemon stopped", flush=True)

    def pids(self) -> dict[str, int]:
        if self.proc is None:
            return {}
        out = {"daemon": self.proc.pid}
        for pid in child_pids(self.proc.pid):
            out["delivery"] = pid
        return out

    def pending(self) -> int:
        """Records the spool still owes (read-only look at the spool file)."""
        try:
            conn = sqlite3.connect(f"file:{self.spool / 'spool.db'}?mode=ro", uri=True, timeout=30)
            with contextlib.closing(conn):
                (cursor,) = conn.execute("SELECT cursor FROM sinks WHERE name = 'receiver'").fetchone()
                fresh = conn.execute("SELECT count(*) FROM records WHERE seq > ?", (cursor,)).fetchone()[0]
                retries = conn.execute("SELECT count(*) FROM retries").fetchone()[0]
                return int(fresh) + int(retries)
        except (sqlite3.Error, TypeError):
            return -1

    def dead_lettered(self) -> int:
        conn = sqlite3.connect(f"file:{self.spool / 'spool.db'}?mode=ro", uri=True, timeout=30)
        with contextlib.closing(conn):
            return int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Traffic:
    """Client threads posting NDJSON batches until stopped; records what was acknowledged."""

    def __init__(self, port: int, rate: float, clients: int) -> None:
        self.port = port
        self.rate = rate
        self.clients = clients
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: list[bytes] = []
        self.ambiguous: list[bytes] = []
        self.requests = Counter[str]()
        self.texts = sample_texts()
        self.round = itertools.count()

    def batch(self, size: int) -> list[bytes]:
        with self.lock:
            seed = next(self.round)
        copies = size // len(self.texts) + 1
        return envelope_stream(self.texts, copies, seed=seed)[:size]

    def run_client(self, index: int) -> None:
        rng = random.Random(index)
        churn = index % 2 == 0  # a new connection per request, like curl
        conn: http.client.HTTPConnection | None = None
        per_client = self.rate / self.clients
        while not self.stop_event.is_set():
            records = self.batch(rng.randint(1, 40))
            body = b"\n".join(records)
            started = time.monotonic()
            sent_once = False
            while True:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                try:
                    conn.request("POST", "/v1/dify/traces", body, {"Content-Type": "application/x-ndjson"})
                except OSError:  # not sent: refused while the daemon restarts
                    conn.close()
                    conn = None
                    self.requests["refused"] += 1
                    time.sleep(0.2)
                    continue
                try:
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):  # sent, answer lost: accepted or not?
                    conn.close()
                    conn = None
                    sent_once = True
                    self.requests["answer lost"] += 1
                    time.sleep(0.2)
                    continue
                self.requests[str(response.status)] += 1
                if churn or response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                if response.status == 202:
                    with self.lock:
                        (self.ambiguous if sent_once else self.acknowledged).extend(records)
                    break
                if response.status in (503, 429):
                    time.sleep(min(float(response.getheader("Retry-After") or 1), 1.0))
                    continue
                raise SystemExit(f"daemon answered {response.status}: {response.read()[:300]!r}")
            spent = time.monotonic() - started
            self.stop_event.wait(max(len(records) / per_client - spent, 0))
        if conn is not None:
            conn.close()

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run_client, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads


def expected_spans(envelopes: list[bytes]) -> Counter[str]:
    """Every span id the ``otlp`` mapping makes of these records, with its multiplicity."""
    mapping = load_mapping("otlp")
    out: Counter[str] = Counter()
    for start in range(0, len(envelopes), 2000):
        for record in parse_records(b"\n".join(envelopes[start:start + 2000]).decode()):
            if isinstance(record, Record):
                out.update(payload.body["spanId"] for payload in mapping.map(record))
    return out


def schedule(minutes: float) -> list[tuple[float, str]]:
    """(seconds from start, action) for the run."""
    events = [(0.10, "receiver 503"), (0.25, "receiver killed"), (0.35, "daemon sigterm"),
              (0.50, "receiver 429"), (0.60, "daemon kill -9"), (0.75, "daemon kill -9 + receiver killed"),
              (0.85, "daemon sigterm")]
    return [(fraction * minutes * 60, action) for fraction, action in events]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the traffic phase")
    parser.add_argument("--rate", type=float, default=400.0, help="records per second offered, all clients")
    parser.add_argument("--clients", type=int, default=8, help="client threads (half churn connections)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep spool, logs and received spans here")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="traceexport-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    outage = min(60.0, args.minutes * 60 * 0.05)

    receiver = Receiver(work)
    receiver.start()
    daemon = Daemon(work, receiver.port)
    daemon.start()
    traffic = Traffic(daemon.port, args.rate, args.clients)
    samples: list[tuple[float, dict[str, tuple[float, int]]]] = []
    begin = time.monotonic()

    def sample() -> None:
        stats = {}
        for role, pid in daemon.pids().items():
            with contextlib.suppress(OSError):
                stats[role] = (rss_mb(pid), open_fds(pid))
        samples.append((time.monotonic() - begin, stats))

    print(f"soak: {args.minutes:g} min, {args.rate:g} records/s offered by {args.clients} clients; work dir {work}",
          flush=True)
    threads = traffic.start()
    events = schedule(args.minutes)
    end = begin + args.minutes * 60
    next_sample = begin
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                sample()
                next_sample = now + 5
            if events and now - begin >= events[0][0]:
                _, action = events.pop(0)
                print(f"  {now - begin:7.0f}s  {action}", flush=True)
                act(action, receiver, daemon, outage)
            time.sleep(0.2)
    finally:
        traffic.stop_event.set()
        for thread in threads:
            thread.join(120)
    print(f"  {time.monotonic() - begin:7.0f}s  traffic stopped; draining", flush=True)
    receiver.answer("ok")
    drain_deadline = time.monotonic() + 600
    while daemon.pending() != 0 and time.monotonic() < drain_deadline:
        sample()
        time.sleep(2)
    sample()
    drained = daemon.pending() == 0
    dead = daemon.dead_lettered()
    daemon.stop()
    receiver.kill()
    report(traffic, samples, receiver.spans, daemon, dead, drained)
    return 0


def act(action: str, receiver: Receiver, daemon: Daemon, outage: float) -> None:
    """Run one event of the schedule (an outage lasts ``outage`` seconds; traffic goes on meanwhile)."""
    if action in ("receiver 503", "receiver 429"):
        receiver.answer(action.split()[1])
        threading.Timer(outage, receiver.answer, args=("ok",)).start()
    elif action == "receiver killed":
        receiver.kill()
        threading.Timer(outage, receiver.start).start()
    elif action == "daemon sigterm":
        daemon.stop()
        daemon.start()
    elif action == "daemon kill -9":
        daemon.stop(hard=True)
        daemon.start()
    elif action == "daemon kill -9 + receiver killed":
        receiver.kill()
        daemon.stop(hard=True)
        daemon.start()
        threading.Timer(outage, receiver.start).start()


def report(traffic: Traffic, samples: list[tuple[float, dict[str, tuple[float, int]]]], spans_path: Path,
           daemon: Daemon, dead: int, drained: bool) -> None:
    """Print memory and descriptors over the run, then loss and duplicates."""
    print("\nresources (RSS MB / open fds), sampled every 5 s:")
    warm = [s for t, s in samples if t >= 120] or [s for _, s in samples]
    for role in ("daemon", "delivery"):
        rows = [s[role] for s in warm if role in s]
        if not rows:
            continue
        first, last = rows[0], rows[-1]
        print(f"  {role:9s} after warm-up {first[0]:6.0f} MB {first[1]:4d} fds   max {max(r[0] for r in rows):6.0f} MB "
              f"{max(r[1] for r in rows):4d} fds   end {last[0]:6.0f} MB {last[1]:4d} fds")
    once = expected_spans(traffic.acknowledged) + expected_spans(traffic.ambiguous)
    allowed = once + expected_spans(traffic.ambiguous)  # a re-sent batch may arrive twice: the client's copy
    received = Counter(spans_path.read_text().split()) if spans_path.exists() else Counter()
    lost = sum(max(n - received.get(span, 0), 0) for span, n in once.items())
    duplicated = sum(max(n - allowed.get(span, 0), 0) for span, n in received.items())
    print("\nrequests: " + ", ".join(f"{k} {v}" for k, v in sorted(traffic.requests.items())))
    print(f"restarts: {daemon.restarts['sigterm']} SIGTERM, {daemon.restarts['kill -9']} kill -9")
    print(f"records acknowledged: {len(traffic.acknowledged)} (+{len(traffic.ambiguous)} re-sent after a lost answer)")
    print(f"spans expected: {sum(once.values())}, received: {sum(received.values())}, spool drained: {drained}")
    print(f"lost: {lost} spans   dead-lettered: {dead} records   duplicated by the daemon: {duplicated} spans")


if __name__ == "__main__":
    sys.exit(main())
