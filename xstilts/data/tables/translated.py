"""Our translate-train corpora (``python -m xstilts.translate``): one task per XTREME language and
translatable intermediate dataset, ``source="translate-train-ours"``.

Naming: ``<dataset>.<lang>`` is a language's default task: the official release's where one
exists (``mnli.de``: XTREME's translation), else ours (``mnli.yo``). Where a release exists ours is
``<dataset>_ours.<lang>`` (``mnli_ours.de``), as XNLI's own MT is ``mnli_mt.<lang>``. Every task of
ours has dataset ``<dataset>_ours`` (``tasks_for("mnli_ours")``: all 39 languages) and the head of
the English task.

A task of ours reads ``translate-train-ours/<layout path>`` or ``<layout path>`` under the data
dir, only together with the ``.manifest.json`` the translator writes beside it, which must say
``source: translate-train-ours``, this language and the file's sha256: an official file is never
read as ours, nor ours after the file changed. The translator writes a language that has an
official release under ``<output_dir>/translate-train-ours/`` (``output_path``), never onto the
release's path unless asked (``--at_release_path``); an official task refuses a file with a
manifest beside it (``readers.read_release``, ``OursRow.official_row``), naming ours to use.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from xstilts.benchmark import TASK2LANGS
from xstilts.data.readers import OURS_SOURCE, read_release
from xstilts.data.spec import TaskRow, TaskSpec

SOURCE = OURS_SOURCE
OURS_DIR = "translate-train-ours"  # ours beside an official release: D/translate-train-ours/<path>
# Every XTREME language but English (the union of the tasks' languages)
XTREME_LANGUAGES = tuple(sorted({lang for langs in TASK2LANGS.values() for lang in langs}
                                - {"en"}))  # fmt: skip
_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The translator's ``file_sha256([path])``: sha256 over the file's name, then its bytes."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _SHA256:
        digest = hashlib.sha256(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def check_manifest(path: str | os.PathLike, manifest: str | os.PathLike, *, language: str,
                   command: str) -> dict[str, Any]:
    """The translator's manifest of ``path``, checked: our source, ``language``, the file's
    sha256; else a ``ValueError`` naming the file, the field and ``command`` (which rewrites it)."""
    path, manifest = Path(path), Path(manifest)
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{manifest}: not a readable translator manifest ({error}); "
                         f"rewrite it with `{command}`") from error
    expected = {"source": SOURCE, "language": language, "file_sha256": file_sha256(path)}
    for key, value in expected.items():
        if not isinstance(record, dict) or record.get(key) != value:
            found = record.get(key) if isinstance(record, dict) else None
            raise ValueError(
                f"{manifest}: {key} is {found!r}, expected {value!r}: {path} is not our "
                f"translation into {language}" + (" as the manifest recorded it (the file "
                "changed since)" if key == "file_sha256" else "") + f"; rewrite it with "
                f"`{command}`")
    return record


def read_ours(path: str | os.PathLike, manifest: str | os.PathLike, *,
              reader: Callable[..., Iterator[dict]], language: str, layout: str, command: str,
              **reader_kwargs: Any) -> Iterator[dict]:
    """``reader``'s examples of ``path`` once its manifest checks out (``check_manifest``);
    ``command`` is the translator's, ``{data_dir}`` filled from ``path`` and its ``layout``."""
    root = Path(path).parents[len(Path(layout).parts) - 1]
    root = root.parent if root.name == OURS_DIR else root
    check_manifest(path, manifest, language=language, command=command.format(data_dir=root))
    return reader(path, **reader_kwargs)


@dataclasses.dataclass(frozen=True)
class OursRow:
    """One translatable dataset (registered like a ``TaskRow``: ``specs()``): ``translate`` is
    the translator's ``--task``, ``path`` its output file (``{lang}``), ``template`` the row whose
    fields (kind, labels, head, epochs, reader) our tasks take, ``official`` the languages an
    official release covers."""

    dataset: str
    translate: str
    path: str
    template: TaskRow
    official: tuple[str, ...] = ()
    reader_kwargs: Mapping[str, Any] | None = None  # None: the template's
    languages: tuple[str, ...] = XTREME_LANGUAGES

    @property
    def source(self) -> str:  # as a TaskRow's (code that walks the table rows reads it)
        return SOURCE

    def name(self, lang: str) -> str:
        return f"{self.dataset}{'_ours' if lang in self.official else ''}.{lang}"

    def command(self, lang: str, data_dir: str = "{data_dir}") -> str:
        return (f"python -m xstilts.translate --task {self.translate} --languages {lang} "
                f"--data_dir {data_dir}")

    def output_path(self, lang: str, *, at_release_path: bool = False) -> str:
        """The translator's file of ``lang`` under its output dir: ``translate-train-ours/`` +
        the layout path where an official release exists (unless ``at_release_path``)."""
        path = self.path.format(lang=lang)
        return f"{OURS_DIR}/{path}" if lang in self.official and not at_release_path else path

    def official_row(self) -> TaskRow:
        """The official release's row (``template``) whose reader refuses our translation
        (``readers.read_release``: a file with a manifest beside it), naming this dataset's
        task of ours."""
        return dataclasses.replace(self.template, reader=functools.partial(
            read_release, reader=self.template.reader, ours=f"{self.dataset}_ours"))

    def spec(self, lang: str) -> TaskSpec:
        base = self.template.spec(lang)
        path = self.path.format(lang=lang)
        kwargs = base.reader_kwargs if self.reader_kwargs is None else self.reader_kwargs
        return dataclasses.replace(
            base, name=self.name(lang), dataset=f"{self.dataset}_ours", role="intermediate",
            head=base.head or base.dataset, source=SOURCE, train_task=None,
            splits={"train": tuple(f"{root}{path}|{root}{path}.manifest.json"
                                   for root in (f"{OURS_DIR}/", ""))},
            reader=functools.partial(read_ours, reader=base.reader, language=lang, layout=path,
                                     command=self.command(lang), **kwargs),
            reader_kwargs={}, tfds_name=None, tfds_splits={},
            made_by=f"our translation (and its .manifest.json): write it with "
                    f"`{self.command(lang)}`")

    def specs(self) -> list[TaskSpec]:
        return [self.spec(lang) for lang in self.languages]
