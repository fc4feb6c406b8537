"""Latency benchmark: a steady stream of live traces into ``traceexport serve`` over HTTP, delivered to a
healthy local OTLP receiver; delivery and end-to-end latency p95 against the targets.

    python bench/bench_latency.py [--rate 1000] [--seconds 40] [--batch 20] [--senders 4] [--linger SECONDS]

* ``serve`` runs as a real process with its defaults (a delivery process on two cores or more, the
  OTLP sink's own batching) and one OTLP/HTTP sink pointed at a receiver process on 127.0.0.1;
* ``--senders`` threads post ``--batch`` records at a time, paced together to ``--rate`` records/s,
  each record ending (in Dify's terms) the moment it is sent; the warm-up seconds are left out;
* the latencies come from the daemon's own histograms on ``/metrics`` (delivery: acceptance into the
  spool to the receiver's answer; end-to-end: the record's end time to that answer), taken as the
  difference between a snapshot after the warm-up and one after the run, p50/p95 estimated from the
  buckets as Prometheus's ``histogram_quantile`` does; and, as a cross-check independent of them, from
  the receiver: arrival time minus each root span's end time.

Targets (issue #17): delivery latency p95 <= 1 s, end-to-end p95 < 5 s at 1,000 records/s.
Not a test: it prints figures and PASS/MISS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.live_traces import live_body

from traceexport.pipeline.histograms import BOUNDS, DELIVERY, E2E, Histogram, quantile

GOAL_DELIVERY_P95, GOAL_E2E_P95 = 1.0, 5.0

RECEIVER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
out = open(sys.argv[1], "w")
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        now = time.time()
        request = ExportTraceServiceRequest.FromString(body)
        ends = [s.end_time_unix_nano for rs in request.resource_spans for ss in rs.scope_spans
                for s in ss.spans if not s.parent_span_id]
        out.write("".join(f"{now - e / 1e9:.4f}\n" for e in ends))
        out.flush()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"http://127.0.0.1:{s.server_address[1]}", flush=True)
s.serve_forever()
"""


def histograms(metrics_url: str, sink: str) -> dict[str, Histogram]:
    """The delivery and end-to-end histograms of ``sink`` from /metrics (per bucket, not cumulative)."""
    text = httpx.get(metrics_url, timeout=30).text
    out: dict[str, Histogram] = {}
    for metric in (DELIVERY, E2E):
        prefix = f'traceexport_{metric}_bucket{{sink="{sink}",le="'
        cumulative = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)]
        histogram = Histogram()
        histogram.counts = [int(c - (cumulative[i - 1] if i else 0)) for i, c in enumerate(cumulative)]
        out[metric] = histogram
    return out


def minus(after: Histogram, before: Histogram) -> Histogram:
    """What was observed between two snapshots."""
    delta = Histogram()
    delta.counts = [a - b for a, b in zip(after.counts, before.counts, strict=True)]
    return delta


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def start_serve(work: Path, url: str, linger: float | None) -> tuple[subprocess.Popen[bytes], str]:
    """``traceexport serve`` on a free port with one OTLP sink to ``url``; its process and base URL."""
    sink = f"  otlp:\n    type: otlp\n    traces_endpoint: {url}/v1/traces\n"
    if linger is not None:
        sink += f"    linger_seconds: {linger}\n"
    config = work / "serve.yaml"
    config.write_text(f"spool:\n  dir: {work / 'spool'}\nsinks:\n{sink}", encoding="utf-8")
    log = work / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "traceexport", "serve", "--config", str(config),
                                 "--listen", "127.0.0.1:0"], stderr=err, stdout=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on " in text:
            base = text.split("listening on ", 1)[1].split("/v1/dify/traces", 1)[0]
            return proc, base
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"serve did not start: {log.read_text(errors='replace')[-2000:]}")


