"""The workflow node enricher against a real PostgreSQL holding Dify's ``workflow_node_executions``."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import NODE_ROWS
from tests.support.postgres_server import (
    PostgresServer,
    create_node_table,
    create_readonly_role,
    insert_rows,
    running_or_skip,
)

from traceexport.enrich import ENV_DATABASE_URL, build_enricher, enrich_settings, postgres
from traceexport.enrich.postgres import PostgresEnricher, enriched
from traceexport.errors import ConfigError
from traceexport.records import Record, record_from_obj
from traceexport.records.compact import compact_bytes, record_from_compact

SAMPLES = Path(__file__).parents[1] / "data" / "samples"
RO_ROLE, RO_PASSWORD = "traceexport_ro", "ro-Secret-42"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the module, with Dify's table and the README's read-only role."""
    with running_or_skip() as pg:
        with pg.admin() as conn:
            create_node_table(conn)
            create_readonly_role(conn, RO_ROLE, RO_PASSWORD)
        yield pg


@pytest.fixture
def db(server: PostgresServer) -> PostgresServer:
    """The server with an empty node table."""
    with server.admin() as conn:
        conn.execute("TRUNCATE workflow_node_executions")
    return server


def _sample_record() -> Record:
    return record_from_obj(json.loads((SAMPLES / "01-workflow-ok.json").read_text(encoding="utf-8")))


def _sample_rows() -> list[dict[str, Any]]:
    return list(json.loads((NODE_ROWS / "01-workflow-ok.node_executions.json").read_text(encoding="utf-8")))


@pytest.fixture(autouse=True)
def _close_enrichers() -> Iterator[None]:
    """Every enricher a test builds is closed after it."""
    yield
    while _OPEN:
        _OPEN.pop().close()


_OPEN: list[PostgresEnricher] = []


def _enricher(url: str, clock: FakeClock, record: Record | None = None, **options: Any) -> PostgresEnricher:
    """An enricher on ``url`` whose wall clock stands at the record's end (a fresh record, not a replay)."""
    now: Any = {"now": (lambda: record.data["derived"]["end"])} if record is not None else {}
    enricher = build_enricher({"database_url": url, **options}, environ={}, clock=clock, **now)
    _OPEN.append(enricher)
    return enricher


@pytest.mark.integration
def test_sample_run_is_enriched_with_its_five_nodes(db: PostgresServer) -> None:
    """Sample 01's rows, read through the read-only role, become five nodes with kinds, model, cost, times;
    the enricher wants the run until then (and never a message record), so the pipeline maps it only after."""
    with db.admin() as conn:
        insert_rows(conn, _sample_rows())
    record, clock = _sample_record(), FakeClock()
    enricher = _enricher(db.url(RO_ROLE, RO_PASSWORD), clock, record)
    message = record_from_obj(json.loads((SAMPLES / "05-message-chat.json").read_text(encoding="utf-8")))
    assert enricher.wants(record) and not enricher.wants(message)
    assert enricher(record) is None
    assert not enricher.wants(record)
    derived = record.data["derived"]
    nodes = derived["nodes"]
    assert [n["kind"] for n in nodes] == ["chain", "retriever", "llm", "tool", "chain"]
    llm = nodes[2]
    assert (llm["model"], llm["provider"]) == ("gpt-4o-mini", "openai")
    assert (llm["input_tokens"], llm["output_tokens"], llm["total_tokens"]) == (1590, 283, 1873)
    assert llm["cost"] == pytest.approx(0.0004083) and llm["currency"] == "USD"
    assert llm["id"] == "5622ec1a-51ad-41e6-a698-aaef14f29c25"
    assert llm["start"].isoformat() == "2026-03-14T09:21:08.079225+00:00"
    assert llm["duration_ms"] == pytest.approx(3604.519)
    assert derived["nodes_missing"] is False and derived["nodes_incomplete"] is False
    assert enricher.metrics()["records_enriched"] == 1 and enricher.metrics()["nodes_attached"] == 5


