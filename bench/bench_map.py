"""``traceexport map`` as a user runs it: a file of records in, request bodies out to /dev/null; records/s and peak RSS.

Run ``python bench/bench_map.py [--size 20MB --size 1GB] [--runs 3] [--form lines|array] [--to otlp]``.

* Writes a temporary file of mixed records, about ``--size`` bytes: the seven community sample records
  in turn, every UUID of each round replaced by a fresh one (the same replacement across the round, so
  a message and its tool/retrieval records still share ids), as JSON lines or as one JSON array
  (``tests/support/record_files.py``, which the map memory test uses too).
* Runs ``python -m traceexport map --to <backend> FILE`` as a child process (stdout to /dev/null,
  stderr kept) ``--runs`` times; the code measured is this checkout's ``src`` unless ``--src`` names
  another one (to measure an older version the same way).
* Per run: wall seconds, records/s, CPU seconds of the child (user + system) and records per CPU
  second (steadier than wall time on a shared machine), and the child's peak RSS (``ru_maxrss`` of
  that child, from ``wait4``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.record_files import write_records  # the generator the map memory test uses too

_ROOT = Path(__file__).resolve().parents[1]
_UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
GOAL_RATE = 10_000.0


def parse_size(text: str) -> int:
    """``20MB``, ``1GB``, ``512KB`` or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]B)?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 20MB, 1GB)")
    return int(float(match.group(1)) * _UNITS.get(match.group(2) or "", 1))


def run_map(path: Path, backend: str, src: Path, jobs: int | None) -> tuple[float, float, int, int, str]:
    """``(wall seconds, CPU seconds, peak RSS bytes, exit code, stderr)`` of one ``map`` run: CPU of the
    child and its workers, peak RSS of the largest of them."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [sys.executable, "-m", "traceexport", "map", "--to", backend, str(path)]
    argv += ["--jobs", str(jobs)] if jobs is not None else []
    with open(os.devnull, "wb") as devnull, tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=devnull, stderr=errors, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read(4000).decode("utf-8", "replace")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, child.returncode, stderr


def _mb(value: float) -> str:
    return f"{value / (1 << 20):,.0f} MB"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, action="append", help="input size (repeatable; default 20MB)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size")
    parser.add_argument("--form", choices=("lines", "array"), default="lines", help="JSON lines or one JSON array")
    parser.add_argument("--to", default="otlp", help="the backend map prints for")
    parser.add_argument("--jobs", type=int, default=None, help="map's --jobs (default: map's own default)")
    parser.add_argument("--src", type=Path, default=_ROOT / "src", help="the traceexport source tree to run")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the input (default: a temp dir)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    jobs = "" if args.jobs is None else f" --jobs {args.jobs}"
    print(f"traceexport map --to {args.to}{jobs}, {args.form} input, {args.runs} runs per size, code from {args.src}; "
          f"{os.cpu_count()} cores, load average {load:.1f}")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for size in args.size or [parse_size("20MB")]:
            path = Path(folder) / f"records.{'json' if args.form == 'array' else 'jsonl'}"
            count = write_records(path, size, args.form)
            real_size = path.stat().st_size
            print(f"\n{count:,} records, {_mb(real_size)}")
            print(f"{'run':>4} {'wall s':>8} {'records/s':>10} {'CPU s':>8} {'rec/CPU-s':>10} {'peak RSS':>10}")
            rates = []
            for run in range(1, args.runs + 1):
                wall, cpu, rss, code, stderr = run_map(path, args.to, args.src, args.jobs)
                if code != 0:
                    sys.exit(f"map exited {code}: {stderr.strip()[:1000]}")
                rates.append(count / wall)
                print(f"{run:>4} {wall:>8.1f} {count / wall:>10,.0f} {cpu:>8.1f} {count / cpu:>10,.0f} {_mb(rss):>10}")
            verdict = "PASS" if max(rates) >= GOAL_RATE else "MISS"
            print(f"records/s {min(rates):,.0f}-{max(rates):,.0f} (median {statistics.median(rates):,.0f}); "
                  f"goal >= {GOAL_RATE:,.0f}/s: {verdict}")
            path.unlink()


if __name__ == "__main__":
    main()
