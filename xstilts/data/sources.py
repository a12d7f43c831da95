"""Where a task's examples come from: its native files, its TFDS builder, or the synthetic world.

No silent fallbacks: ``resolve`` reads the prepared file of a split (the first of its candidate
paths that exists, skipping sample files) or fails naming every path it looked for. A sample
(a candidate under ``english/`` or with ``sample``, ``head300`` or ``hf_dummy`` in its path, as
the shared test samples are laid out) is read only when the caller passes ``allow_samples=True``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from xstilts.data.readers import DataFormatError
from xstilts.data.registry import get_task
from xstilts.data.spec import SAMPLE_DIRS, SAMPLE_MARKERS, TaskSpec, is_sample
from xstilts.data.tfds_sources import tfds_examples

SOURCES = ("files", "tfds")
__all__ = ["SAMPLE_DIRS", "SAMPLE_MARKERS", "examples", "in_task", "is_sample",
           "load_retrieval", "num_examples", "read", "resolve"]


def resolve(
    spec: TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    allow_samples: bool = False,
) -> list[Path]:
    """The file(s) of ``split`` (``TaskSpec.path``): the first candidate whose files all exist,
    sample candidates only with ``allow_samples``; else ``FileNotFoundError`` naming every path
    looked for."""
    return spec.path(split, data_dir, allow_samples=allow_samples)


def read(
    spec: TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    allow_samples: bool = False,
) -> Iterator[dict]:
    """Examples of ``split`` from the file(s) ``resolve`` picks, as the reader yields them; a
    ``DataFormatError`` (``path:line: ...``) also names the task and split (``in_task``)."""
    paths = resolve(spec, split, data_dir, allow_samples=allow_samples)
    return _naming_task(spec.reader(*paths, **spec.reader_kwargs), spec.name, split)


def in_task(error: DataFormatError, task: str, split: str) -> DataFormatError:
    """``error`` with `` (task 'x', split 'y')`` added; its ``path:line:`` prefix kept."""
    if getattr(error, "task", None) is not None:
        return error
    where = error.path if error.line is None else f"{error.path}:{error.line}"
    text = str(error)
    message = text[len(where) + 2:] if text.startswith(f"{where}: ") else text
    named = DataFormatError(error.path, error.line, f"{message} (task {task!r}, split {split!r})")
    named.task, named.split = task, split
    return named


def _naming_task(examples: Iterator[dict], task: str, split: str) -> Iterator[dict]:
    try:
        yield from examples
    except DataFormatError as error:
        raise in_task(error, task, split) from None


def examples(
    spec: TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "files",
    *,
    allow_samples: bool = False,
) -> Iterator[dict]:
    """Examples of ``split`` as plain dicts (see ``readers.py``): from the native files under
    ``data_dir`` (``source="files"``; the synthetic world's files too, written by
    ``SyntheticWorld.write_files``), or from the prepared TFDS builder ``spec.tfds_name`` in the
    TFDS data dir ``data_dir`` (``source="tfds"``, needs tensorflow-datasets). Sample files are
    read only with ``allow_samples`` (see ``resolve``)."""
    if source == "files":
        return read(spec, split, data_dir, allow_samples=allow_samples)
    if source == "tfds":
        return tfds_examples(spec, split, data_dir)
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


def num_examples(
    spec: TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "files",
    *,
    allow_samples: bool = False,
) -> int:
    return sum(1 for _ in examples(spec, split, data_dir, source, allow_samples=allow_samples))


def load_retrieval(
    name: str, split: str = "test", data_dir: str | os.PathLike | None = None, *,
    allow_samples: bool = False,
) -> dict[str, list]:
    """A retrieval task's two sides and gold pairs: ``{"source": [(id, text)], "target":
    [(id, text)], "gold": [(source_id, target_id)]}``. Tatoeba's gold is line ``i`` <-> line
    ``i``; BUCC's comes from its gold file (empty for the test split, whose gold is withheld)."""
    spec = get_task(name)
    if spec.kind != "retrieval":
        raise ValueError(f"task {name} is a {spec.kind} task, not a retrieval task")
    out: dict[str, list] = {"source": [], "target": [], "gold": []}
    for e in read(spec, split, data_dir, allow_samples=allow_samples):
        if "source" in e:  # Tatoeba layout
            out["source"].append((e["id"], e["source"]))
            out["target"].append((e["id"], e["target"]))
            out["gold"].append((e["id"], e["id"]))
        elif e["side"] == "gold":
            out["gold"].append(tuple(e["id"].split("\t")))
        else:
            out[e["side"]].append((e["id"], e["text"]))
    return out
