"""Issue 18 item 4 on ``gs://``: ``RunLock`` creates its object with a does-not-exist
precondition and deletes only the generation it wrote, through ``google-cloud-storage``'s
``Client`` API. No network: a bucket fake that keeps GCS's generation semantics (every write a
new generation; ``if_generation_match=0`` fails on an existing object; a mismatched generation
is ``PreconditionFailed``, a missing object ``NotFound``: the library's own exceptions)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import subprocess

import pytest

pytest.importorskip("google.cloud.storage")
from google.api_core.exceptions import NotFound, PreconditionFailed  # noqa: E402

from xstilts import checkpoints, gcs_objects  # noqa: E402

RUN = "gs://bucket/runs/a"
LOCK = f"{RUN}/{checkpoints.LOCK_NAME}"


class FakeBlob:
    def __init__(self, bucket: FakeBucket, name: str, generation: int | None = None):
        self.bucket, self.name, self.generation = bucket, name, generation

    def upload_from_string(self, data, content_type=None, if_generation_match=None):
        self.bucket.calls.append(("upload", self.name, if_generation_match))
        current = self.bucket.objects.get(self.name)
        if if_generation_match is not None and (current[1] if current else 0) != \
                if_generation_match:
            raise PreconditionFailed(f"{self.name}: generation mismatch")
        self.generation = next(self.bucket.generations)
        self.bucket.objects[self.name] = (data, self.generation)

    def download_as_text(self, if_generation_match=None):
        current = self.bucket.objects.get(self.name)
        if current is None:
            raise NotFound(self.name)
        if if_generation_match is not None and current[1] != if_generation_match:
            raise PreconditionFailed(self.name)
        return current[0]

    def delete(self, if_generation_match=None):
        self.bucket.calls.append(("delete", self.name, if_generation_match))
        current = self.bucket.objects.get(self.name)
        if current is None:
            raise NotFound(self.name)
        if if_generation_match is not None and current[1] != if_generation_match:
            raise PreconditionFailed(self.name)
        del self.bucket.objects[self.name]


class FakeBucket:
    def __init__(self):
        self.objects: dict[str, tuple[str, int]] = {}
        self.generations = itertools.count(1000)
        self.calls: list[tuple] = []

    def blob(self, name):
        return FakeBlob(self, name)

    def get_blob(self, name):
        current = self.objects.get(name)
        return None if current is None else FakeBlob(self, name, current[1])


class FakeClient:
    def __init__(self):
        self.buckets: dict[str, FakeBucket] = {}

    def bucket(self, name):
        return self.buckets.setdefault(name, FakeBucket())


@pytest.fixture
def client():
    return FakeClient()


def _holder(client) -> dict:
    return json.loads(client.bucket("bucket").objects["runs/a/writer.lock"][0])


def test_the_lock_object_is_created_if_absent_and_deleted_by_generation(client):
    bucket = client.bucket("bucket")
    with checkpoints.RunLock(RUN, gcs_client=client) as lock:
        assert _holder(client)["pid"] == os.getpid()
        assert _holder(client)["host"] == socket.gethostname()
        generation = bucket.objects["runs/a/writer.lock"][1]
        assert lock.holder()["pid"] == os.getpid()
    # one create with the does-not-exist precondition (no check first), one delete of the very
    # generation it wrote; nothing left
    assert bucket.calls == [("upload", "runs/a/writer.lock", 0),
                            ("delete", "runs/a/writer.lock", generation)]
    assert bucket.objects == {}


def test_a_second_writer_is_refused_by_the_precondition_naming_the_holder(client):
    bucket = client.bucket("bucket")
    bucket.objects["runs/a/writer.lock"] = (json.dumps(
        {"pid": 4321, "host": "tpu-worker-3", "started": 0, "command": "python -m x"}), 7)
    with pytest.raises(checkpoints.RunLockedError, match=(
            rf"^{RUN} is in use: {LOCK} is held by pid 4321 on host tpu-worker-3 .*this host "
            rf"\({socket.gethostname()}\) cannot tell whether that process still runs")):
        checkpoints.RunLock(RUN, gcs_client=client).acquire()
    assert bucket.objects["runs/a/writer.lock"][1] == 7  # the holder's object is untouched
    assert [c[0] for c in bucket.calls] == ["upload"]  # refused by the server, nothing deleted
    # two locks of this process: the second is refused by the same precondition
    bucket.objects.clear()
    with checkpoints.RunLock(RUN, gcs_client=client):
        with pytest.raises(checkpoints.RunLockedError, match="this process already writes"):
            checkpoints.RunLock(RUN, gcs_client=client).acquire()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_taken_over_by_its_generation(client, caplog):
    bucket = client.bucket("bucket")
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}
    bucket.objects["runs/a/writer.lock"] = (json.dumps(stale), 11)
    with caplog.at_level(logging.WARNING), checkpoints.RunLock(RUN, gcs_client=client):
        assert _holder(client)["pid"] == os.getpid()
    assert "taking over a stale lock" in caplog.text
    assert ("delete", "runs/a/writer.lock", 11) in bucket.calls and bucket.objects == {}


def test_a_stale_lock_replaced_meanwhile_is_not_deleted(client, monkeypatch):
    """Two runs take over the same stale lock: the one whose delete comes second finds another
    generation, deletes nothing, and reports the new holder."""
    bucket = client.bucket("bucket")
    bucket.objects["runs/a/writer.lock"] = (json.dumps(
        {"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}), 11)
    original = gcs_objects.GcsObject.delete

    def racing(self, generation):  # the other run took it over just before our delete
        bucket.objects["runs/a/writer.lock"] = (json.dumps(
            {"pid": 99, "host": "other-host", "started": 0}), 12)
        return original(self, generation)

    monkeypatch.setattr(gcs_objects.GcsObject, "delete", racing)
    with pytest.raises(checkpoints.RunLockedError, match=r"held by pid 99 on host other-host"):
        checkpoints.RunLock(RUN, gcs_client=client).acquire()
    assert bucket.objects["runs/a/writer.lock"][1] == 12


def test_release_leaves_a_lock_another_run_wrote_since(client, caplog):
    bucket = client.bucket("bucket")
    lock = checkpoints.RunLock(RUN, gcs_client=client).acquire()
    bucket.objects["runs/a/writer.lock"] = ("{}", 99)  # deleted by hand and taken by another
    with caplog.at_level(logging.WARNING):
        lock.release()
    assert bucket.objects["runs/a/writer.lock"] == ("{}", 99)
    assert "no longer the lock this run created" in caplog.text


def test_gcs_urls_are_checked():
    assert gcs_objects.split_url("gs://b/x/y") == ("b", "x/y")
    with pytest.raises(ValueError, match="expected gs://<bucket>/<object>"):
        gcs_objects.split_url("gs://b")
    assert gcs_objects.available()
