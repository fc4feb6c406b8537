"""``sources.celery``: where Dify's ``ops_trace`` queue and storage are, and how to consume them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from traceexport.errors import ConfigError, Problem
from traceexport.redaction import url_passwords
from traceexport.sources.celery.broker_url import broker_url_problem, mask_url
from traceexport.sources.storage import LocalStorageSettings, S3StorageSettings, StorageSettings

DIFY_TASK_NAME = "tasks.ops_trace_task.process_trace_tasks"
DIFY_QUEUE = "ops_trace"
DIFY_FILE_PREFIX = "ops_trace/"  # Dify's OPS_FILE_PATH
DIFY_PREFIX_ENV = "REDIS_KEY_PREFIX"  # Dify >= 1.14: namespaces every Redis key, Celery's included
BROKER_SOCKET_TIMEOUT = 10.0  # seconds a broker call may take (every one is short: takes are scripts, not BRPOP)


def dify_global_keyprefix(redis_key_prefix: str | None) -> str:
    """kombu's ``global_keyprefix`` for Dify's ``REDIS_KEY_PREFIX``, by Dify 1.14's own rule.

    Dify (``extensions/redis_names.normalize_redis_key_prefix`` and ``ext_celery``) strips surrounding
    whitespace and, if anything is left, appends one ``:``: ``"dify"`` -> ``"dify:"``, ``" dify: "`` ->
    ``"dify::"``, ``""`` or blanks -> ``""`` (no prefix).
    """
    normalized = (redis_key_prefix or "").strip()
    return f"{normalized}:" if normalized else ""


class CelerySourceSettings(BaseModel):
    """Consume Dify's Celery ``ops_trace`` queue instead of Dify's worker.

    A consumer takes up to ``prefetch`` messages at once and holds them unacknowledged until their records
    are in the spool (one transaction for them all). ``visibility_timeout`` (seconds) is how long a taken
    but unacknowledged message stays invisible before any consumer puts it back on the queue (after a
    consumer crash). Keep it well above the longest time one batch can take, including waiting on a full
    spool. ``unacked_prefix`` keeps this source's
    in-flight bookkeeping apart from Dify's own workers, so a short timeout here never re-delivers
    Dify's other tasks. A trace file that is there but cannot be read (a directory, a FIFO, a link, no
    permission, larger than ``max_file_bytes``: never read into memory) is retried for ``unreadable_timeout``
    seconds, then its message is kept under ``failed_prefix`` ``messages/`` and acknowledged. Messages on the
    queue for any other task are moved unchanged to ``other_tasks_queue`` (null: dropped with a warning).
    ``redis_key_prefix`` is the value of Dify's
    ``REDIS_KEY_PREFIX`` (Dify >= 1.14), turned into kombu's ``global_keyprefix`` by Dify's own rule, so
    this consumer sees the keys Dify's producer writes: the queue, the other-tasks queue, and this
    source's unacked bookkeeping all carry the prefix. Absent from the config, it falls back to the
    environment variable ``REDIS_KEY_PREFIX`` (see :meth:`from_config`). ``transport_options`` are passed
    to kombu's Redis transport as they are (e.g. sentinel ``master_name``).
    """

    model_config = ConfigDict(extra="forbid")

    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/1")
    queue: str = Field(default=DIFY_QUEUE, min_length=1)
    task_name: str = Field(default=DIFY_TASK_NAME, min_length=1)
    storage: StorageSettings = LocalStorageSettings()
    concurrency: int = Field(default=1, ge=1, le=64)
    prefetch: int = Field(default=200, ge=1, le=1000)
    visibility_timeout: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    retry_delay: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    unreadable_timeout: float = Field(default=600.0, ge=0, allow_inf_nan=False)
    max_file_bytes: ByteSize = Field(default=ByteSize(64 * 1024 * 1024), ge=1)
    failed_prefix: str = Field(default="traceexport/failed/", pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*/$")
    other_tasks_queue: str | None = Field(default="ops_trace_other", min_length=1)
    unacked_prefix: str = Field(default="traceexport.", pattern=r"^[A-Za-z0-9_.:-]+$")
    transport_options: dict[str, Any] = {}
    redis_key_prefix: str = ""

    _prefix_origin: str = PrivateAttr(default="config")

    @field_validator("broker_url")
    @classmethod
    def _kombu_reads_the_url(cls, value: SecretStr) -> SecretStr:
        problem = broker_url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("transport_options")
    @classmethod
    def _keyprefix_is_text(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("global_keyprefix", ""), str):
            raise ValueError("global_keyprefix must be a string")
        return value

    @model_validator(mode="after")
    def _sentinel_names_its_master(self) -> CelerySourceSettings:
        parts = self.broker_url.get_secret_value().split(";")
        if any(part.strip().lower().startswith("sentinel://") for part in parts) and not self.transport_options.get(
                "master_name"):
            raise ValueError("a sentinel:// broker_url needs transport_options.master_name (Dify's "
                             "CELERY_SENTINEL_MASTER_NAME), and transport_options.sentinel_kwargs: {password: ...} "
                             "when the sentinels have one (CELERY_SENTINEL_PASSWORD)")
        return self

    @field_validator("other_tasks_queue")
    @classmethod
    def _not_the_queue_itself(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("queue"):
            raise ValueError("must not be the queue itself: a task moved there comes straight back, forever "
                             "(null drops foreign tasks instead)")
        return value

    @field_validator("redis_key_prefix")
    @classmethod
    def _one_prefix(cls, value: str, info: ValidationInfo) -> str:
        options = info.data.get("transport_options") or {}
        if dify_global_keyprefix(value) and options.get("global_keyprefix"):
            raise ValueError(
                "set either redis_key_prefix (Dify's REDIS_KEY_PREFIX, Dify's rule applied) or "
                "transport_options.global_keyprefix (used as is), not both"
            )
        return value

    @classmethod
    def from_config(
        cls, obj: Any, where: str = "sources.celery", env: Mapping[str, str] | None = None
    ) -> CelerySourceSettings:
        """Validate a config mapping; raise ConfigError listing every problem with its key path.

        When the mapping sets neither ``redis_key_prefix`` nor ``transport_options.global_keyprefix``,
        ``REDIS_KEY_PREFIX`` from ``env`` (default: the process environment) is used: this source takes
        over a job of Dify's worker, which reads that very variable, and a sidecar often shares Dify's
        environment. Without the prefix the queue looks empty and nothing says why.
        """
        data = dict(obj) if isinstance(obj, Mapping) else obj if obj is not None else {}
        origin = "config"
        if isinstance(data, dict) and "redis_key_prefix" not in data and not _sets_keyprefix(data):
            env = os.environ if env is None else env
            if env.get(DIFY_PREFIX_ENV) is not None:
                data["redis_key_prefix"] = env[DIFY_PREFIX_ENV]
                origin = f"environment variable {DIFY_PREFIX_ENV}"
        try:
            settings = cls.model_validate(data)
        except ValidationError as exc:
            problems = [Problem(".".join([where, *(str(p) for p in err["loc"])]), err["msg"]) for err in exc.errors()]
            raise ConfigError(problems) from exc
        settings._prefix_origin = origin
        return settings

    @property
    def global_keyprefix(self) -> str:
        """What kombu puts in front of every Redis key it uses ("" for none)."""
        explicit = self.transport_options.get("global_keyprefix")
        return explicit if isinstance(explicit, str) and explicit else dify_global_keyprefix(self.redis_key_prefix)

    def queue_key(self) -> str:
        """The Redis key of the queue as Dify's producer writes it (the list kombu pops from)."""
        return self.global_keyprefix + self.queue

    def describe_prefix(self) -> str:
        """Where the key prefix comes from, for the start-up log line ("" when there is none)."""
        if not self.global_keyprefix:
            return ""
        if self.transport_options.get("global_keyprefix"):
            return "transport_options.global_keyprefix"
        return f"redis_key_prefix {self.redis_key_prefix!r} from {self._prefix_origin}"

    def kombu_transport_options(self) -> dict[str, Any]:
        """Transport options for kombu's Redis transport: visibility timeout, our own unacked keys, and socket
        timeouts (kombu's default is none: a broker that stops answering, or a connection a network silently
        dropped, would hold the consumer forever without a word). ``transport_options`` override them."""
        options: dict[str, Any] = {
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT,
            "visibility_timeout": self.visibility_timeout,
            "unacked_key": f"{self.unacked_prefix}unacked",
            "unacked_index_key": f"{self.unacked_prefix}unacked_index",
            "unacked_mutex_key": f"{self.unacked_prefix}unacked_mutex",
        }
        options.update(self.transport_options)
        if self.global_keyprefix:
            options["global_keyprefix"] = self.global_keyprefix
        return options

    def secrets(self) -> list[str]:
        """The values to mask wherever this source's text may end up: the broker URL's passwords (as written and
        decoded), a password in ``transport_options`` or its ``sentinel_kwargs`` (the sentinels'), S3's keys and its
        endpoint's password."""
        found: list[str] = []
        for part in self.broker_url.get_secret_value().split(";"):
            with contextlib.suppress(ValueError):
                password = urlsplit(part.strip()).password or ""
                found += [password, unquote(password)]
        sentinel = self.transport_options.get("sentinel_kwargs")
        for options in (self.transport_options, sentinel if isinstance(sentinel, Mapping) else {}):
            if isinstance(options.get("password"), str):
                found.append(options["password"])
        if isinstance(self.storage, S3StorageSettings):
            found += [key.get_secret_value() for key in (self.storage.access_key, self.storage.secret_key) if key]
            found += url_passwords(self.storage.endpoint_url or "")
        return [value for value in found if value]

    def masked_broker_url(self) -> str:
        """The broker URL with any password replaced by ``***``, for log lines."""
        return mask_url(self.broker_url.get_secret_value())


def _sets_keyprefix(data: Mapping[str, Any]) -> bool:
    options = data.get("transport_options")
    return isinstance(options, Mapping) and "global_keyprefix" in options


__all__ = [
    "DIFY_FILE_PREFIX",
    "DIFY_PREFIX_ENV",
    "DIFY_QUEUE",
    "DIFY_TASK_NAME",
    "CelerySourceSettings",
    "dify_global_keyprefix",
]
