"""Mapping throughput: the declarative engine against hand-written Python, per record type and mixed.

Run ``python bench/bench_mapping.py [--seconds S] [--records N] [--rounds R]``. Single-threaded.

* The stream is built from the sample records (tests/data/samples, else ../shared/dify/samples): N/7
  copies of each of the seven community types, every UUID in a copy replaced by a fresh one (the same
  replacement across the copy's records, so a message and its tool/retrieval records still share ids).
* Records are parsed once, outside the timed loops. The id caches in ``traceexport.mapping.ids`` are
  cleared before every timed pass, so a pass sees each id once, as a live stream would.
* Every round measures every path for the engine and the hand-written code back to back (order
  alternating per round) for at least S seconds each; rates and ratios are medians over the rounds.
  ratio = engine time per record / hand-written time per record, measured in the same round.
* Parse + normalise (``parse_records`` from envelope bytes) is measured separately.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handwritten  # bench/ is not a package: found through the sys.path entry above
from traceexport.mapping import ids, load_mapping
from traceexport.records import parse_records
from traceexport.records.parse import Record
from traceexport.records.types import COMMUNITY_TYPES

GOAL_RATE = 20_000.0
GOAL_RATIO = 1.5
_ROOT = Path(__file__).resolve().parents[1]
_SAMPLE_DIRS = (_ROOT / "tests" / "data" / "samples", _ROOT.parent / "shared" / "dify" / "samples")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Mapper = Callable[[Record], Any]


def sample_texts() -> list[str]:
    """The raw JSON of one sample per community record type (node-execution files left out)."""
    for folder in _SAMPLE_DIRS:
        files = sorted(p for p in folder.glob("*.json") if "node_executions" not in p.name)
        if files:
            return [p.read_text(encoding="utf-8") for p in files]
    sys.exit(f"no sample records found in {' or '.join(str(d) for d in _SAMPLE_DIRS)}")


def envelope_stream(texts: Sequence[str], copies: int, seed: int = 7) -> list[bytes]:
    """``copies`` rounds of the samples as compact JSON envelopes, each round with its own fresh UUIDs."""
    rng = random.Random(seed)
    originals = [json.dumps(json.loads(t), ensure_ascii=False, separators=(",", ":")) for t in texts]
    out: list[bytes] = []
    for _ in range(copies):
        fresh: dict[str, str] = {}

        def renew(match: re.Match[str], fresh: dict[str, str] = fresh) -> str:
            if match.group() not in fresh:
                fresh[match.group()] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            return fresh[match.group()]

        out.extend(_UUID.sub(renew, text).encode("utf-8") for text in originals)
    return out


def parse_all(envelopes: Sequence[bytes]) -> list[Record]:
    records: list[Record] = []
    for raw in envelopes:
        for item in parse_records(raw):
            if not isinstance(item, Record):
                sys.exit(f"sample does not parse: {item}")
            records.append(item)
    return records


def _clear_id_caches() -> None:
    ids.span_id_hex.cache_clear()
    ids._uuid7.cache_clear()
    ids._uuid_bytes.cache_clear()


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def time_pass(function: Callable[[Any], Any], items: Sequence[Any], seconds: float) -> float:
    """Seconds per item: whole passes over ``items`` until ``seconds`` of timed work are done."""
    gc.collect()
    spent, done = 0.0, 0
    while spent < seconds or done == 0:
        _clear_id_caches()
        start = clock()
        for item in items:
            function(item)
        spent += clock() - start
        done += len(items)
    return spent / done


def compare(paths: dict[str, list[Record]], pairs: dict[str, tuple[Mapper, Mapper]], rounds: int,
            seconds: float) -> list[tuple[str, float, float, float]]:
    """``(path, engine rec/s, hand-written rec/s, ratio)`` per backend and path, medians over rounds."""
    samples: dict[str, list[tuple[float, float]]] = {}
    for round_no in range(rounds):
        for backend, (engine, hand) in pairs.items():
            for name, records in paths.items():
                order = [(0, engine), (1, hand)] if round_no % 2 == 0 else [(1, hand), (0, engine)]
                times = [0.0, 0.0]
                for slot, function in order:
                    times[slot] = time_pass(function, records, seconds)
                samples.setdefault(f"{backend} {name}", []).append((times[0], times[1]))
    rows = []
    for path, per_round in samples.items():
        engine_rate = statistics.median(1 / e for e, _ in per_round)
        hand_rate = statistics.median(1 / h for _, h in per_round)
        ratio = statistics.median(e / h for e, h in per_round)
        rows.append((path, engine_rate, hand_rate, ratio))
    return rows


def parse_rates(envelopes: dict[str, list[bytes]], rounds: int, seconds: float) -> dict[str, float]:
    """Records per second of ``parse_records`` (JSON, validation, normalisation) from envelope bytes."""
    def parse_one(raw: bytes) -> None:
        for _ in parse_records(raw):
            pass

    return {name: statistics.median(1 / time_pass(parse_one, items, seconds) for _ in range(rounds))
            for name, items in envelopes.items()}


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(rows: list[tuple[str, float, float, float]], parsing: dict[str, float]) -> None:
    print(f"{'path':<32}{'engine rec/s':>14}{'hand rec/s':>14}{'ratio':>8}")
    for path, engine_rate, hand_rate, ratio in rows:
        print(f"{path:<32}{engine_rate:>14,.0f}{hand_rate:>14,.0f}{ratio:>8.2f}")
    print(f"\n{'parse + normalise (from bytes)':<32}{'rec/s':>14}")
    for name, rate in parsing.items():
        print(f"{name:<32}{rate:>14,.0f}")
    print()
    for path, engine_rate, _, ratio in rows:
        if path.endswith(" mixed"):
            ends = 1 / (1 / engine_rate + 1 / parsing["mixed"])
            print(f"goal {path}: {engine_rate:,.0f} rec/s (>= {GOAL_RATE:,.0f}: {_verdict(engine_rate >= GOAL_RATE)}),"
                  f" ratio {ratio:.2f} (<= {GOAL_RATIO}: {_verdict(ratio <= GOAL_RATIO)});"
                  f" parse + map {ends:,.0f} rec/s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=3500, help="records in the mixed stream (default 3500)")
    parser.add_argument("--seconds", type=float, default=0.25, help="minimum timed seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: time.perf_counter (default); cpu: process CPU time, for a busy machine")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    texts = sample_texts()
    envelopes = envelope_stream(texts, max(1, args.records // len(texts)))
    records = parse_all(envelopes)
    by_type: dict[str, list[Record]] = {t: [r for r in records if r.type == t] for t in COMMUNITY_TYPES}
    paths = {**{t: rs for t, rs in by_type.items() if rs}, "mixed": records}
    pairs: dict[str, tuple[Mapper, Mapper]] = {backend: (load_mapping(backend).map, builder)
             for backend, builder in (("otlp", handwritten.otlp_payloads), ("opik", handwritten.opik_payloads))}
    for engine, hand in pairs.values():  # warm up, and fail early if the baseline went stale
        for record in records[: len(texts)]:
            if [(p.kind, p.key, p.body) for p in engine(record)] != [(p.kind, p.key, p.body) for p in hand(record)]:
                sys.exit(f"bench/handwritten.py differs from the mapping for {record.type}: update it")
    print(f"{len(records)} records ({len(records) // len(texts)} per type), {args.rounds} rounds, "
          f">= {args.seconds}s of {args.clock} time per measurement, Python {sys.version.split()[0]}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if args.clock == "wall" and load > cores:
        print(f"note: load average {load:.1f} on {cores} cores; wall-clock rates are understated (try --clock cpu)")
    print()
    rows = compare(paths, pairs, args.rounds, args.seconds)
    raw_by_type = {t: [raw for raw, r in zip(envelopes, records, strict=True) if r.type == t] for t in by_type}
    parsing = parse_rates({**{t: rs for t, rs in raw_by_type.items() if rs}, "mixed": envelopes}, args.rounds,
                          args.seconds)
    report(rows, parsing)


if __name__ == "__main__":
    main()
