"""Reading, writing and deleting Dify storage files: a local directory, and S3 through an injected client."""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from traceexport.errors import ConfigError
from traceexport.sources.storage import (
    LocalStorage,
    LocalStorageSettings,
    S3Storage,
    S3StorageSettings,
    StorageError,
    UnreadableFileError,
    check_key,
    open_storage,
)

KEY = "ops_trace/83d767f2-49a5-4a3f-89fd-fdebaf4cfca1/0f1e2d3c4b5a.json"


def test_local_storage_round_trip_and_missing_file_is_none(tmp_path: Path) -> None:
    """save → load returns the bytes, delete removes them, and a missing file loads as None."""
    storage = LocalStorage(tmp_path)
    storage.save(KEY, b'{"a":1}')
    assert (tmp_path / KEY).read_bytes() == b'{"a":1}'
    assert storage.load(KEY) == b'{"a":1}'
    storage.delete(KEY)
    assert storage.load(KEY) is None
    storage.delete(KEY)  # deleting twice is fine


def test_local_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    """Overwriting goes through a temporary file and rename; nothing else is left in the folder."""
    storage = LocalStorage(tmp_path)
    storage.save(KEY, b"one")
    storage.save(KEY, b"two")
    assert storage.load(KEY) == b"two"
    assert [p.name for p in (tmp_path / KEY).parent.iterdir()] == ["0f1e2d3c4b5a.json"]


def test_local_io_failure_is_a_storage_error(tmp_path: Path) -> None:
    """An I/O error (here a file where a directory should be) is a StorageError, not a crash."""
    (tmp_path / "ops_trace").write_text("not a directory")
    storage = LocalStorage(tmp_path)
    with pytest.raises(StorageError, match="cannot read"):
        storage.load(KEY)
    with pytest.raises(StorageError, match="cannot write"):
        storage.save(KEY, b"x")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path: path.mkdir(), "a directory"),
        (lambda path: os.mkfifo(path), "a FIFO"),
        (lambda path: path.symlink_to("/etc/hostname"), "a symbolic link"),
        (lambda path: path.symlink_to(path.parent / "elsewhere"), "a symbolic link"),
    ],
)
def test_only_a_regular_file_is_read_never_a_directory_a_fifo_or_a_link(
    tmp_path: Path, make: Callable[[Path], Any], kind: str
) -> None:
    """What is not a regular file at a key (a directory, a FIFO nobody writes to, a symbolic link, even to a
    readable file) is refused at once as UnreadableFileError naming what it is: a FIFO no longer blocks the read
    for ever, and a link never brings a file from outside Dify's storage in."""
    path = tmp_path / KEY
    path.parent.mkdir(parents=True)
    (path.parent / "elsewhere").write_bytes(b"{}")
    make(path)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=_load_into, args=(LocalStorage(tmp_path), outcome), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "the read blocked"
    assert isinstance(outcome[0], UnreadableFileError) and outcome[0].certain
    assert str(outcome[0]) == f"cannot read {KEY}: {kind}, not a regular file"


def test_a_file_larger_than_max_bytes_is_refused_without_being_read(tmp_path: Path) -> None:
    """A file of more than ``max_bytes`` is UnreadableFileError saying how large it is and the limit (one line);
    one of exactly ``max_bytes`` loads."""
    storage = LocalStorage(tmp_path)
    storage.save(KEY, b"x" * 100)
    assert storage.load(KEY, max_bytes=100) == b"x" * 100
    with pytest.raises(UnreadableFileError) as info:
        storage.load(KEY, max_bytes=99)
    assert info.value.certain and str(info.value) == (
        f"cannot read {KEY}: 100 bytes or more, larger than the 99 bytes a trace file may have (max_file_bytes)")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc/self/fd")
def test_a_folder_linked_out_of_the_storage_is_not_followed_but_a_link_inside_it_and_a_linked_root_are(
    tmp_path: Path,
) -> None:
    """An app folder that is a symbolic link to outside the storage root would let whoever writes Dify's storage
    have the sidecar read (and keep, and delete) files elsewhere: refused, as permission denied is (it may be the
    whole storage's layout). A link that stays inside the root, and a root that is itself a link, are fine."""
    real_root = tmp_path / "real-storage"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "0f1e2d3c4b5a.json").write_bytes(b'{"secret": 1}')
    (real_root / "ops_trace").mkdir(parents=True)
    (real_root / "ops_trace" / "83d767f2-49a5-4a3f-89fd-fdebaf4cfca1").symlink_to(outside)
    (tmp_path / "root-link").symlink_to(real_root)
    storage = LocalStorage(tmp_path / "root-link")
    with pytest.raises(UnreadableFileError, match="reached through a symbolic link to outside") as info:
        storage.load(KEY)
    assert not info.value.certain
    (real_root / "ops_trace" / "inside").mkdir()
    (real_root / "ops_trace" / "inside" / "0f1e2d3c4b5a.json").write_bytes(b"{}")
    (real_root / "ops_trace" / "83d767f2-49a5-4a3f-89fd-fdebaf4cfca1").unlink()
    (real_root / "ops_trace" / "83d767f2-49a5-4a3f-89fd-fdebaf4cfca1").symlink_to(real_root / "ops_trace" / "inside")
    assert storage.load(KEY) == b"{}"


