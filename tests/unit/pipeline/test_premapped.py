"""Payloads mapped by the accepting process and stored for a delivery process to send as they are."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from pipeline_helpers import ScriptedSink, make_records
from tests.golden.goldens import CASES

from traceexport._json import json_form
from traceexport.errors import RecordError
from traceexport.mapping import BACKENDS, load_mapping
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.pipeline.ledger import payload_digest
from traceexport.pipeline.pipeline import Stager, enriches_of
from traceexport.pipeline.premapped import FORMAT, end_seconds, is_premapped, premapped_bytes, read_premapped
from traceexport.pipeline.spool import SpoolRow
from traceexport.records import Record, parse_records, record_from_obj
from traceexport.records.compact import record_from_compact
from traceexport.sinks.base import ExportResult, Payload
from traceexport.sinks.otlp_json import span_json
from traceexport.sinks.otlp_wire import span_bytes

FAST = PipelineSettings(fsync=False, poll_interval=0.01)


def _payloads(payloads: Sequence[Payload]) -> list[tuple[str, str, object]]:
    return [(p.kind, p.key, p.body) for p in payloads]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_stored_payloads_equal_what_each_backend_s_mapping_makes(case: Path) -> None:
    """Every golden case, mapped ahead for all four backends at once, reads back per backend as that mapping's
    own payloads, with the record's end time."""
    mappings = [load_mapping(backend) for backend in BACKENDS]
    for record in parse_records(case.read_bytes(), case.name):
        assert isinstance(record, Record)
        blob = premapped_bytes(record, mappings)
        assert blob is not None and is_premapped(blob)
        for mapping in mappings:
            found = read_premapped(blob, mapping.fingerprint)
            assert found is not None, mapping.backend
            assert _payloads(found.payloads) == _payloads(mapping.map(record)), mapping.backend
            assert found.end == end_seconds(record.data)


def test_not_a_number_and_big_integers_in_a_payload_survive_the_round_trip() -> None:
    """A NaN a mapping passes through comes back as NaN (not null), and nanosecond times stay integers."""

    class Passing:
        fingerprint = "passing"

        def map(self, record: Record) -> list[Payload]:
            return [Payload("span", {"score": float("nan"), "end": 2**63 + 5, "ratio": 0.5}, "k")]

    blob = premapped_bytes(make_records(1)[0], [Passing()])
    assert blob is not None
    found = read_premapped(blob, "passing")
    assert found is not None
    body = found.payloads[0].body
    assert math.isnan(body["score"]) and body["end"] == 2**63 + 5 and isinstance(body["end"], int)
    assert body["ratio"] == 0.5 and found.payloads[0].key == "k"


def test_a_mapping_that_cannot_map_the_record_or_has_no_fingerprint_leaves_it_to_delivery() -> None:
    """No form when a mapping refuses the record (the delivery process dead-letters it with the reason) or
    cannot say what it does."""

    class Refusing:
        fingerprint = "refusing"

        def map(self, record: Record) -> list[Payload]:
            raise RecordError("no")

    class Unnamed:
        fingerprint = None

        def map(self, record: Record) -> list[Payload]:
            return []

    record = make_records(1)[0]
    assert premapped_bytes(record, [load_mapping("otlp"), Refusing()]) is None
    assert premapped_bytes(record, [Unnamed()]) is None


def test_a_form_for_another_mapping_version_or_damaged_is_not_used() -> None:
    """Another mapping's fingerprint, another traceexport version's form, a compact form or garbage: None."""
    record = make_records(1)[0]
    otlp = load_mapping("otlp")
    blob = premapped_bytes(record, [otlp])
    assert blob is not None
    assert read_premapped(blob, load_mapping("opik").fingerprint) is None
    assert read_premapped(blob, None) is None
    assert read_premapped(blob.replace(FORMAT.encode(), b"traceexport-premapped/1/0.0.0"), otlp.fingerprint) is None
    assert read_premapped(b'{"format":"%s","mapped":[]}' % FORMAT.encode(), otlp.fingerprint) is None
    assert read_premapped(b"\x00not json", otlp.fingerprint) is None
    assert record_from_compact(blob, record.envelope_text()) is None  # a reader of compact forms parses instead


def test_fingerprints_are_equal_for_equal_mappings_only(tmp_path: Path) -> None:
    """Loading the same mapping twice gives one fingerprint; another backend, options or an override another."""
    override = tmp_path / "override.yaml"
    override.write_text("extends: builtin\nrecords:\n  message:\n    '*':\n      body:\n        name: chat\n",
                        encoding="utf-8")
    same = {load_mapping("otlp").fingerprint for _ in range(2)}
    assert len(same) == 1
    others = {load_mapping("opik").fingerprint, load_mapping("otlp", options={"send_content": False}).fingerprint,
              load_mapping("otlp", [override]).fingerprint}
    assert len(others) == 3 and not same & others


class Enricher:
    """A ``prepare`` hook changing workflow records only, and saying so."""

    def wants(self, record: Record) -> bool:
        return record.type == "workflow"

    def __call__(self, record: Record) -> None:
        return None


def _stager(prepare: object) -> Stager:
    routes = [Route(ScriptedSink("a"), load_mapping("otlp")), Route(ScriptedSink("b"), load_mapping("otlp"))]
    return Stager(routes, {"a": 0, "b": 1}, compact=True, local=False, enriches=enriches_of(prepare))  # type: ignore[arg-type]


def _samples() -> dict[str, Record]:
    records = [r for case in CASES for r in parse_records(case.read_bytes(), case.name)]
    return {r.type: r for r in records if isinstance(r, Record)}


