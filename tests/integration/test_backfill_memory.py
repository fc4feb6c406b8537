"""``traceexport backfill`` of workflow runs with thousands of node rows each, from a real PostgreSQL: memory
stays bounded by the page's and the batch's size, not by how many nodes the runs have, with delivery in a
second process and in the command's own."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from tests.support.dify_tables import add_wide_runs, create_dify_tables
from tests.support.postgres_server import PostgresServer, running_or_skip
from tests.support.processes import python_env, run_measuring_peak_rss

from traceexport.difydb import DifyReader, inspect
from traceexport.difydb.reader import Window

pytestmark = pytest.mark.integration

RUNS, NODES = 60, 2000  # 120,000 node rows, about 2 KB of text each: 1 GB per process before the bounds
PEAK_LIMIT_MB = 500  # measured after them: about 180 MB (the command) and 130 MB (its delivery process)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[PostgresServer, str]]:
    """A PostgreSQL with the tables backfill reads and one app of wide workflow runs; the app's id."""
    with running_or_skip() as pg:
        with pg.admin() as conn:
            create_dify_tables(conn)
            app = add_wide_runs(conn, runs=RUNS, nodes=NODES)
        yield pg, app


def _run_within_the_limit(argv: list[str], tmp_path: Path) -> str:
    """Run ``argv`` (its file sink writing under ``tmp_path/out``); its standard error, once it exited 0 without
    passing :data:`PEAK_LIMIT_MB` in any of its processes."""
    code, peak, errors = run_measuring_peak_rss(
        argv, env=python_env({"TRACEEXPORT_FILE_SINK_DIR": str(tmp_path / "out")}))
    assert code == 0, errors
    assert peak < PEAK_LIMIT_MB * 1024**2, f"peak RSS {peak / 1024**2:.0f} MB"
    return errors


def _lines_written(tmp_path: Path) -> int:
    """The payloads the file sink wrote under ``tmp_path/out``."""
    return sum(len(f.read_bytes().splitlines()) for f in (tmp_path / "out").iterdir())


def test_wide_runs_are_backfilled_in_bounded_memory(server: tuple[PostgresServer, str], tmp_path: Path) -> None:
    """Sixty runs of 2,000 node rows each are all delivered while neither the command nor its delivery
    process grows past a few hundred MB (before, the whole page's nodes were read at once and a delivery
    batch held every record: about 1 GB each)."""
    pg, app = server
    argv = [sys.executable, "-m", "traceexport", "backfill", "--dify-db", pg.url(), "--apps", app, "--since",
            "2026-10-01", "--until", "2026-12-01", "--to", "file", "--spool", str(tmp_path / "spool"),
            "--no-progress"]
    errors = _run_within_the_limit(argv, tmp_path)
    assert f"backfill: {RUNS} records accepted" in errors


def test_wide_runs_are_delivered_in_bounded_memory_in_one_process(server: tuple[PostgresServer, str],
                                                                   tmp_path: Path) -> None:
    """With ``spool.delivery_process: false`` the delivery threads read the node rows themselves: the sixty
    wide runs are all delivered, every node span, while the one process stays within a few hundred MB (before,
    a batch read every run's rows at once and held all their spans until it sent them: about 900 MB)."""
    pg, app = server
    config = tmp_path / "config.yaml"
    config.write_text(f"spool:\n  dir: {tmp_path / 'spool'}\n  delivery_process: false\n", encoding="utf-8")
    argv = [sys.executable, "-m", "traceexport", "backfill", "--config", str(config), "--dify-db", pg.url(),
            "--apps", app, "--since", "2026-10-01", "--until", "2026-12-01", "--to", "file", "--no-progress"]
    errors = _run_within_the_limit(argv, tmp_path)
    assert f"backfill: {RUNS} records accepted" in errors
    assert _lines_written(tmp_path) == RUNS * (NODES + 1)


def test_wide_live_records_are_delivered_in_bounded_memory(server: tuple[PostgresServer, str],
                                                          tmp_path: Path) -> None:
    """Records of wide runs as Dify sends them live (no nodes: ``replay`` of their files, as ``serve`` gets
    them) are enriched by the delivery process, which reads and sends a batch's runs a part at a time: every
    node span is delivered and no process passes a few hundred MB (before, about 900 MB in the delivery
    process)."""
    pg, app = server
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        reader = DifyReader(conn, inspect(conn))
        lines = [record.envelope_text() for page in reader.pages(Window(apps=(app,), types=frozenset({"workflow"})))
                 for record in page.records]
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"spool:\n  dir: {tmp_path / 'spool'}\n  delivery_process: true\n"
                      f"enrich:\n  database_url: {pg.url()}\n", encoding="utf-8")
    argv = [sys.executable, "-m", "traceexport", "replay", "--config", str(config), "--to", "file", "--no-progress",
            str(records)]
    errors = _run_within_the_limit(argv, tmp_path)
    assert f"{RUNS} sent to the spool" in errors
    assert _lines_written(tmp_path) == RUNS * (NODES + 1)


@pytest.mark.parametrize(("page_nodes", "sizes"), [(4500, [2] * (RUNS // 2)), (1000, [1] * RUNS),
                                                   (10**9, [RUNS])])
def test_a_page_of_runs_stays_within_its_node_rows(server: tuple[PostgresServer, str], page_nodes: int,
                                                    sizes: list[int]) -> None:
    """The reader ends a page of workflow runs before the run that would take it past its node-row bound,
    a run above the bound alone makes a page, and every run is read once, in order."""
    pg, app = server
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        reader = DifyReader(conn, inspect(conn), page_nodes=page_nodes, page_node_bytes=10**12)
        pages = list(reader.pages(Window(apps=(app,), types=frozenset({"workflow"}))))
        ids = [r[0] for r in conn.execute("SELECT id::text FROM workflow_runs WHERE app_id = %s "
                                          "ORDER BY created_at, id", [app]).fetchall()]
    assert [page.rows for page in pages] == sizes
    assert [record.data["workflow_run_id"] for page in pages for record in page.records] == ids
    assert [page.position.id for page in pages if page.position] == [ids[sum(sizes[:i + 1]) - 1]
                                                                      for i in range(len(sizes))]


def test_a_page_of_runs_stays_within_the_bytes_of_its_node_rows(server: tuple[PostgresServer, str]) -> None:
    """The same bound holds for the bytes of the node rows' text: a page ends before it passes them."""
    pg, app = server
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        per_run = conn.execute(
            "SELECT sum(octet_length(inputs) + octet_length(outputs) + octet_length(execution_metadata)) "
            "FROM workflow_node_executions WHERE workflow_run_id = (SELECT id FROM workflow_runs WHERE app_id = %s "
            "ORDER BY created_at, id LIMIT 1)", [app]).fetchone()[0]
        reader = DifyReader(conn, inspect(conn), page_node_bytes=int(per_run * 3.5))
        pages = list(reader.pages(Window(apps=(app,), types=frozenset({"workflow"}))))
    assert [page.rows for page in pages] == [3] * (RUNS // 3)
