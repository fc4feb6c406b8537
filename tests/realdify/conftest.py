"""Fixtures for the real-Dify suite: Dify's venvs, PostgreSQL with Dify's own tables, redis-server, fakes.

Every test here runs once per Dify version (``dify`` is parametrized) and skips with the reason when that
version cannot run (no ``../shared/dify/real``, no Python 3.12, no PostgreSQL or redis-server).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.amplitude_server import AmplitudeFake
from tests.fakes.langfuse_server import LangfuseFake
from tests.fakes.opik_server import OpikFake
from tests.fakes.otlp_server import OtlpFake
from tests.realdify.dify import VERSIONS, DifyVersion, prepare
from tests.support.postgres_server import PostgresServer, running_or_skip
from tests.support.redis_server import RedisServer, redis_server_binary

pytestmark = pytest.mark.integration
AMPLITUDE_KEY = "amp-realdify-key-0123456789"


@pytest.fixture(scope="session")
def dify_builds() -> dict[str, DifyVersion | str]:
    """Both versions' venvs, built (in parallel) or taken from the cache; a reason where impossible."""
    return prepare()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session; each Dify version gets a database of its own."""
    with running_or_skip() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (Dify's Redis and its Celery broker)."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=VERSIONS, ids=[f"dify-{v}" for v in VERSIONS])
def dify(request: pytest.FixtureRequest, dify_builds: dict[str, DifyVersion | str],
         postgres: PostgresServer) -> DifyVersion:
    """A ready Dify version whose database holds Dify's tables, created by Dify's own models."""
    outcome = dify_builds[request.param]
    if isinstance(outcome, str):
        pytest.skip(f"Dify {request.param} cannot run here: {outcome}")
    database = "dify_" + request.param.replace(".", "_")
    with postgres.admin("postgres") as conn:
        conn.execute(f"CREATE DATABASE {database}")
    outcome.database = database  # type: ignore[attr-defined]
    return outcome


@dataclass
class DifyStack:
    """One test's Dify: its settings (database, Redis, storage, broker) and helpers to run Dify's code."""

    dify: DifyVersion
    settings: dict[str, str]
    redis: RedisServer
    root: Path
    schema_done: set[str] = field(default_factory=set)

    @property
    def storage(self) -> Path:
        return Path(self.settings["OPENDAL_FS_ROOT"])

    def run(self, steps: list[dict[str, Any]], **env: str) -> list[Any]:
        """Run driver steps in Dify's venv with these settings plus ``env``."""
        return self.dify.run(steps, {**self.settings, **env})

    def broker_keys(self) -> list[str]:
        """Keys of the Celery broker's Redis database."""
        return sorted(k.decode() for k in self.redis.client(db=1).keys("*"))


_SCHEMA_DONE: set[str] = set()


@pytest.fixture
def stack(dify: DifyVersion, postgres: PostgresServer, redis_server: RedisServer, tmp_path: Path) -> DifyStack:
    """Dify's settings for this test: its own storage, a clean Redis, the version's database."""
    redis_server.client(db=0).flushall()
    storage = tmp_path / "storage"
    storage.mkdir()
    settings = {
        "DB_HOST": "127.0.0.1", "DB_PORT": str(postgres.port), "DB_USERNAME": "postgres",
        "DB_PASSWORD": postgres._password, "DB_DATABASE": dify.database,  # type: ignore[attr-defined]
        "DB_TYPE": "postgresql", "STORAGE_TYPE": "opendal", "OPENDAL_SCHEME": "fs", "OPENDAL_FS_ROOT": str(storage),
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port), "REDIS_DB": "0",
        "CELERY_BROKER_URL": redis_server.url(db=1), "SECRET_KEY": secrets.token_hex(16),
        "FILES_URL": "http://files.example.com",
    }  # fmt: skip
    built = DifyStack(dify, settings, redis_server, tmp_path)
    if dify.version not in _SCHEMA_DONE:
        built.run([{"op": "schema"}])
        _SCHEMA_DONE.add(dify.version)
    return built


@dataclass
class Backends:
    """The four contract-checking fakes, and the environment that points traceexport's sinks at them."""

    opik: OpikFake
    langfuse: LangfuseFake
    otlp: OtlpFake
    amplitude: AmplitudeFake

    def fake(self, backend: str) -> Any:
        return getattr(self, backend)

    def env(self) -> dict[str, str]:
        return {
            "OPIK_URL_OVERRIDE": self.opik.url, "OPIK_PROJECT_NAME": "dify-realdify",
            "LANGFUSE_HOST": self.langfuse.url, "LANGFUSE_PUBLIC_KEY": "pk-lf-test",
            "LANGFUSE_SECRET_KEY": "sk-lf-test",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp.url, "OTEL_SERVICE_NAME": "dify-realdify",
            "AMPLITUDE_API_KEY": AMPLITUDE_KEY, "AMPLITUDE_SERVER_URL": f"{self.amplitude.url}/2/httpapi",
        }  # fmt: skip


@pytest.fixture
def backends() -> Iterator[Backends]:
    """Fresh Opik, Langfuse, OTLP and Amplitude fakes for one test."""
    with OpikFake() as opik, LangfuseFake() as langfuse, OtlpFake() as otlp, \
            AmplitudeFake(api_key=AMPLITUDE_KEY) as amplitude:
        yield Backends(opik, langfuse, otlp, amplitude)
