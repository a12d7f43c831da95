"""Where a task's examples come from: its native files, its TFDS builder, or the synthetic world."""

from __future__ import annotations

import os
from collections.abc import Iterator

from xstilts.data.registry import get_task
from xstilts.data.spec import TaskSpec
from xstilts.data.tfds_sources import tfds_examples

SOURCES = ("files", "tfds")


def examples(
    spec: TaskSpec, split: str, data_dir: str | os.PathLike | None = None, source: str = "files"
) -> Iterator[dict]:
    """Examples of ``split`` as plain dicts (see ``readers.py``): from the native files under
    ``data_dir`` (``source="files"``; the synthetic world's files too, written by
    ``SyntheticWorld.write_files``), or from the prepared TFDS builder ``spec.tfds_name`` in the
    TFDS data dir ``data_dir`` (``source="tfds"``, needs tensorflow-datasets)."""
    if source == "files":
        return spec.examples(split, data_dir)
    if source == "tfds":
        return tfds_examples(spec, split, data_dir)
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


def num_examples(
    spec: TaskSpec, split: str, data_dir: str | os.PathLike | None = None, source: str = "files"
) -> int:
    return sum(1 for _ in examples(spec, split, data_dir, source))


def load_retrieval(
    name: str, split: str = "test", data_dir: str | os.PathLike | None = None
) -> dict[str, list]:
    """A retrieval task's two sides and gold pairs: ``{"source": [(id, text)], "target":
    [(id, text)], "gold": [(source_id, target_id)]}``. Tatoeba's gold is line ``i`` <-> line
    ``i``; BUCC's comes from its gold file (empty for the test split, whose gold is withheld)."""
    spec = get_task(name)
    if spec.kind != "retrieval":
        raise ValueError(f"task {name} is a {spec.kind} task, not a retrieval task")
    out: dict[str, list] = {"source": [], "target": [], "gold": []}
    for e in spec.examples(split, data_dir):
        if "source" in e:  # Tatoeba layout
            out["source"].append((e["id"], e["source"]))
            out["target"].append((e["id"], e["target"]))
            out["gold"].append((e["id"], e["id"]))
        elif e["side"] == "gold":
            out["gold"].append(tuple(e["id"].split("\t")))
        else:
            out[e["side"]].append((e["id"], e["text"]))
    return out
