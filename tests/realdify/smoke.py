"""Prove that a venv runs the real Dify trace code: ``python smoke.py <dify>/api`` prints one JSON line.

Runs INSIDE a venv built from ``requirements-dify-<version>.txt`` (Python 3.12), not under pytest, and starts
nothing: PostgreSQL and Redis must already listen on loopback and be named by Dify's own environment variables
(``DB_HOST DB_PORT DB_USERNAME DB_PASSWORD DB_DATABASE REDIS_HOST REDIS_PORT CELERY_BROKER_URL``). The storage
(opendal ``fs`` in a temp dir), ``DB_TYPE``, ``REDIS_DB`` and ``SECRET_KEY`` default here unless set.

It builds the Flask app as Dify's app factory does (``DifyApp`` + ``dify_config.model_dump()``, then ``init_app``
of ext_redis, ext_database, ext_storage, ext_celery and, where the tree has it, ext_session_factory), runs
``db.metadata.create_all``, imports the trace modules, checks Redis, storage and the Celery task registration,
and builds Dify's own Langfuse provider through ``provider_config_map`` (1.10.1: ``core.ops.langfuse_trace``;
1.14.1: the ``dify_trace_langfuse`` workspace package, whose ``src`` dir is put on ``sys.path`` here).

Exit status 0 when every step worked, 1 when one failed (the JSON says which and why), 2 on bad usage.

Recipe (T = ../shared/dify/real/dify-<version>/api, V = a venv from the matching requirements file)::

    /root/.pyenv/versions/3.12.1/bin/python3.12 -m venv V && V/bin/pip install -r requirements-dify-<version>.txt
    DB_HOST=127.0.0.1 DB_PORT=<pg> DB_USERNAME=postgres DB_PASSWORD=<pw> DB_DATABASE=<db> \
    REDIS_HOST=127.0.0.1 REDIS_PORT=<redis> CELERY_BROKER_URL=redis://127.0.0.1:<redis>/1 V/bin/python smoke.py T

Outside this script, the same sys.path is ``PYTHONPATH=T`` (1.10.1) or
``PYTHONPATH=T:T/providers/trace/trace-langfuse/src`` (1.14.1; Dify's Dockerfile gets there with ``uv sync``, which
installs the ``providers/*`` workspace members editable). Use one database per tree: create_all skips tables that
exist, so a database made by the other version keeps that version's columns.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REQUIRED_ENV = (
    "DB_HOST", "DB_PORT", "DB_USERNAME", "DB_PASSWORD", "DB_DATABASE", "REDIS_HOST", "REDIS_PORT", "CELERY_BROKER_URL",
)  # fmt: skip
# Order matters on 1.10.1: importing core.ops.ops_trace_manager first hits a circular import
# (ops_trace_manager -> ... -> core.app.entities.app_invoke_entities -> ops_trace_manager.TraceQueueManager).
# Dify itself always has app_invoke_entities loaded (via its controllers) before the ops manager.
TRACE_MODULES = (
    "core.ops.entities.trace_entity",
    "core.app.entities.app_invoke_entities",
    "core.ops.ops_trace_manager",
    "services.ops_service",
    "tasks.ops_trace_task",
)
# Imported only when a record is processed (inside TraceTask / the worker task), so not by the modules above.
RUNTIME_MODULES = ("repositories.factory", "core.telemetry.gateway", "extensions.ext_enterprise_telemetry")
REPOSITORY_SETTINGS = (
    "CORE_WORKFLOW_EXECUTION_REPOSITORY", "CORE_WORKFLOW_NODE_EXECUTION_REPOSITORY",
    "API_WORKFLOW_NODE_EXECUTION_REPOSITORY", "API_WORKFLOW_RUN_REPOSITORY",
)  # fmt: skip
EXTENSIONS = ("ext_redis", "ext_database", "ext_storage", "ext_celery", "ext_session_factory")
LANGFUSE_PROVIDER_SRC = "providers/trace/trace-langfuse/src"


class Smoke:
    """Runs named steps, records ``ok`` or a one-line reason for each, and stops at the first failure."""

    def __init__(self, secrets: list[str]) -> None:
        self.steps: dict[str, str] = {}
        self.info: dict[str, Any] = {}
        self._secrets = [s for s in secrets if s]

    def step(self, name: str, action: Callable[[], object]) -> bool:
        """Run ``action``; store ``ok`` (or its non-None result as text) or the error, without secrets."""
        try:
            result = action()
        except (Exception, SystemExit) as exc:  # a SystemExit from Dify (config errors) is a failed step too
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
            for secret in self._secrets:
                message = message.replace(secret, "***")
            self.steps[name] = message
            return False
        self.steps[name] = "ok" if result is None else f"ok: {result}"
        return True


def _usage_error(message: str) -> None:
    print(f"smoke: {message}", file=sys.stderr)
    raise SystemExit(2)


def _prepare(tree: Path) -> list[str]:
    """Check the argument and environment, set the defaults, put the tree (and provider src) on sys.path."""
    if not (tree / "pyproject.toml").is_file() or not (tree / "core" / "ops").is_dir():
        _usage_error(f"{tree} is not a Dify api tree (no pyproject.toml or core/ops)")
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        _usage_error(f"set {' '.join(missing)} (PostgreSQL and Redis on loopback)")
    os.environ.setdefault("DB_TYPE", "postgresql")
    os.environ.setdefault("STORAGE_TYPE", "opendal")
    os.environ.setdefault("OPENDAL_SCHEME", "fs")
    os.environ.setdefault("OPENDAL_FS_ROOT", tempfile.mkdtemp(prefix="dify-smoke-storage-"))
    os.environ.setdefault("REDIS_DB", "0")
    os.environ.setdefault("SECRET_KEY", uuid.uuid4().hex)
    added = [str(tree)]
    provider_src = tree / LANGFUSE_PROVIDER_SRC
    if provider_src.is_dir():
        added.append(str(provider_src))
    for entry in reversed(added):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return added


def _build_app(tree: Path, smoke: Smoke) -> Any:
    from configs import dify_config  # type: ignore[import-not-found]
    from dify_app import DifyApp  # type: ignore[import-not-found]

    app = DifyApp("traceexport-smoke")
    app.config.from_mapping(dify_config.model_dump())
    initialised = []
    for name in EXTENSIONS:
        if not (tree / "extensions" / f"{name}.py").is_file():
            continue
        module = importlib.import_module(f"extensions.{name}")
        if getattr(module, "is_enabled", lambda: True)():
            module.init_app(app)
            initialised.append(name)
    smoke.info["extensions"] = initialised
    return app


def _create_all(app: Any) -> str:
    from extensions.ext_database import db  # type: ignore[import-not-found]

    with app.app_context():
        db.metadata.create_all(db.engine)
        return f"{len(db.metadata.tables)} tables"


def _runtime_imports(tree: Path) -> str:
    """The modules TraceTask and the worker import lazily, and the repository classes Dify's config names."""
    from configs import dify_config  # type: ignore[import-not-found]

    names = [m for m in RUNTIME_MODULES if (tree / (m.replace(".", "/") + ".py")).is_file()]
    for name in names:
        importlib.import_module(name)
    for setting in REPOSITORY_SETTINGS:
        module, _, attr = getattr(dify_config, setting).rpartition(".")
        getattr(importlib.import_module(module), attr)
    return f"{len(names)} modules, {len(REPOSITORY_SETTINGS)} repositories"