@pytest.mark.integration
def test_session_is_read_only_with_a_statement_timeout(db: PostgresServer) -> None:
    """The enricher's session refuses writes and carries the configured statement timeout."""
    record = _sample_record()
    enricher = _enricher(db.url(), FakeClock(), record, statement_timeout="1500ms")
    enricher(record)
    conn = enricher._reader._connection()  # the reader's own session, inspected, not patched
    assert conn.execute("SHOW default_transaction_read_only").fetchone()["default_transaction_read_only"] == "on"
    assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "1500ms"
    with pytest.raises(Exception, match="read-only"):
        conn.execute("DELETE FROM workflow_node_executions")


@pytest.mark.integration
def test_late_rows_are_waited_for_then_attached(db: PostgresServer) -> None:
    """The record arrives before its rows: a delay comes back, and once rows are committed the nodes appear."""
    record, clock = _sample_record(), FakeClock()
    enricher = _enricher(db.url(RO_ROLE, RO_PASSWORD), clock, record)
    first = enricher(record)
    assert first is not None and 0 < first <= 60
    assert "nodes" not in record.data["derived"]
    clock.now += first
    rows = _sample_rows()
    with db.admin() as conn:
        insert_rows(conn, rows[:3])  # the end node is not committed yet
    second = enricher(record)
    assert second is not None and second > first  # backoff grows
    clock.now += second
    with db.admin() as conn:
        insert_rows(conn, rows[3:])
    assert enricher(record) is None
    assert len(record.data["derived"]["nodes"]) == 5
    metrics = enricher.metrics()
    assert metrics["retries_scheduled"] == 2 and metrics["nodes_missing"] == 0 and metrics["pending"] == 0


@pytest.mark.integration
def test_running_rows_are_not_final(db: PostgresServer) -> None:
    """A node still ``running`` makes the enricher wait until Dify writes its final status."""
    rows = _sample_rows()
    rows[-1] = rows[-1] | {"status": "running"}
    with db.admin() as conn:
        insert_rows(conn, rows)
    record, clock = _sample_record(), FakeClock()
    enricher = _enricher(db.url(RO_ROLE, RO_PASSWORD), clock, record)
    assert enricher(record) is not None
    with db.admin() as conn:
        conn.execute("UPDATE workflow_node_executions SET status = 'succeeded'")
    assert enricher(record) is None and len(record.data["derived"]["nodes"]) == 5


@pytest.mark.integration
def test_past_the_bound_the_record_goes_without_nodes(db: PostgresServer) -> None:
    """When no rows come within max_wait, the record exports flagged nodes_missing and is counted."""
    record, clock = _sample_record(), FakeClock()
    enricher = _enricher(db.url(RO_ROLE, RO_PASSWORD), clock, record, max_wait=10)
    while (delay := enricher(record)) is not None:
        assert delay <= 10
        clock.now += delay
    assert clock.now - 1000.0 >= 10
    derived = record.data["derived"]
    assert derived["nodes"] == [] and derived["nodes_missing"] is True
    assert enricher.metrics()["nodes_missing"] == 1 and enricher.metrics()["pending"] == 0


@pytest.mark.integration
def test_old_record_is_not_held_back(db: PostgresServer) -> None:
    """A run that ended longer ago than max_wait (a replay) is exported at once when it has no rows."""
    record = _sample_record()
    enricher = _enricher(db.url(), FakeClock())
    assert enricher(record) is None and record.data["derived"]["nodes_missing"] is True


@pytest.mark.integration
def test_partial_rows_past_the_bound_are_kept_and_flagged(db: PostgresServer) -> None:
    """Rows that never complete are attached after the bound, flagged nodes_incomplete."""
    with db.admin() as conn:
        insert_rows(conn, _sample_rows()[:2])
    record, clock = _sample_record(), FakeClock()
    enricher = _enricher(db.url(), clock, record, max_wait=5)
    assert enricher(record) is not None
    clock.now += 6
    assert enricher(record) is None
    derived = record.data["derived"]
    assert len(derived["nodes"]) == 2 and derived["nodes_incomplete"] is True and not derived["nodes_missing"]
    assert enricher.metrics()["nodes_incomplete"] == 1


