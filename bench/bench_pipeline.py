"""Pipeline benchmark: end-to-end throughput and peak memory with a large backlog on disk.

1. Throughput: raw Dify envelopes in (parsed, accepted into the spool with fsync, mapped by the real
   otlp mapping, encoded by the real OTLP sink) and out to a trivial local OTLP/HTTP receiver running
   in its own process on 127.0.0.1 (or to the file sink with ``--target file``).
2. Backlog: ``--backlog`` records (default 1,000,000) written straight into a spool, then a pipeline
   opened on it drains for ``--drain-seconds``; peak RSS of this process is reported.

    python bench/bench_pipeline.py [--records 20000] [--backlog 1000000] [--target http|file]

Not a test: it prints figures, and the ratio against the OpenTelemetry SDK row of ../shared/PEERS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from traceexport.mapping import load_mapping
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.pipeline.spool import Spool, SpoolRow
from traceexport.records import Record, parse_records
from traceexport.sinks import create_sink

SAMPLE = Path(__file__).parents[1] / "tests" / "data" / "samples" / "05-message-chat.json"
OTEL_SDK_DEFAULT = 3700.0  # records/s, ../shared/PEERS.md
GOAL_RATE, GOAL_RSS_MB = 5000.0, 200.0

RECEIVER = """
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
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


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB.

    VmHWM from /proc (reset by exec), not ru_maxrss, which Linux carries over from the parent across
    fork+exec and would report the builder's peak for the drain process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def envelope_texts(n: int, offset: int = 0) -> list[str]:
    """``n`` compact JSON envelopes (as Dify writes them) of the sample chat record, distinct message ids."""
    template = json.dumps(json.loads(SAMPLE.read_text()), ensure_ascii=False, separators=(",", ":"))
    old = json.loads(template)["trace_info"]["message_id"]
    return [template.replace(old, f"20000000-0000-4000-8000-{i:012d}") for i in range(offset, offset + n)]


