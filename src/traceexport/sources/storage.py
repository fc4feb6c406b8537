"""Read and delete the files Dify's API writes to its storage (``ops_trace/{app_id}/{file_id}.json``).

Two backends, chosen by ``storage.type`` in the config:

* ``local`` — the directory Dify's storage lives in, mounted into the sidecar (Dify's docker default:
  ``/app/api/storage``, OpenDAL ``fs`` scheme or the older ``STORAGE_TYPE=local``).
* ``s3`` — an S3-compatible bucket (AWS, MinIO, R2, ...) through boto3, imported only when used
  (``pip install 'traceexport[s3]'``).

Keys are Dify's object keys (``/``-separated, relative); a key that would leave the storage root is
refused. ``load`` returns ``None`` for a missing object (already consumed by another sidecar), except
in a local root without the key's top folder (not Dify's storage: nothing was ever there to consume);
every other failure is a :class:`StorageError`, which callers treat as transient, or its subclass
:class:`UnreadableFileError` when the failure is this one file's own (not a regular file, no permission to read
it, larger than the limit). A local read opens only a regular file inside the root, never through a symbolic link
to it or to outside the root, and never blocks: a FIFO or a device someone put in Dify's storage is refused, not
read (nor waited on for ever).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from traceexport.errors import ConfigError, TraceExportError
from traceexport.redaction import masked_url

_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}|arn:\S+")  # botocore's own check: a bucket name or an access point ARN
_ENDPOINT = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)
_REGION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # botocore's validate_region_name
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*")  # no empty, "." or ".." part


class StorageError(TraceExportError):
    """Dify's storage could not be read or written right now (I/O error, S3 unavailable); retry later."""


class UnreadableFileError(StorageError):
    """This one file cannot be read, whatever the rest of the storage does: ``why`` says what it is.

    ``certain`` is True when it cannot be a trace file at all (a directory, a FIFO, a symbolic link, a device: not
    a regular file; larger than the limit), False when it might still be the whole storage's trouble (permission
    denied: a sidecar running as the wrong user cannot read any file; a folder linked out of the root)."""

    def __init__(self, key: str, why: str, *, certain: bool) -> None:
        self.key = key
        self.why = why
        self.certain = certain
        super().__init__(f"cannot read {key}: {why}")


def check_key(key: str) -> str:
    """``key`` if it is a safe relative object key (``[A-Za-z0-9._-]`` parts, no ``..``); else ValueError."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"unsafe storage key {key!r}")
    return key


class Storage(Protocol):
    """The three operations the Celery source needs from Dify's storage."""

    def load(self, key: str, max_bytes: int | None = None) -> bytes | None:
        """The object's bytes, or None when it does not exist; StorageError on any other failure, and
        UnreadableFileError for an object of more than ``max_bytes`` (never read into memory whole)."""
        ...

    def save(self, key: str, data: bytes) -> None:
        """Write the object (atomically where the backend allows); StorageError on failure."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error; StorageError on failure."""
        ...

    def describe(self) -> str:
        """Where the storage is, for log lines (never a secret)."""
        ...