class Sender:
    """Posts ``batch`` live records at a time, paced to ``rate`` records/s, from ``threads`` threads (as many
    Dify workers would), each request due at its own moment of one schedule."""

    def __init__(self, base: str, rate: float, batch: int, threads: int) -> None:
        self.url = f"{base}/v1/dify/traces"
        self.rate, self.batch = rate, batch
        self.sent = 0
        self.refused = 0
        self.late = 0.0  # the most a request fell behind its schedule (s)
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._start = 0.0

    def start(self) -> None:
        self._start = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                with self._lock:
                    number, self._next = self._next, self._next + self.batch
                wait = self._start + number / self.rate - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)
                elif -wait > self.late:
                    self.late = -wait
                answer = client.post(self.url, content=live_body(self.batch, number, run="be7c"),
                                     headers={"Content-Type": "application/json"})
                with self._lock:
                    if answer.status_code == 202:
                        self.sent += self.batch
                    else:
                        self.refused += self.batch


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    arrivals = work / "arrivals.txt"
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(arrivals)], stdout=subprocess.PIPE)
    assert receiver.stdout is not None
    url = receiver.stdout.readline().decode().strip()
    serve, base = start_serve(work, url, args.linger)
    try:
        sender = Sender(base, args.rate, args.batch, args.senders)
        sender.start()
        time.sleep(args.warmup)
        before, sent_before, skip = histograms(f"{base}/metrics", "otlp"), sender.sent, _lines(arrivals)
        started = time.monotonic()
        time.sleep(args.seconds)
        sent = sender.sent - sent_before
        elapsed = time.monotonic() - started
        after = histograms(f"{base}/metrics", "otlp")
        sender.stop()
        seen = [float(v) for v in arrivals.read_text().splitlines()[skip:]]
    finally:
        serve.terminate()
        serve.wait(60)
        receiver.terminate()
        receiver.wait(10)
    delivery, e2e = minus(after[DELIVERY], before[DELIVERY]), minus(after[E2E], before[E2E])
    return {"rate": sent / elapsed, "refused": sender.refused, "late": sender.late, "acknowledged": delivery.count,
            "delivery_p50": quantile(0.5, delivery), "delivery_p95": quantile(0.95, delivery),
            "e2e_p50": quantile(0.5, e2e), "e2e_p95": quantile(0.95, e2e),
            "receiver_p50": percentile(seen, 0.5), "receiver_p95": percentile(seen, 0.95), "receiver_n": len(seen)}


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="records per second sent")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out at the start")
    parser.add_argument("--batch", type=int, default=20, help="records per HTTP request")
    parser.add_argument("--senders", type=int, default=4, help="threads posting at the same time")
    parser.add_argument("--linger", type=float, default=None,
                        help="the sink's linger_seconds (default: the sink's own, 1 s)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        figures = run(args, Path(tmp))
    resolution = f"buckets {', '.join(f'{b:g}' for b in BOUNDS if 0.05 <= b <= 10)} s"
    print(f"sent {figures['rate']:.0f} records/s for {args.seconds:.0f} s in batches of {args.batch} "
          f"({figures['refused']} refused, sender at most {figures['late']:.2f} s behind schedule); "
          f"{figures['acknowledged']} acknowledged; load average {load:.1f} on {os.cpu_count()} cores")
    print(f"delivery latency   p50 {figures['delivery_p50']:.3f} s  p95 {figures['delivery_p95']:.3f} s   "
          f"goal p95 <= {GOAL_DELIVERY_P95:g} s: {'PASS' if figures['delivery_p95'] <= GOAL_DELIVERY_P95 else 'MISS'}")
    print(f"end-to-end latency p50 {figures['e2e_p50']:.3f} s  p95 {figures['e2e_p95']:.3f} s   "
          f"goal p95 <  {GOAL_E2E_P95:g} s: {'PASS' if figures['e2e_p95'] < GOAL_E2E_P95 else 'MISS'}")
    print(f"receiver's view (arrival - span end, {figures['receiver_n']} root spans): "
          f"p50 {figures['receiver_p50']:.3f} s  p95 {figures['receiver_p95']:.3f} s")
    print(f"(histogram estimates, interpolated within {resolution})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
