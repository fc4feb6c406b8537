"""``sources.celery``: where Dify's ``ops_trace`` queue and storage are, and how to consume them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from traceexport.errors import ConfigError, Problem
from traceexport.sources.storage import LocalStorageSettings, StorageSettings

DIFY_TASK_NAME = "tasks.ops_trace_task.process_trace_tasks"
DIFY_QUEUE = "ops_trace"
DIFY_FILE_PREFIX = "ops_trace/"  # Dify's OPS_FILE_PATH


class CelerySourceSettings(BaseModel):
    """Consume Dify's Celery ``ops_trace`` queue instead of Dify's worker.

    ``visibility_timeout`` (seconds) is how long a received but unacknowledged message stays invisible
    before it is handed out again (after a consumer crash). Keep it well above the longest time one
    message can take, including waiting on a full spool. ``unacked_prefix`` keeps this source's
    in-flight bookkeeping apart from Dify's own workers, so a short timeout here never re-delivers
    Dify's other tasks. Messages on the queue for any other task are moved unchanged to
    ``other_tasks_queue`` (null: dropped with a warning). ``transport_options`` are passed to kombu's
    Redis transport as they are (e.g. ``global_keyprefix``, sentinel ``master_name``).
    """

    model_config = ConfigDict(extra="forbid")

    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/1")
    queue: str = Field(default=DIFY_QUEUE, min_length=1)
    task_name: str = Field(default=DIFY_TASK_NAME, min_length=1)
    storage: StorageSettings = LocalStorageSettings()
    concurrency: int = Field(default=1, ge=1, le=64)
    prefetch: int = Field(default=1, ge=1, le=1000)
    visibility_timeout: float = Field(default=3600.0, gt=0)
    retry_delay: float = Field(default=5.0, ge=0)
    failed_prefix: str = Field(default="traceexport/failed/", pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*/$")
    other_tasks_queue: str | None = Field(default="ops_trace_other", min_length=1)
    unacked_prefix: str = Field(default="traceexport.", pattern=r"^[A-Za-z0-9_.:-]+$")
    transport_options: dict[str, Any] = {}

    @classmethod
    def from_config(cls, obj: Any, where: str = "sources.celery") -> CelerySourceSettings:
        """Validate a config mapping; raise ConfigError listing every problem with its key path."""
        try:
            return cls.model_validate(obj if obj is not None else {})
        except ValidationError as exc:
            problems = [Problem(".".join([where, *(str(p) for p in err["loc"])]), err["msg"]) for err in exc.errors()]
            raise ConfigError(problems) from exc

    def kombu_transport_options(self) -> dict[str, Any]:
        """Transport options for kombu's Redis transport: visibility timeout and our own unacked keys."""
        options: dict[str, Any] = {
            "visibility_timeout": self.visibility_timeout,
            "unacked_key": f"{self.unacked_prefix}unacked",
            "unacked_index_key": f"{self.unacked_prefix}unacked_index",
            "unacked_mutex_key": f"{self.unacked_prefix}unacked_mutex",
            # Look for abandoned messages on every idle poll (about once a second per consumer).
            "unacked_restore_throttle": 1,
        }
        options.update(self.transport_options)
        return options

    def masked_broker_url(self) -> str:
        """The broker URL with any password replaced by ``***``, for log lines."""
        return mask_url(self.broker_url.get_secret_value())


def mask_url(url: str) -> str:
    """``redis://:secret@host:6379/1`` -> ``redis://:***@host:6379/1``; other URLs unchanged."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable url>"
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment))


__all__ = ["DIFY_FILE_PREFIX", "DIFY_QUEUE", "DIFY_TASK_NAME", "CelerySourceSettings", "mask_url"]