@pytest.mark.integration
def test_other_tenants_rows_and_draft_runs_are_ignored(db: PostgresServer) -> None:
    """Only rows of the record's tenant and app, triggered from a workflow run, are read."""
    rows = _sample_rows()
    other_tenant = [r | {"id": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4())} for r in rows]
    debugging = [r | {"id": str(uuid.uuid4()), "triggered_from": "single-step"} for r in rows]
    with db.admin() as conn:
        insert_rows(conn, rows + other_tenant + debugging)
    record = _sample_record()
    enricher = _enricher(db.url(), FakeClock(), record)
    assert enricher(record) is None and len(record.data["derived"]["nodes"]) == 5


@pytest.mark.integration
def test_other_sinks_reuse_the_read(db: PostgresServer) -> None:
    """A second sink preparing the same run gets the nodes without another query; non-workflow records pass."""
    with db.admin() as conn:
        insert_rows(conn, _sample_rows())
    record, twin = _sample_record(), _sample_record()
    enricher = _enricher(db.url(), FakeClock(), record)
    assert enricher(record) is None and enricher(twin) is None
    assert len(twin.data["derived"]["nodes"]) == 5 and enricher.metrics()["queries"] == 1
    message = record_from_obj(json.loads((SAMPLES / "05-message-chat.json").read_text(encoding="utf-8")))
    assert enricher(message) is None and "nodes" not in message.data["derived"]


def _three_runs_stored(db: PostgresServer) -> list[Any]:
    """Three workflow-run records, each with the sample's node rows stored under its own run id."""
    rows, records = [], []
    for _ in range(3):
        run_id = str(uuid.uuid4())
        rows += [r | {"id": str(uuid.uuid4()), "workflow_run_id": run_id} for r in _sample_rows()]
        record = _sample_record()
        record.data["workflow_run_id"] = run_id
        records.append(record)
    with db.admin() as conn:
        insert_rows(conn, rows)
    return records


@pytest.mark.integration
def test_a_batch_reads_its_runs_in_one_query(db: PostgresServer) -> None:
    """Read-ahead fetches three runs' rows in one query; each run then gets exactly the nodes a lone read gives."""
    records = _three_runs_stored(db)
    enricher = _enricher(db.url(RO_ROLE, RO_PASSWORD), FakeClock(), records[0])
    enricher.prefetch([*records, _sample_record()])  # the sample's own run has no rows: read ahead as none
    assert enricher.metrics()["queries"] == 1
    assert all(enricher(record) is None for record in records)
    assert enricher.metrics()["queries"] == 1
    lone = _sample_record()
    lone.data["workflow_run_id"] = records[1].data["workflow_run_id"]
    _enricher(db.url(), FakeClock(), lone)(lone)
    assert records[1].data["derived"]["nodes"] == lone.data["derived"]["nodes"]
    assert {n["id"] for n in records[2].data["derived"]["nodes"]}.isdisjoint(
        n["id"] for n in records[1].data["derived"]["nodes"])


