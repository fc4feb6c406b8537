"""``traceexport backfill`` and ``audit`` refuse what they cannot read with one line: bad URLs, refused logins,
a database that is not Dify's, bad flags — never a traceback. (Dify's own schema: tests/realdify/.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.net import free_port
from tests.support.postgres_server import PostgresServer, running_or_skip
from tests.support.processes import python_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A PostgreSQL whose database holds no Dify tables."""
    with running_or_skip() as pg:
        yield pg


def backfill(tmp_path: Path, *args: str, command: str = "backfill") -> subprocess.CompletedProcess[str]:
    """Run the command with the file sink and a spool of the test's own."""
    return subprocess.run([sys.executable, "-m", "traceexport", command, *args, "--to", "file", "--spool",
                           str(tmp_path / "spool")],
                          env=python_env({"TRACEEXPORT_FILE_SINK_DIR": str(tmp_path / "out")}),
                          capture_output=True, text=True, timeout=60, check=False)


def assert_one_line(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2 with a single stderr line holding every fragment."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--dify-db", "mysql://u:p@127.0.0.1/dify"], ["not a PostgreSQL URL", "u:***@"]),
    (["--dify-db", "postgresql://u:secret-pw@127.0.0.1:{port}/dify"], ["cannot connect", "u:***@"]),
    ([], ["no Dify database", "TRACEEXPORT_DIFY_DATABASE_URL"]),
    (["--dify-db", "postgresql://u@127.0.0.1/d", "--types", "moderation"], ["--types moderation: cannot be rebuilt"]),
    (["--dify-db", "postgresql://u@127.0.0.1/d", "--types", "workflow,bogus"], ["--types bogus: unknown"]),
    (["--dify-db", "postgresql://u@127.0.0.1/d", "--since", "last tuesday"], ["--since 'last tuesday' is not a time"]),
    (["--dify-db", "postgresql://u@127.0.0.1/d", "--since", "2026-12-01", "--until", "2026-11-01"],
     ["is not before --until"]),
    (["--dify-db", "postgresql://u@127.0.0.1/d", "--apps", "chat-app"], ["--apps 'chat-app' is not a Dify app id"]),
    (["--dify-db", "postgresql://u@127.0.0.1/d", "--since", "2999-01-01"], ["is not before now (", "default"]),
    (["--dify-db", "host=127.0.0.1 user=u password=secret-pw dbname=d"], ["not a PostgreSQL URL", "password=***"]),
    (["--dify-db", "postgresql://u@127.0.0.1:{port}/d?password=secret-pw"], ["cannot connect", "password=***"]),
    (["--dify-db", "postgresql://u:secret-pw@[::1/d"], ["cannot connect", "u:***@"]),
], ids=["not-postgres", "unreachable", "no-url", "not-rebuildable", "unknown-type", "bad-time", "empty-window",
        "bad-app", "future-since", "keyword-dsn", "query-password", "bad-ipv6"])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    """Each bad URL or flag exits 2 with one line saying what is wrong, and no password in it."""
    args = [a.replace("{port}", str(free_port())) for a in args]
    done = backfill(tmp_path, *args)
    assert_one_line(done, *fragments)
    assert "secret-pw" not in done.stderr


def test_a_database_that_is_not_difys_is_named(server: PostgresServer, tmp_path: Path) -> None:
    """A reachable PostgreSQL without Dify's tables is refused with one line pointing at Dify's database."""
    done = backfill(tmp_path, "--dify-db", server.url(password=server._password))
    assert_one_line(done, "no tables in schema 'public'", "DB_DATABASE")


def test_a_wrong_password_is_one_line_without_the_password(server: PostgresServer, tmp_path: Path) -> None:
    """A refused login says so in one line; neither password appears."""
    done = backfill(tmp_path, "--dify-db", server.url(password="wrong-secret-123"))
    assert_one_line(done, "cannot connect to Dify's database", "password authentication failed")
    assert "wrong-secret-123" not in done.stderr and server._password not in done.stderr


