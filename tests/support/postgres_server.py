"""A throwaway PostgreSQL for integration tests: Debian's binaries, a temp data dir, a loopback port.

Usage::

    server = PostgresServer.start()          # raises PostgresUnavailable (say why) when it cannot run
    with running_or_skip() as server: ...    # in a test or fixture: start, skip if impossible, stop
    with server.admin() as conn:             # a superuser connection (autocommit)
        create_node_table(conn)
    server.url("traceexport_ro", "secret")   # postgresql://traceexport_ro:secret@127.0.0.1:PORT/dify
    server.stop()                            # by pid; idempotent; removes the data dir

PostgreSQL refuses to run as root (CI runs tests as root), so the server runs as ``nobody`` then.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg

from tests.support.net import free_port

RUN_AS_WHEN_ROOT = "nobody"
DATABASE = "dify"

# Dify's workflow_node_executions (models/workflow.py), with the index its repositories use.
NODE_TABLE_SQL = """
CREATE TABLE workflow_node_executions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    app_id uuid NOT NULL,
    workflow_id uuid NOT NULL,
    triggered_from varchar(255) NOT NULL,
    workflow_run_id uuid,
    index integer NOT NULL,
    predecessor_node_id varchar(255),
    node_execution_id varchar(255),
    node_id varchar(255) NOT NULL,
    node_type varchar(255) NOT NULL,
    title varchar(255) NOT NULL,
    inputs text,
    process_data text,
    outputs text,
    status varchar(255) NOT NULL,
    error text,
    elapsed_time double precision NOT NULL DEFAULT 0,
    execution_metadata text,
    created_at timestamp without time zone NOT NULL DEFAULT CURRENT_TIMESTAMP,
    created_by_role varchar(255) NOT NULL,
    created_by uuid NOT NULL,
    finished_at timestamp without time zone
);
CREATE INDEX workflow_node_execution_workflow_run_idx
    ON workflow_node_executions (tenant_id, app_id, workflow_id, triggered_from, workflow_run_id);
"""
_COLUMNS = (
    "id", "tenant_id", "app_id", "workflow_id", "triggered_from", "workflow_run_id", "index",
    "predecessor_node_id", "node_execution_id", "node_id", "node_type", "title", "inputs", "process_data",
    "outputs", "status", "error", "elapsed_time", "execution_metadata", "created_at", "created_by_role",
    "created_by", "finished_at",
)  # fmt: skip


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be started here; the message names the missing piece."""


def _version_key(bin_dir: str) -> tuple[int, ...]:
    parts = Path(bin_dir).parent.name.split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in parts)


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``postgres`` and ``initdb``, or PATH's."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key)
    for candidate in reversed(dirs):
        if (Path(candidate) / "postgres").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found, initdb = shutil.which("postgres"), shutil.which("initdb")
    return Path(found).parent if found and initdb else None


@contextlib.contextmanager
def running_or_skip() -> Iterator[PostgresServer]:
    """A started server for a test or fixture, stopped afterwards; skips (saying why) when none can run."""
    import pytest

    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"cannot run PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.stop()


class PostgresServer:
    """One running server; ``stop()`` kills it by pid and deletes its files."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, root: Path, password: str) -> None:
        self.process, self.port, self.root, self._password = process, port, root, password

    @classmethod
    def start(cls, timeout: float = 60.0) -> PostgresServer:
        """initdb a temp cluster, start ``postgres`` on 127.0.0.1, wait until it answers, create the db."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable("postgres/initdb not found (apt-get install postgresql)")
        user = _run_as()
        root = Path(tempfile.mkdtemp(prefix="traceexport-pg-"))
        password = secrets.token_hex(8)
        try:
            _chown(root, user)
            (root / "pwfile").write_text(password + "\n")
            _chown(root / "pwfile", user)
            initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-E", "UTF8"]
            _run([*initdb, "--locale=C", "--auth=scram-sha-256", f"--pwfile={root / 'pwfile'}", "--no-sync"], user)
            port = free_port()
            with open(root / "postgres.log", "wb") as log:  # the child keeps its own descriptor
                process = subprocess.Popen(
                    [str(bin_dir / "postgres"), "-D", str(root / "data"), "-p", str(port), "-h", "127.0.0.1",
                     "-k", str(root), "-c", "fsync=off", "-c", "full_page_writes=off"],
                    stdout=log, stderr=subprocess.STDOUT, **_user_kwargs(user),
                )  # fmt: skip
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        server = cls(process, port, root, password)
        try:
            server._wait_ready(timeout)
            with server.admin("postgres") as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        except BaseException:
            server.stop()
            raise
        return server

    def url(self, user: str = "postgres", password: str | None = None, database: str = DATABASE) -> str:
        """A connection URL on the loopback port (the superuser's password unless given)."""
        return f"postgresql://{user}:{password or self._password}@127.0.0.1:{self.port}/{database}"

    @contextlib.contextmanager
    def admin(self, database: str = DATABASE) -> Iterator[psycopg.Connection[Any]]:
        """A superuser connection in autocommit mode."""
        with psycopg.connect(self.url(database=database), autocommit=True, connect_timeout=5) as conn:
            yield conn

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PostgresUnavailable(f"postgres exited: {self.log_tail()}")
            try:
                with psycopg.connect(self.url(database="postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(f"postgres did not accept connections: {self.log_tail()}") from None
                time.sleep(0.1)  # polling with a bound, not waiting blindly

    def log_tail(self, size: int = 600) -> str:
        """The end of the server log, for failure messages."""
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown by pid (SIGINT), SIGKILL after ``timeout``; remove the data dir."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        shutil.rmtree(self.root, ignore_errors=True)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(RUN_AS_WHEN_ROOT)
    except KeyError:
        raise PostgresUnavailable(f"running as root and user {RUN_AS_WHEN_ROOT!r} is absent") from None
    return RUN_AS_WHEN_ROOT


def _user_kwargs(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": "/"}


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(argv: list[str], user: str | None) -> None:
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False, **_user_kwargs(user))
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-600:]
        raise PostgresUnavailable(f"{Path(argv[0]).name} failed: {output}")


def create_node_table(conn: psycopg.Connection[Any]) -> None:
    """Create Dify's ``workflow_node_executions`` table."""
    conn.execute(NODE_TABLE_SQL)


def create_readonly_role(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    """The read-only role the README tells Dify operators to create."""
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    conn.execute(f"GRANT CONNECT ON DATABASE {DATABASE} TO {role}")
    conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    conn.execute(f"GRANT SELECT ON workflow_node_executions TO {role}")


def insert_rows(conn: psycopg.Connection[Any], rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert node rows shaped like ``tests/data/node_rows/*.json`` (dict values become JSON text)."""
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    sql = f"INSERT INTO workflow_node_executions ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
    with conn.cursor() as cur:
        for row in rows:
            values = [row.get(c) for c in _COLUMNS]
            cur.execute(sql, [json.dumps(v) if isinstance(v, dict | list) else v for v in values])