def _load_into(storage: LocalStorage, outcome: list[BaseException]) -> None:
    try:
        storage.load(KEY)
    except BaseException as exc:  # the test inspects whatever it was
        outcome.append(exc)
    else:
        outcome.append(AssertionError("loaded"))


def test_a_missing_file_in_a_root_without_difys_folder_is_a_storage_error(tmp_path: Path) -> None:
    """A root without ``ops_trace/`` is not Dify's storage (not mounted, wrong path): a missing file there is a
    StorageError naming the folder, not "already handled"; once the folder exists it loads as None."""
    storage = LocalStorage(tmp_path / "not-mounted")
    with pytest.raises(StorageError, match=r"no folder ops_trace/ in .*not-mounted \(is Dify's storage mounted"):
        storage.load(KEY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="no folder ops_trace/"):
        LocalStorage(tmp_path / "empty").load(KEY)
    (tmp_path / "empty" / "ops_trace").mkdir()
    assert LocalStorage(tmp_path / "empty").load(KEY) is None


@pytest.mark.parametrize("key", ["", "../etc/passwd", "ops_trace/../x.json", "/abs/path", "a//b", "ops_trace/.hidden"])
def test_unsafe_keys_are_refused(key: str) -> None:
    """Keys that are empty, absolute, or climb out of the storage root are refused."""
    with pytest.raises(ValueError, match="unsafe storage key"):
        check_key(key)


def test_open_storage_defaults_to_difys_docker_path() -> None:
    """``storage: {type: local}`` means Dify's docker volume path /app/api/storage."""
    storage = open_storage(LocalStorageSettings())
    assert isinstance(storage, LocalStorage)
    assert storage.describe() == "local:/app/api/storage"


class FakeS3:
    """The three boto3 S3 client calls the storage uses, over a dict; ``fail`` raises instead."""

    def __init__(self, error_factory: Any) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.fail: str | None = None
        self.content_length = False  # whether get_object's answer says the object's size, as S3's does
        self.error_factory = error_factory

    def _check(self) -> None:
        if self.fail:
            raise self.error_factory(self.fail)

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self._check()
        if (Bucket, Key) not in self.objects:
            raise self.error_factory("NoSuchKey")
        data = self.objects[(Bucket, Key)]
        return {"Body": io.BytesIO(data), **({"ContentLength": len(data)} if self.content_length else {})}

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:
        self._check()
        self.objects[(Bucket, Key)] = Body

    def delete_object(self, Bucket: str, Key: str) -> None:
        self._check()
        self.objects.pop((Bucket, Key), None)

    def list_objects_v2(self, Bucket: str, Prefix: str, MaxKeys: int) -> dict[str, Any]:
        self._check()
        keys = sorted(key for bucket, key in self.objects if bucket == Bucket and key.startswith(Prefix))[:MaxKeys]
        return {"KeyCount": len(keys), **({"Contents": [{"Key": key} for key in keys]} if keys else {})}


@pytest.fixture
def fake_s3() -> FakeS3:
    """A fake S3 client raising botocore's real ClientError; skipped without botocore."""
    exceptions = pytest.importorskip("botocore.exceptions", reason="botocore is not installed (traceexport[s3])")

    def error(code: str) -> Exception:
        return exceptions.ClientError({"Error": {"Code": code, "Message": "secret-free"}}, "Op")  # type: ignore[no-any-return]

    return FakeS3(error)


def test_s3_round_trip_and_no_such_key_is_none(fake_s3: FakeS3) -> None:
    """S3 objects load, save and delete by Dify's key; NoSuchKey loads as None (handled elsewhere) while Dify's
    ops_trace/ folder holds other objects."""
    storage = S3Storage(S3StorageSettings(type="s3", bucket="dify"), client=fake_s3)
    storage.save("ops_trace/other-app/other-file.json", b"{}")
    assert storage.load(KEY) is None
    storage.save(KEY, b"data")
    assert fake_s3.objects[("dify", KEY)] == b"data"
    assert storage.load(KEY) == b"data"
    storage.delete(KEY)
    assert storage.load(KEY) is None