class LocalStorageSettings(BaseModel):
    """``storage: {type: local, path: /app/api/storage}`` — Dify's storage directory, mounted."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["local"] = "local"
    path: Path = Path("/app/api/storage")


class S3StorageSettings(BaseModel):
    """``storage: {type: s3, bucket, prefix, endpoint_url, region, access_key, secret_key}`` — Dify's S3 bucket;
    ``prefix`` is the folder Dify's keys live under (``OPENDAL_S3_ROOT`` when Dify reaches S3 through OpenDAL)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["s3"]
    bucket: str = Field(min_length=1)
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    addressing_style: Literal["auto", "virtual", "path"] = "auto"

    # What botocore refuses only when the client is made (serve's start-up) or at every request: said here,
    # so that validate reports it with its key path, never as botocore's traceback.
    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value):
            raise ValueError("must be a bucket name: letters, digits, '.', '-' and '_' (Dify's S3_BUCKET_NAME)")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if value is not None and not _ENDPOINT.fullmatch(value):
            raise ValueError("must be an http:// or https:// URL, e.g. https://s3.us-east-1.amazonaws.com")
        return value

    @field_validator("region")
    @classmethod
    def _region_name(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.fullmatch(value):
            raise ValueError("must be a region name such as us-east-1")
        return value


StorageSettings = Annotated[LocalStorageSettings | S3StorageSettings, Field(discriminator="type")]


class LocalStorage:
    """Dify's storage as a local directory (a shared volume)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self._real_root: str | None = None  # the root with its links resolved, once known

    def _path(self, key: str) -> str:
        return os.path.join(self._root, check_key(key))  # "/" separates the parts on every POSIX system

    def _inside(self, real: str) -> bool:
        """Whether the resolved path ``real`` lies inside the root (itself resolved again once, if it moved)."""
        for fresh in (self._real_root is None, True):
            if fresh:
                self._real_root = os.path.realpath(self._root)
            if real.startswith(str(self._real_root).rstrip("/") + "/"):
                return True
        return False

    def load(self, key: str, max_bytes: int | None = None) -> bytes | None:
        """The file's bytes, or None when it does not exist; a file of more than ``max_bytes`` is not read.

        A file is missing for good (another sidecar handled it) only while the key's top folder (Dify's
        ``ops_trace``) is there: without it the root is not Dify's storage (a volume not mounted, the wrong
        path), and treating every file as handled would acknowledge messages whose records were never read.
        That is a StorageError, retried like any other, so the messages wait until the storage is right.
        """
        try:
            return _read(self._path(key), max_bytes, self._inside)
        except _Outside:
            raise UnreadableFileError(key, f"reached through a symbolic link to outside {self.root} (not followed)",
                                      certain=False) from None
        except _NotRegularFile as exc:
            raise UnreadableFileError(key, f"{exc.kind}, not a regular file", certain=True) from None
        except _TooLarge as exc:
            raise UnreadableFileError(key, _too_large(exc.size, exc.limit), certain=True) from None
        except FileNotFoundError:
            top = key.split("/", 1)[0]
            if "/" in key and not os.path.isdir(os.path.join(self._root, top)):
                raise StorageError(
                    f"cannot read {key}: no folder {top}/ in {self.root} (is Dify's storage mounted there?)"
                ) from None
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
                raise UnreadableFileError(key, "a symbolic link, not a regular file", certain=True) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise UnreadableFileError(key, exc.strerror or "permission denied", certain=False) from None
            raise StorageError(f"cannot read {key} from {self.root}: {exc.strerror or exc}") from exc

    def save(self, key: str, data: bytes) -> None:
        """Write the file atomically (temporary file + rename), creating directories as needed."""
        path = Path(self._path(key))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {key} under {self.root}: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        """Remove the file; a missing file is fine."""
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {key} under {self.root}: {exc.strerror or exc}") from exc

    def describe(self) -> str:
        """``local:/app/api/storage``."""
        return f"local:{self.root}"


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _too_large(size: int, limit: int) -> str:
    return f"{size} bytes or more, larger than the {limit} bytes a trace file may have (max_file_bytes)"


class _TooLarge(OSError):
    """A file of ``size`` bytes (at least), more than ``limit``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(_too_large(size, limit))


class _Outside(OSError):
    """The file opened lies outside the storage root: a folder on its way is a symbolic link out of it."""