def stream_texts(n: int, stream: str) -> list[str]:
    """``n`` envelopes: all chat messages (the heaviest type), or the seven types in turn with fresh ids."""
    if stream == "message":
        return envelope_texts(n)
    from bench_mapping import envelope_stream, sample_texts

    texts = sample_texts()
    return [b.decode() for b in envelope_stream(texts, n // len(texts) + 1)][:n]


def make_sink(target: str, url: str | None, out: Path):
    if target == "file":
        return create_sink("file", options={"path": str(out), "fsync": True}, env={})
    return create_sink("otlp", env={"OTEL_EXPORTER_OTLP_ENDPOINT": str(url),
                                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})


def routes_for(target: str, url: str | None, out: Path) -> list[Route]:
    """The benchmark's one route (a module-level function, so a delivery process can rebuild it)."""
    sink = make_sink(target, url, out)
    return [Route(sink, load_mapping(sink.backend))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(n: int, target: str, url: str | None, work: Path, stream: str = "message",
               delivery_process: bool = False) -> tuple[float, dict[str, float]]:
    """Records per second from raw envelopes to the receiver, spool fsync'd; CPU microseconds per record
    of the ingesting process and of the delivery process (when there is one)."""
    warmup, *texts = stream_texts(n + 1, stream)
    factory = functools.partial(routes_for, target, url, work / "out")
    routes = factory()
    sink = routes[0].sink
    settings = PipelineSettings(delivery_process=delivery_process)
    pipe = Pipeline(work / "spool-tp", routes, settings, route_factory=factory)
    pipe.start()  # started and warmed up (one record delivered) before the clock starts
    pipe.accept([r for r in parse_records(warmup) if isinstance(r, Record)])
    assert pipe.wait_idle(120), "warm-up record not delivered"
    pids = {"ingest": os.getpid()}
    if pipe.delivery is not None and pipe.delivery.pid is not None:
        pids["delivery"] = pipe.delivery.pid
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    for i in range(0, n, 500):
        pipe.accept([r for r in parse_records("\n".join(texts[i:i + 500])) if isinstance(r, Record)])
    idle = pipe.flush(600)  # end of input: the last partial batch goes now, not after the linger time
    elapsed = time.perf_counter() - start
    cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / n * 1e6 for name, pid in pids.items()}
    exported = pipe.metrics()["sinks"][sink.name]["exported"]
    pipe.close()
    assert idle and exported == n + 1, f"only {exported} of {n + 1} exported"
    return n / elapsed, cpu


def build_backlog(spool_dir: Path, count: int, sink_name: str) -> float:
    """Write ``count`` records straight into a spool for ``sink_name``; seconds taken."""
    spool = Spool(spool_dir, PipelineSettings(fsync=False, max_bytes=64 * 1024**3))
    bit = spool.register_sinks([sink_name])[sink_name]
    start = time.perf_counter()
    for offset in range(0, count, 5_000):
        texts = envelope_texts(min(5_000, count - offset), offset)
        spool.accept([SpoolRow(1 << bit, f"message:{offset + i}", "message", "app", f"t{offset + i}", t)
                      for i, t in enumerate(texts)])
    spool.close()
    return time.perf_counter() - start


def drain(spool_dir: Path, seconds: float, target: str, url: str | None, work: Path) -> tuple[int, float]:
    """Deliver from the backlog for ``seconds``; (records delivered, rate)."""
    sink = make_sink(target, url, work / "out-backlog")
    settings = PipelineSettings(max_bytes=64 * 1024**3)
    pipe = Pipeline(spool_dir, [Route(sink, load_mapping(sink.backend))], settings)
    depth = pipe.metrics()["sinks"][sink.name]["queue_depth"]
    start = time.perf_counter()
    pipe.start()
    time.sleep(seconds)
    pipe.stop()
    elapsed = time.perf_counter() - start
    done = pipe.metrics()["sinks"][sink.name]["exported"]
    pipe.close()
    print(f"  backlog depth at start: {depth:,}")
    return done, done / elapsed


def run_throughput(args: argparse.Namespace, url: str | None, work: Path) -> None:
    streams = ("mixed", "message") if args.stream == "both" else (args.stream,)
    for separate in (False, True):
        for stream in streams:
            rate, cpu = throughput(args.records, args.target, url, work / f"{stream}-{separate}", stream, separate)
            what = "chat-message records (2 spans each)" if stream == "message" else "records of the seven types"
            how = "delivery in a second process" if separate else "one process"
            print(f"throughput: {rate:,.0f} records/s end to end ({args.records:,} {what}, {how}, fsync on, "
                  f"target {args.target}); goal {GOAL_RATE:,.0f}/s: {'met' if rate >= GOAL_RATE else 'MISSED'}; "
                  f"x{rate / OTEL_SDK_DEFAULT:.2f} the OTel SDK default (~{OTEL_SDK_DEFAULT:,.0f}/s)", flush=True)
            print("  CPU per record: " + ", ".join(f"{name} process {us:,.0f} us" for name, us in cpu.items()),
                  flush=True)


def run_backlog(args: argparse.Namespace, url: str | None, work: Path) -> None:
    spool_dir = work / "spool-backlog"
    sink_name = "otlp" if args.target == "http" else "file"
    took = build_backlog(spool_dir, args.backlog, sink_name)
    size = (spool_dir / "spool.db").stat().st_size
    print(f"backlog: {args.backlog:,} records written in {took:.0f}s ({size / 1e9:.2f} GB on disk); "
          f"peak RSS while building: {peak_rss_mb():.0f} MB", flush=True)
    # The drain runs in a fresh process so its peak RSS is its own, not the builder's.
    child = subprocess.run([sys.executable, __file__, "--phase", "drain", "--target", args.target,
                            "--drain-seconds", str(args.drain_seconds), "--workdir", str(work),
                            "--url", url or ""], check=False)
    if child.returncode:
        raise SystemExit(child.returncode)


def run_drain(args: argparse.Namespace, url: str | None, work: Path) -> None:
    done, drain_rate = drain(work / "spool-backlog", args.drain_seconds, args.target, url, work)
    rss = peak_rss_mb()
    print(f"  drained {done:,} records in {args.drain_seconds:.0f}s ({drain_rate:,.0f}/s) from the backlog")
    print(f"peak RSS of a pipeline delivering from the backlog: {rss:.0f} MB; goal <= {GOAL_RSS_MB:.0f} MB: "
          f"{'met' if rss <= GOAL_RSS_MB else 'MISSED'}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records for the throughput run")
    parser.add_argument("--stream", choices=("both", "mixed", "message"), default="both",
                        help="records for the throughput run: the seven types in turn, chat messages only, or both")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="records held on disk for the RSS run")
    parser.add_argument("--drain-seconds", type=float, default=15.0, help="how long to deliver from the backlog")
    parser.add_argument("--target", choices=("http", "file"), default="http",
                        help="a local OTLP/HTTP receiver process (default) or the file sink")
    parser.add_argument("--workdir", type=Path, default=None, help="where spools go (default: a temp dir)")
    parser.add_argument("--phase", choices=("all", "throughput", "backlog", "drain"), default="all",
                        help="run one part only (drain expects a backlog built in --workdir)")
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    if args.phase == "drain":
        run_drain(args, args.url or None, work)
        return 0
    receiver = None
    url = None
    if args.target == "http":
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        assert receiver.stdout is not None
        url = receiver.stdout.readline().strip()
    try:
        if args.phase in ("all", "throughput"):
            run_throughput(args, url, work)
        if args.phase in ("all", "backlog"):
            run_backlog(args, url, work)
    finally:
        if receiver is not None:
            receiver.kill()
            receiver.wait()
    print(f"(work dir {work}; delete it when done)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