def test_s3_keys_live_under_the_prefix_and_a_bucket_without_difys_folder_is_an_error(fake_s3: FakeS3) -> None:
    """With Dify on S3 through OpenDAL its keys live under OPENDAL_S3_ROOT (storage.prefix); a missing key in a
    bucket or prefix with nothing under ops_trace/ is a StorageError (retried: the messages wait), not a record
    taken as handled by another consumer (every message was acknowledged and its record never read)."""
    fake_s3.objects[("dify", f"dify-root/{KEY}")] = b"data"
    wrong = S3Storage(S3StorageSettings(type="s3", bucket="dify"), client=fake_s3)
    with pytest.raises(StorageError, match=r"nothing under s3://dify/ops_trace/ .*storage.prefix"):
        wrong.load(KEY)
    right = S3Storage(S3StorageSettings(type="s3", bucket="dify", prefix="/dify-root/"), client=fake_s3)
    assert right.load(KEY) == b"data"
    right.delete(KEY)
    assert ("dify", f"dify-root/{KEY}") not in fake_s3.objects
    right.save("ops_trace/app/another.json", b"{}")
    assert right.load(KEY) is None and right.describe().startswith("s3://dify/dify-root/")


def test_an_s3_object_larger_than_max_bytes_is_refused_without_being_read_whole(fake_s3: FakeS3) -> None:
    """An object of more than ``max_bytes`` (by its ContentLength, or by reading one byte past the limit when the
    answer has none) is UnreadableFileError; one of exactly ``max_bytes`` loads."""
    storage = S3Storage(S3StorageSettings(type="s3", bucket="b"), client=fake_s3)
    storage.save(KEY, b"y" * 50)
    assert storage.load(KEY, max_bytes=50) == b"y" * 50
    with pytest.raises(UnreadableFileError, match="50 bytes or more, larger than the 49 bytes"):
        storage.load(KEY, max_bytes=49)
    fake_s3.content_length = True
    with pytest.raises(UnreadableFileError, match="50 bytes or more, larger than the 10 bytes"):
        storage.load(KEY, max_bytes=10)


def test_s3_errors_are_storage_errors_without_credentials(fake_s3: FakeS3) -> None:
    """Other S3 errors become StorageError naming the error code; settings never print the secret key."""
    settings = S3StorageSettings(type="s3", bucket="dify", access_key="AKIAEXAMPLE", secret_key="s3cr3t-value")  # type: ignore[arg-type]
    storage = S3Storage(settings, client=fake_s3)
    fake_s3.fail = "SlowDown"
    with pytest.raises(StorageError, match="SlowDown") as info:
        storage.load(KEY)
    assert "s3cr3t-value" not in str(info.value) and "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in storage.describe()


def test_s3_without_boto3_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Choosing S3 without the s3 extra installed fails at start-up naming traceexport[s3]."""
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"traceexport\[s3\]"):
        open_storage(S3StorageSettings(type="s3", bucket="dify"))


@pytest.mark.parametrize(
    ("section", "where", "why"),
    [
        ({"endpoint_url": "s3.example.com"}, "endpoint_url", "http:// or https:// URL"),
        ({"region": "us east 1"}, "region", "region name"),
        ({"bucket": "dify ai/x"}, "bucket", "bucket name"),
    ],
)
def test_s3_settings_botocore_would_refuse_are_config_problems(section: dict[str, str], where: str, why: str) -> None:
    """An endpoint without its scheme, a region or bucket botocore refuses are problems naming the key when the
    config is validated (they crashed serve's start-up with botocore's traceback); Dify's usual values pass."""
    with pytest.raises(ValidationError) as info:
        S3StorageSettings.model_validate({"type": "s3", "bucket": "difyai", **section})
    assert info.value.errors()[0]["loc"] == (where,) and why in info.value.errors()[0]["msg"]
    S3StorageSettings.model_validate({"type": "s3", "bucket": "difyai", "region": "us-east-1",
                                      "endpoint_url": "https://minio.internal:9000"})


def test_an_s3_client_botocore_refuses_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever else botocore refuses when the client is made is a ConfigError naming the storage, not a
    traceback, and it does not quote the settings."""
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (traceexport[s3])")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("Invalid endpoint: https://user:s3cr3t-value@x")

    monkeypatch.setattr(boto3, "client", refuse)
    with pytest.raises(ConfigError, match=r"storage.type s3: botocore refuses these settings \(ValueError\)") as info:
        open_storage(S3StorageSettings(type="s3", bucket="dify"))
    assert "s3cr3t-value" not in str(info.value)