class _NotRegularFile(OSError):
    """What ``_read`` found at a path instead of a regular file (``kind``: "a directory", "a FIFO", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(kind)


def _read(path: str, max_bytes: int | None = None, inside: Callable[[str], bool] | None = None) -> bytes:
    """The bytes of the regular file at ``path``, with as few system calls as a read can take (no buffering).

    Opened without following a symbolic link (ELOOP) and without blocking (a FIFO without a writer would hold the
    open for ever), then refused unless it is a regular file (``_NotRegularFile``) of at most ``max_bytes``
    (``_TooLarge``: not read, nor read on past that while it grows), and, where the system says where an open file
    is (Linux's ``/proc/self/fd``), one ``inside(real path)`` accepts (``_Outside``: a folder on the way was a link
    out of the storage)."""
    fd = os.open(path, _READ_FLAGS)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _NotRegularFile(next((kind for test, kind in _KINDS if test(status.st_mode)), "not a file"))
        if inside is not None:
            real = _where(fd)
            if real is not None and not inside(real):
                raise _Outside()
        limit = max_bytes if max_bytes is not None else -1
        if limit >= 0 and status.st_size > limit:
            raise _TooLarge(status.st_size, limit)
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if limit >= 0 and size > limit:
                raise _TooLarge(size, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _where(fd: int) -> str | None:
    """The resolved path of the open file ``fd``; None where the system does not say (no ``/proc``)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class S3Storage:
    """Dify's storage as an S3-compatible bucket; ``client`` may be injected (tests, custom sessions)."""

    def __init__(self, settings: S3StorageSettings, client: Any = None) -> None:
        self.bucket = settings.bucket
        self.prefix = f"{settings.prefix.strip('/')}/" if settings.prefix.strip("/") else ""
        self._endpoint = settings.endpoint_url or "aws"
        self._client = client if client is not None else _s3_client(settings)
        self._client_error: type[Exception] = _client_error_class()

    def load(self, key: str, max_bytes: int | None = None) -> bytes | None:
        """The object's bytes, or None for NoSuchKey / 404 while the key's top folder (Dify's ``ops_trace``) holds
        any object; with nothing under it the bucket or prefix is not Dify's storage, and a StorageError (retried)
        keeps the messages waiting instead of acknowledging records never read (as :meth:`LocalStorage.load`).
        An object of more than ``max_bytes`` is not read (UnreadableFileError)."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            body = response["Body"]
            length = response.get("ContentLength")
            if max_bytes is None:
                data: bytes = body.read()
                return data
            if not (isinstance(length, int) and length > max_bytes):
                data = body.read(max_bytes + 1)
                if len(data) <= max_bytes:
                    return data
                length = len(data)
            with contextlib.suppress(Exception):  # the rest of a large body is not wanted
                body.close()
        except self._client_error as exc:
            if _error_code(exc) not in {"NoSuchKey", "404", "NotFound"}:
                raise StorageError(f"cannot read {key} from s3://{self.bucket}: {_error_code(exc)}") from exc
        except Exception as exc:  # botocore transport errors have no common base worth importing
            raise StorageError(f"cannot read {key} from s3://{self.bucket}: {type(exc).__name__}") from exc
        else:
            raise UnreadableFileError(key, _too_large(length, max_bytes), certain=True)
        top = key.split("/", 1)[0]
        if "/" in key and not self._holds_any(f"{self.prefix}{top}/"):
            raise StorageError(f"cannot read {key}: nothing under s3://{self.bucket}/{self.prefix}{top}/ (is this "
                               "Dify's bucket, and storage.prefix its OPENDAL_S3_ROOT?)")
        return None

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _holds_any(self, folder: str) -> bool:
        """Whether any object's key starts with ``folder`` (one LIST request, asked only for a missing key)."""
        try:
            listed = self._client.list_objects_v2(Bucket=self.bucket, Prefix=folder, MaxKeys=1)
        except Exception as exc:
            raise StorageError(f"cannot list s3://{self.bucket}/{folder}: {_describe(exc)}") from exc
        return bool(listed.get("KeyCount") or listed.get("Contents"))

    def save(self, key: str, data: bytes) -> None:
        """Put the object (S3 writes are atomic)."""
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise StorageError(f"cannot write {key} to s3://{self.bucket}: {_describe(exc)}") from exc

    def delete(self, key: str) -> None:
        """Delete the object (S3 answers success for a missing key)."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if isinstance(exc, self._client_error) and _error_code(exc) in {"NoSuchKey", "404"}:
                return
            raise StorageError(f"cannot delete {key} from s3://{self.bucket}: {_describe(exc)}") from exc

    def describe(self) -> str:
        """``s3://bucket/prefix (endpoint)`` without credentials (an endpoint's password as ``***``)."""
        return f"s3://{self.bucket}/{self.prefix} ({masked_url(self._endpoint)})"


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "") or type(exc).__name__)
    return type(exc).__name__


def _describe(exc: Exception) -> str:
    return _error_code(exc) if getattr(exc, "response", None) else type(exc).__name__


def _client_error_class() -> type[Exception]:
    try:
        from botocore.exceptions import ClientError
    except ImportError:  # an injected fake client without botocore installed
        return _NeverRaised
    error_class: type[Exception] = ClientError
    return error_class


class _NeverRaised(Exception):
    """Stands in for botocore's ClientError when botocore is absent."""


def _s3_client(settings: S3StorageSettings) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError(
            ["storage.type: s3 needs boto3: install traceexport[s3]"], title="missing dependency"
        ) from exc
    try:
        return boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key.get_secret_value() if settings.access_key else None,
            aws_secret_access_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
            config=Config(s3={"addressing_style": settings.addressing_style}, retries={"max_attempts": 3}),
        )
    except Exception as exc:  # botocore's refusal of what the settings say, never its traceback
        raise ConfigError([f"storage.type s3: botocore refuses these settings ({type(exc).__name__})"]) from exc


def open_storage(settings: LocalStorageSettings | S3StorageSettings) -> Storage:
    """The storage backend the settings describe."""
    if isinstance(settings, S3StorageSettings):
        return S3Storage(settings)
    return LocalStorage(settings.path)


__all__ = [
    "LocalStorage",
    "LocalStorageSettings",
    "S3Storage",
    "S3StorageSettings",
    "Storage",
    "StorageError",
    "StorageSettings",
    "UnreadableFileError",
    "check_key",
    "open_storage",
]