@pytest.mark.integration
def test_a_batch_is_cut_into_parts_bounded_by_the_node_rows_of_its_runs(db: PostgresServer,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``parts`` counts the batch's node rows in one query and ends a part before the run that would take it past
    the rows (or bytes) read ahead at once, at least one run a part; a record with nothing to read (a message, a
    run without rows) joins the part before it, and the parts cover the batch in order."""
    records = _three_runs_stored(db)
    message = record_from_obj(json.loads((SAMPLES / "05-message-chat.json").read_text(encoding="utf-8")))
    batch = [records[0], message, records[1], records[2], _sample_record()]
    monkeypatch.setattr(postgres, "PART_NODES", 12)  # two runs of the sample's five nodes, not three
    enricher = _enricher(db.url(RO_ROLE, RO_PASSWORD), FakeClock(), records[0])
    assert enricher.parts(batch) == [3, 2] and enricher.metrics()["queries"] == 1
    monkeypatch.setattr(postgres, "PART_NODE_BYTES", 1)  # every run's text is past it: a run a part
    assert enricher.parts(batch) == [2, 1, 2]
    assert enricher.parts(batch[:2]) == [2] and enricher.metrics()["queries"] == 2  # one run: nothing to count


@pytest.mark.integration
def test_a_batch_whose_rows_cannot_be_counted_is_read_a_record_at_a_time() -> None:
    """With the database down, ``parts`` leaves one record a part (each then asks on its own, as when the
    read-ahead fails), so a batch is never read whole unbounded."""
    records = [_sample_record(), _sample_record()]
    records[1].data["workflow_run_id"] = str(uuid.uuid4())
    url = f"postgresql://traceexport_ro:{RO_PASSWORD}@127.0.0.1:{_closed_port()}/dify"
    assert _enricher(url, FakeClock(), records[0]).parts(records) == [1, 1]


@pytest.mark.integration
def test_the_cache_holds_a_bounded_number_of_nodes(db: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Node lists kept for the other sinks are bounded by their nodes, not only by their runs (a run of a
    long agent has thousands): past the bound the oldest run's nodes are read again, the newest are not."""
    monkeypatch.setattr(postgres, "_CACHE_NODES", 12)  # two runs of the sample's five nodes, not three
    records = _three_runs_stored(db)
    enricher = _enricher(db.url(), FakeClock(), records[0])
    assert all(enricher(record) is None for record in records) and enricher.metrics()["queries"] == 3
    newest, oldest = _sample_record(), _sample_record()
    newest.data["workflow_run_id"] = records[2].data["workflow_run_id"]
    oldest.data["workflow_run_id"] = records[0].data["workflow_run_id"]
    assert enricher(newest) is None and enricher.metrics()["queries"] == 3
    assert enricher(oldest) is None and enricher.metrics()["queries"] == 4
    assert len(oldest.data["derived"]["nodes"]) == 5


@pytest.mark.integration
def test_a_record_enriched_before_it_was_spooled_is_not_read_again(db: PostgresServer) -> None:
    """Nodes attached by the process that spooled the record (backfill) come back through the compact form, and
    the delivery process's enricher neither reads ahead nor queries for them; an unenriched twin still is."""
    with db.admin() as conn:
        insert_rows(conn, _sample_rows())
    record = _sample_record()
    assert _enricher(db.url(), FakeClock(), record)(record) is None
    stored = record_from_compact(compact_bytes(record), record.envelope_text())
    assert stored is not None and enriched(stored.data)
    delivery = _enricher(db.url(), FakeClock(), record)
    delivery.prefetch([stored])
    assert delivery(stored) is None and delivery.metrics()["queries"] == 0
    assert stored.data["derived"]["nodes"] == record.data["derived"]["nodes"]
    twin = _sample_record()
    assert not enriched(twin.data)
    delivery.prefetch([twin])
    assert delivery(twin) is None and delivery.metrics()["queries"] == 1 and len(twin.data["derived"]["nodes"]) == 5


def _iteration_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    base = {k: run[k] for k in ("tenant_id", "app_id", "workflow_id", "workflow_run_id", "created_by")}
    base |= {"triggered_from": "workflow-run", "created_by_role": "end_user", "status": "succeeded"}

    def row(
        index: int, node_id: str, node_type: str, second: int, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return base | {
            "id": str(uuid.uuid4()), "index": index, "node_id": node_id, "node_type": node_type,
            "title": node_id, "elapsed_time": 0.5, "created_at": f"2026-03-14T09:21:{second:02d}",
            "execution_metadata": meta, "node_execution_id": str(uuid.uuid4()),
        }  # fmt: skip

    return [
        row(1, "start", "start", 7),
        row(2, "each-clause", "iteration", 8),
        row(3, "classify", "llm", 8, {"iteration_id": "each-clause", "iteration_index": 0}),
        row(4, "classify", "llm", 9, {"iteration_id": "each-clause", "iteration_index": 1}),
        row(5, "end", "end", 11),
    ]


@pytest.mark.integration
def test_iteration_children_nest_under_the_iteration(db: PostgresServer) -> None:
    """Rows of an iteration's body get the iteration node's row id as parent_id."""
    rows = _iteration_rows(_sample_rows()[0])
    with db.admin() as conn:
        insert_rows(conn, rows)
    record = _sample_record()
    assert _enricher(db.url(), FakeClock(), record)(record) is None
    nodes = record.data["derived"]["nodes"]
    iteration_id = rows[1]["id"]
    assert [n["parent_id"] for n in nodes] == [None, None, iteration_id, iteration_id, None]
    assert [n["iteration_index"] for n in nodes[2:4]] == [0, 1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_down_never_stops_export(caplog: pytest.LogCaptureFixture) -> None:
    """With nothing listening, the enricher retries within the bound, then exports flagged, logging no password."""
    record, clock = _sample_record(), FakeClock()
    url = f"postgresql://traceexport_ro:{RO_PASSWORD}@127.0.0.1:{_closed_port()}/dify"
    enricher = _enricher(url, clock, record, max_wait=20, connect_timeout=2)
    delays = []
    with caplog.at_level(logging.WARNING, logger="traceexport.enrich"):
        while (delay := enricher(record)) is not None:
            delays.append(delay)
            clock.now += delay
    assert delays and record.data["derived"]["nodes_missing"] is True
    assert enricher.metrics()["database_errors"] >= 1 and enricher.metrics()["nodes_missing"] == 1
    assert caplog.records and RO_PASSWORD not in caplog.text
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1  # rate-limited


def test_settings_list_every_problem_without_the_url() -> None:
    """A bad enrich section reports each key path; the URL comes from the environment when not configured."""
    with pytest.raises(ConfigError) as caught:
        enrich_settings({"max_wait": "soon", "colour": "red"}, environ={})
    text = str(caught.value)
    assert "enrich.max_wait" in text and "enrich.colour" in text and "enrich.database_url" in text
    assert ENV_DATABASE_URL in text
    secret_url = f"postgresql://ro:{RO_PASSWORD}@db:5432/dify"
    settings = enrich_settings({"enrich": {"max_wait": "2m"}}, environ={ENV_DATABASE_URL: secret_url})
    assert settings.max_wait == 120.0 and settings.database_url == secret_url
    assert RO_PASSWORD not in repr(settings) and settings.describe_target() == "postgresql://ro@db:5432/dify"


def test_settings_accept_the_config_model() -> None:
    """The daemon's EnrichConfig (database_url as a SecretStr, other keys as extras) is accepted."""
    config_mod = pytest.importorskip("traceexport.config")
    section = config_mod.EnrichConfig(database_url="postgresql://ro:pw@db:5432/dify", max_wait=30)
    settings = enrich_settings(section, environ={})
    assert settings.database_url == "postgresql://ro:pw@db:5432/dify" and settings.max_wait == 30.0


def test_unconfigured_build_fails_with_a_config_error() -> None:
    """Building without any database URL is a ConfigError naming the key and the variable."""
    with pytest.raises(ConfigError, match=ENV_DATABASE_URL):
        build_enricher({}, environ={})


@pytest.mark.integration
def test_a_run_id_the_database_rejects_is_not_retried(db: PostgresServer) -> None:
    """A workflow_run_id that is not a uuid exports at once without nodes instead of waiting for the bound."""
    envelope = json.loads((SAMPLES / "01-workflow-ok.json").read_text(encoding="utf-8"))
    envelope["trace_info"]["workflow_run_id"] = "not-a-uuid"
    record = record_from_obj(envelope)
    enricher = _enricher(db.url(), FakeClock(), record)
    assert enricher(record) is None and record.data["derived"]["nodes_missing"] is True
    assert enricher.metrics()["retries_scheduled"] == 0 and enricher.metrics()["database_errors"] == 1
    with db.admin() as conn:
        insert_rows(conn, _sample_rows())
    good = _sample_record()
    assert enricher(good) is None and len(good.data["derived"]["nodes"]) == 5  # the session survived