def test_the_session_reads_dify_times_as_utc_whatever_the_servers_zone(server: PostgresServer) -> None:
    """Dify's naive created_at columns hold UTC (its sessions run with timezone=UTC); on a database whose zone is
    Asia/Shanghai, a time-zone-aware bound (the daemon's audit window) still compares in UTC, not 8 hours off."""
    from datetime import UTC, datetime

    from traceexport.difydb import connect

    with server.admin("postgres") as admin:
        admin.execute("CREATE DATABASE dify_shanghai")
        admin.execute("ALTER DATABASE dify_shanghai SET timezone = 'Asia/Shanghai'")
    conn = connect(server.url(database="dify_shanghai"))
    try:
        stored = datetime(2026, 11, 30, 9, 15)  # as Dify writes it: naive UTC
        bound = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
        assert conn.execute("SELECT %s::timestamp >= %s", (stored, bound)).fetchone()[0] is True
    finally:
        conn.close()


def test_a_time_python_cannot_hold_loads_as_the_edge_not_an_error(server: PostgresServer) -> None:
    """A timestamp column can hold infinity, -infinity, years after 9999 and BC dates; one such value used to fail
    the whole page (DataError), so every run of the backfill stopped there. It loads as datetime.max or .min (the
    record is then out of range: one problem line), and an ordinary time loads as before."""
    from datetime import datetime

    from traceexport.difydb import connect

    conn = connect(server.url())
    try:
        row = conn.execute("SELECT 'infinity'::timestamp, '-infinity'::timestamp, '20000-01-01'::timestamp, "
                           "'0044-03-15 BC'::timestamp, '2026-11-30 09:15:00.25'::timestamp").fetchone()
    finally:
        conn.close()
    assert row == (datetime.max, datetime.min, datetime.max, datetime.min, datetime(2026, 11, 30, 9, 15, 0, 250000))


def test_a_login_without_usage_on_the_schema_is_told_to_grant_it(server: PostgresServer, tmp_path: Path) -> None:
    """A login with SELECT on every table but no USAGE on their schema (revoked from PUBLIC on a hardened server)
    is told to grant USAGE, not SELECT (which it has, and which alone reads nothing)."""
    with server.admin("postgres") as admin:
        admin.execute("CREATE DATABASE dify_no_usage")
        admin.execute("CREATE ROLE no_usage LOGIN PASSWORD 'no-usage-secret-1'")
    with server.admin("dify_no_usage") as admin:
        admin.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        admin.execute("CREATE TABLE apps (id uuid)")
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO no_usage")
    done = backfill(tmp_path, "--dify-db", server.url("no_usage", "no-usage-secret-1", database="dify_no_usage"))
    assert_one_line(done, "login 'no_usage' may not use Dify's schema 'public'",
                    "GRANT USAGE ON SCHEMA public TO no_usage")
    assert "no-usage-secret-1" not in done.stderr


def test_a_lone_surrogate_in_a_json_column_reads_as_the_replacement_character(server: PostgresServer) -> None:
    """A json column can hold "\\ud83d" (an emoji cut in half); read by the standard library it stayed a lone
    surrogate, which no record can carry to the spool (a traceback that stopped the backfill at that row's page).
    It reads as U+FFFD, as traceexport reads every record's JSON."""
    from traceexport.difydb import connect

    conn = connect(server.url())
    try:
        value = conn.execute("""SELECT '{"text": "half \\ud83d end", "ok": "\\ud83d\\ude00"}'::json""").fetchone()[0]
    finally:
        conn.close()
    assert value == {"text": "half \ufffd end", "ok": "\U0001f600"}


def test_the_urls_own_options_are_kept_and_ours_still_win(server: PostgresServer) -> None:
    """?options= in the URL (a search_path for Dify in a schema of its own) reaches the session (the keyword
    options used to replace it), while read-only, the statement timeout and UTC cannot be turned off there."""
    from traceexport.difydb import connect

    url = server.url() + "?options=-csearch_path%3Ddify_schema%20-cdefault_transaction_read_only%3Doff"
    conn = connect(url, statement_timeout=5)
    try:
        shown = [conn.execute(f"SHOW {name}").fetchone()[0]
                 for name in ("search_path", "default_transaction_read_only", "statement_timeout", "timezone")]
    finally:
        conn.close()
    assert shown == ["dify_schema", "on", "5s", "UTC"]


def test_a_search_path_naming_no_schema_is_one_line(server: PostgresServer, tmp_path: Path) -> None:
    """A search_path whose schemas do not exist says so and how to set it (it fell back to public for the check,
    then failed on the first page with 'relation "workflow_runs" does not exist')."""
    done = backfill(tmp_path, "--dify-db", server.url() + "?options=-csearch_path%3Dnope")
    assert_one_line(done, "no schema of the session's search_path (nope) exists", "?options=-csearch_path")
    assert server._password not in done.stderr
