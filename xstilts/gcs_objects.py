"""One Google Cloud Storage object written and removed under generation preconditions: the
create-if-absent (``if_generation_match=0``) and delete-if-unchanged that a lock needs
(``checkpoints.RunLock`` on ``gs://``). Needs ``google-cloud-storage``; ``available()`` says
whether it is installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def available() -> bool:
    """Whether ``google-cloud-storage`` can be imported (the precondition needs its client)."""
    try:
        return importlib.util.find_spec("google.cloud.storage") is not None
    except ModuleNotFoundError:  # no google.cloud namespace at all
        return False


def split_url(url: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; anything else is a ValueError."""
    if not url.startswith("gs://"):
        raise ValueError(f"{url}: not a gs:// URL")
    bucket, _, name = url[len("gs://"):].partition("/")
    if not bucket or not name:
        raise ValueError(f"{url}: expected gs://<bucket>/<object>")
    return bucket, name


class GcsObject:
    """``url``'s object through a ``google.cloud.storage.Client`` (``client``; default: one
    made with the environment's credentials). ``generation`` is that of the object this
    instance created (None before)."""

    def __init__(self, url: str, client: Any = None) -> None:
        from google.cloud import storage

        bucket, self.name = split_url(url)
        self.url = url
        self.bucket = (client or storage.Client()).bucket(bucket)
        self.generation: int | None = None

    def create(self, text: str) -> bool:
        """Write ``text`` only if no object of this name exists (one request, atomic on the
        server); False when one does."""
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self.name)
        try:
            blob.upload_from_string(text, content_type="application/json",
                                    if_generation_match=0)
        except PreconditionFailed:
            return False
        self.generation = int(blob.generation)
        return True

    def read(self) -> tuple[str, int] | None:
        """(text, generation) of the object, or None when there is none (or it was replaced
        while being read: the caller reads again)."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self.bucket.get_blob(self.name)
        if blob is None:
            return None
        try:
            return blob.download_as_text(if_generation_match=blob.generation), int(blob.generation)
        except (NotFound, PreconditionFailed):
            return None

    def delete(self, generation: int) -> bool:
        """Remove the object if it is still generation ``generation``; False when it is gone or
        another writer replaced it."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self.bucket.blob(self.name).delete(if_generation_match=generation)
        except (NotFound, PreconditionFailed):
            return False
        return True