def _redis() -> None:
    from extensions.ext_redis import redis_client  # type: ignore[import-not-found]

    if not redis_client.ping():
        raise RuntimeError("PING did not answer")


def _storage() -> None:
    from extensions.ext_storage import storage  # type: ignore[import-not-found]

    key = f"smoke/{uuid.uuid4().hex}.json"
    storage.save(key, b'{"smoke": true}')
    if storage.load_once(key) != b'{"smoke": true}':
        raise RuntimeError("storage returned other bytes")
    storage.delete(key)


def _celery(app: Any) -> str:
    import tasks.ops_trace_task  # type: ignore[import-not-found]  # noqa: F401 - registers the task

    celery_app = app.extensions["celery"]
    name = "tasks.ops_trace_task.process_trace_tasks"
    if name not in celery_app.tasks:
        raise RuntimeError(f"{name} is not registered")
    return str(celery_app.conf.broker_url).split("@")[-1]


def _langfuse_provider() -> str:
    from core.ops.ops_trace_manager import provider_config_map  # type: ignore[import-not-found]

    entry = provider_config_map["langfuse"]
    config = entry["config_class"](public_key="pk-lf-smoke", secret_key="sk-lf-smoke", host="http://127.0.0.1:9")
    instance = entry["trace_instance"](config)
    client = getattr(instance, "langfuse_client", None)
    version = "?"
    try:
        from importlib.metadata import version as dist_version

        version = dist_version("langfuse")
    finally:
        if client is not None and hasattr(client, "shutdown"):
            client.shutdown()
    return f"{type(instance).__module__}.{type(instance).__name__} (langfuse {version})"


def main(argv: list[str]) -> int:
    """Run every step in order; print one JSON line; 0 when all worked."""
    if len(argv) != 2:
        _usage_error("usage: python smoke.py <dify>/api")
    tree = Path(argv[1]).resolve()
    added = _prepare(tree)
    smoke = Smoke([os.environ.get("DB_PASSWORD", ""), os.environ.get("REDIS_PASSWORD", "")])
    smoke.info.update(
        tree=str(tree),
        dify_version=tomllib.loads((tree / "pyproject.toml").read_text())["project"]["version"],
        python=platform.python_version(),
        sys_path_added=added,
    )
    app_box: list[Any] = []
    ok = smoke.step("app", lambda: app_box.append(_build_app(tree, smoke)))
    ok = ok and smoke.step("create_all", lambda: _create_all(app_box[0]))
    for module in TRACE_MODULES:
        ok = ok and smoke.step(f"import {module}", lambda module=module: importlib.import_module(module) and None)
    ok = ok and smoke.step("runtime imports", lambda: _runtime_imports(tree))
    ok = ok and smoke.step("redis", _redis)
    ok = ok and smoke.step("storage", _storage)
    ok = ok and smoke.step("celery", lambda: _celery(app_box[0]))
    ok = ok and smoke.step("langfuse provider", _langfuse_provider)
    print(json.dumps({"ok": ok, **smoke.info, "steps": smoke.steps}, sort_keys=False))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