def test_records_an_enricher_will_change_keep_the_compact_form() -> None:
    """With an enricher, the records it wants (workflow runs) are stored in their compact form, to be enriched
    then mapped by the delivery process; the others, and every record without an enricher, are mapped ahead
    (once for two sinks of one mapping). A hook that does not say which records it wants gets them all."""
    samples = _samples()
    for prepare, compact_types in ((None, set()), (Enricher(), {"workflow"}), (lambda r: None, set(samples))):
        stage = _stager(prepare)
        for record_type, record in samples.items():
            row = stage(record).row
            assert row is not None and row.compact is not None
            if record_type in compact_types:
                assert record_from_compact(row.compact, row.envelope) is not None, record_type
            else:
                found = read_premapped(row.compact, load_mapping("otlp").fingerprint)
                assert found is not None and row.compact.count(b'"mapped":{"') == 1, record_type


class KeepingSink(ScriptedSink):
    """A scripted sink that also keeps every payload it was given."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.payloads: list[Payload] = []

    def export(self, payloads: Sequence[Payload], /) -> ExportResult:
        self.payloads += payloads
        return super().export(payloads)


def test_a_worker_sends_stored_payloads_as_they_are_and_maps_only_without_them(tmp_path: Path) -> None:
    """A row whose stored payloads are for the worker's mapping is sent as stored (not mapped again: a marked
    body shows it); with payloads for another mapping only, the worker parses the envelope and maps it."""
    record = make_records(1)[0]
    mapping = load_mapping("otlp")
    stored = premapped_bytes(record, [mapping])
    assert stored is not None
    marked = stored.replace(b'"name":"', b'"name":"stored ', 1)
    other = premapped_bytes(record, [load_mapping("opik")])
    assert other is not None
    for name, blob, expect_marked in (("same", marked, True), ("other", other, False)):
        sink = KeepingSink(name)
        pipe = Pipeline(tmp_path / name, [Route(sink, mapping)], FAST)
        row = SpoolRow(1 << pipe.bits[name], record.key, record.type, record.app_id, record.trace_key,
                       record.envelope_text(), blob)
        pipe.spool.accept([row])
        worker = pipe.workers[0]
        outcome = worker.deliver(worker._collect(time.time()))
        pipe.close()
        assert [item.key for item in outcome.delivered] == [record.key]
        assert outcome.delivered[0].payload_hash is not None and outcome.delivered[0].end is not None
        names = [p.body["name"] for p in sink.payloads]
        assert any(n.startswith("stored ") for n in names) == expect_marked, name
        assert len(sink.payloads) == len(mapping.map(record_from_obj(record.envelope)))


def test_values_json_has_no_type_for_go_out_alike_from_stored_payloads(tmp_path: Path) -> None:
    """An override sending raw datetimes (alone, in a list, inside an object) as OTLP attributes: the stored
    payloads read back encode to the same protobuf and OTLP/JSON spans as the payloads mapped in place, and
    the ledger hashes them alike (a datetime goes out as ISO 8601 text either way)."""
    override = tmp_path / "times.yaml"
    override.write_text("extends: builtin\nrecords:\n  message:\n    span:\n      body:\n        attributes:\n"
                        "          my.start: $start_time\n          my.times: [$start_time, $end_time]\n"
                        "          my.derived: \"$derived | pick('start', 'end', 'app_id')\"\n", encoding="utf-8")
    mapping = load_mapping("otlp", [override])
    record = make_records(1)[0]
    direct = mapping.map(record)
    assert any(isinstance(p.body["attributes"].get("my.start"), datetime) for p in direct)
    blob = premapped_bytes(record, [mapping])
    assert blob is not None
    found = read_premapped(blob, mapping.fingerprint)
    assert found is not None
    assert [span_bytes(p.body) for p in found.payloads] == [span_bytes(p.body) for p in direct]
    assert [span_json(p.body) for p in found.payloads] == [span_json(p.body) for p in direct]
    assert payload_digest(found.payloads) == payload_digest(direct)
    start = next(p for p in direct if "my.start" in p.body["attributes"]).body["attributes"]["my.start"]
    assert json_form(start) == start.isoformat().replace("+00:00", "Z")


class CountingEnricher(Enricher):
    """:class:`Enricher`, keeping the key of every record it was asked to enrich."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, record: Record) -> None:
        self.asked.append(record.key)


def test_payloads_mapped_where_no_enricher_ran_are_not_sent_by_a_worker_that_enriches(tmp_path: Path) -> None:
    """A workflow run mapped ahead by a process without an enricher (a spool written before `enrich` was
    configured, or a command without it handing records to a daemon with it) is enriched and mapped again by
    a worker with an enricher, not sent without its node spans; one mapped by a process whose enricher passed
    it over is sent as stored."""
    record = _samples()["workflow"]
    mapping = load_mapping("otlp")
    for name, writer, expect_asked in (("unenriched", None, True), ("passed_over", Enricher(), False)):
        row = Stager([Route(ScriptedSink(name), mapping)], {name: 0}, compact=True, local=False,
                     enriches=enriches_of(writer))(record).row
        assert row is not None and row.compact is not None
        if writer is not None:  # what an enricher that does not want the record stores: the payloads
            row = SpoolRow(row.mask, row.key, row.type, row.app_id, row.trace_key, row.envelope,
                           premapped_bytes(record, [mapping], enricher=True))
        assert read_premapped(row.compact or b"", mapping.fingerprint) is not None  # a reader without one uses it
        enricher = CountingEnricher()
        pipe = Pipeline(tmp_path / name, [Route(KeepingSink(name), mapping)], FAST, prepare=enricher)
        pipe.spool.accept([row])
        worker = pipe.workers[0]
        outcome = worker.deliver(worker._collect(time.time()))
        pipe.close()
        assert [item.key for item in outcome.delivered] == [record.key], name
        assert enricher.asked == ([record.key] if expect_asked else []), name
