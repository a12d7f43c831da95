"""Provenance of the data a run reads: per task and split, the files (path relative to the data
directory, bytes, sha256), examples read, examples dropped / flagged / truncated by reason, and
for a mixture each task's rate and effective share. Pure collection; ``describe.py`` prints it
and the experiment driver writes it to ``<run_dir>/data_manifest.json``.

A record (one task split)::

    {"task": "mnli.bg", "split": "train", "kind": "classification", "source": "translate-train",
     "mixture": "intermediate.mnli.multilingual" | None, "max_length": 256 | None,
     "files": [{"path": "xnli/translate-train/en-bg-translated.tsv", "bytes": ..., "sha256": ...,
                "sample": False, "source": "translate-train"}],
     "examples": 392702, "kept": 392699, "features": 392702 | None, "featurized": True,
     "dropped": {"missing_label": 3}, "flagged": {}, "truncated": {"too_long": 12},
     "rate": 0.071 | None, "share": 0.071 | None}

A file's ``source`` is its task's: ``translate-train`` (an official release), ``native``,
``synthetic``, ``local-only``, or ``translate-train-ours`` (``python -m xstilts.translate``; its
data file adds ``model`` and ``model_sha256`` from the translator's ``.manifest.json``, the
second file listed).

``examples``: what the reader yields; ``kept``: those left after the featurization drops (the
training split's examples the batches hold). ``dropped``: examples removed, by reason, at read time
(``misaligned_answer_span`` of a translate-train SQuAD file read with ``on_misaligned="drop"``)
or by featurization of the ``train`` split (``preprocessors.DROP_REASONS``). ``flagged``: the
same reasons on other splits, where the examples are kept. ``truncated``: kept but cut
(``preprocessors.TRUNCATION_REASONS``; needs a tokenizer, ``featurized`` says whether one was
used). ``rate``: the probability that a training step draws the task (``mixture_rates`` over
featurized sizes, as ``pipeline.mixture_batcher`` uses; example counts without a tokenizer).
``share``: the task's effective share of the examples the mixture feeds,
``rate_i * examples_i / features_i`` normalised (a QA example split into two windows needs two
draws), equal to ``rate`` when every example is one feature (an MLM example is a packed row).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xstilts.data import pipeline, sources
from xstilts.data.readers import OURS_SOURCE
from xstilts.data.spec import TaskSpec, data_directory
from xstilts.data.tasks import get_task, mixture_rates, mixture_tasks

MANIFEST_VERSION = 1
MISALIGNED = "misaligned_answer_span"
_SHA256: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> digest
_QA_COUNTS: dict[str, int] = {}  # sha256 -> questions in a SQuAD-layout file
MaxLength = int | Mapping[str, int] | None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, remembered per (path, size, mtime) for the process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def file_record(path: Path, root: Path, source: str | None = None) -> dict[str, Any]:
    """``{"path" (relative to root), "bytes", "sha256", "sample"[, "source"]}`` of one data
    file; a translation of ours (``source`` translate-train-ours, not its manifest) also has the
    ``model`` and ``model_sha256`` its translator manifest (``<file>.manifest.json``) records."""
    relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    record = {
        "path": relative,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "sample": sources.is_sample(relative),
    }
    if source is not None:
        record["source"] = source
    if source == OURS_SOURCE and not path.name.endswith(".manifest.json"):
        manifest = path.with_name(path.name + ".manifest.json")
        translator = json.loads(manifest.read_text(encoding="utf-8"))
        missing = [key for key in ("model", "model_sha256") if key not in translator]
        if missing:
            raise ValueError(f"{manifest}: no {missing} (not written by python -m "
                             f"xstilts.translate?); translate {relative} again")
        record.update(model=translator["model"], model_sha256=translator["model_sha256"])
    return record


def _qa_questions(path: Path) -> int:
    """Questions in a SQuAD-layout JSON file (paragraph or flat Hugging Face layout)."""
    digest = sha256_file(path)
    if digest not in _QA_COUNTS:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)["data"]
        _QA_COUNTS[digest] = sum(
            1 if "paragraphs" not in article else
            sum(len(paragraph["qas"]) for paragraph in article["paragraphs"])
            for article in data
        )  # fmt: skip
    return _QA_COUNTS[digest]


def reader_dropped(spec: TaskSpec, paths: Sequence[Path], examples: int) -> dict[str, int]:
    """Examples the reader itself skipped, by reason: today the questions of a translate-train
    SQuAD file whose answers are all misaligned (``on_misaligned="drop"``)."""
    if spec.kind != "qa" or spec.reader_kwargs.get("on_misaligned") != "drop":
        return {}
    skipped = sum(_qa_questions(path) for path in paths) - examples
    return {MISALIGNED: skipped} if skipped else {}


def _merge(*counts: Mapping[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for part in counts:
        total.update(part)
    return {reason: n for reason, n in sorted(total.items()) if n}


def _unfeaturized_stats(
    spec: TaskSpec, split: str, data_dir: Any, allow_samples: bool
) -> dict[str, Any]:
    """Reader counts and tokenizer-free problems (``pipeline.usable_examples``) of a split."""
    counts: Counter[str] = Counter()
    examples = list(sources.read(spec, split, data_dir, allow_samples=allow_samples))
    training = split == pipeline.TRAIN_SPLIT
    pipeline.usable_examples(spec, examples, training=training, counts=counts)
    record = pipeline.featurization_stats(len(examples), 0, counts, training=training)
    return {**record, "features": None}


def _json_safe(example: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(example), default=str))


def first_examples(
    spec: TaskSpec, split: str, data_dir: Any = None, k: int = 0, *, allow_samples: bool = False
) -> list[dict[str, Any]]:
    """The first ``k`` examples of a split as the reader yields them (JSON-safe)."""
    reader = sources.read(spec, split, data_dir, allow_samples=allow_samples)
    return [_json_safe(example) for example in itertools.islice(reader, k)]


def task_split_record(
    spec: TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    stats: Mapping[str, Any] | None = None,
    max_length: int | None = None,
    first: int = 0,
    allow_samples: bool = False,
) -> dict[str, Any]:
    """The record of one task split (see the module docstring). ``stats``: the pipeline's
    ``featurization_stats`` of the split (``featurized``); without them the split is read once
    and only tokenizer-free problems are counted. ``first``: add the first ``first`` examples.
    A missing file raises ``FileNotFoundError`` naming every path looked for."""
    root = data_directory(data_dir)
    paths = sources.resolve(spec, split, root, allow_samples=allow_samples)
    featurized = stats is not None
    if stats is None:
        stats = _unfeaturized_stats(spec, split, root, allow_samples)
    record = {
        "task": spec.name,
        "split": split,
        "kind": spec.kind,
        "source": spec.source,
        "mixture": None,
        "max_length": (max_length or spec.max_length) if featurized else None,
        "files": [file_record(path, root, spec.source) for path in paths],
        "examples": stats["examples"],
        "kept": stats["examples"] - sum(stats["dropped"].values()),
        "features": stats["features"],
        "featurized": featurized,
        "dropped": _merge(reader_dropped(spec, paths, stats["examples"]), stats["dropped"]),
        "flagged": _merge(stats["flagged"]),
        "truncated": _merge(stats["truncated"]),
        "rate": None,
        "share": None,
    }
    if first:
        record["first"] = first_examples(spec, split, root, first, allow_samples=allow_samples)
    return record


def _length(max_length: MaxLength, task: str) -> int | None:
    return max_length.get(task) if isinstance(max_length, Mapping) else max_length


def records_for_tasks(
    names_and_splits: Iterable[tuple[str, str]],
    data_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    max_length: MaxLength = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_samples: bool = False,
    first: int = 0,
) -> list[dict[str, Any]]:
    """One record per ``(task, split)``. With a ``tokenizer`` the counts are the pipeline's
    (``pipeline.cached_stats``: free when this process or ``cache_dir`` already featurized the
    split at this length, else it featurizes and caches it); ``max_length``: one length, a
    length per task, or None for each task's own. Retrieval tasks are never featurized."""
    records = []
    for name, split in names_and_splits:
        spec = get_task(name)
        length = _length(max_length, name) or spec.max_length
        stats = None
        if tokenizer is not None and spec.kind in pipeline.FEATURIZED_KINDS:
            stats = pipeline.cached_stats(name, split, tokenizer, data_dir=data_dir,
                                          max_length=length, cache_dir=cache_dir,
                                          allow_samples=allow_samples)  # fmt: skip
        records.append(task_split_record(spec, split, data_dir, stats=stats, max_length=length,
                                         first=first, allow_samples=allow_samples))  # fmt: skip
    return records


def add_shares(mixture: str, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` of mixture ``mixture``'s tasks with ``mixture``, ``rate`` and ``share`` set
    (sizes: features when featurized, else examples)."""
    size = {r["task"]: r["features"] if r["featurized"] else r["examples"] for r in records}
    rates = mixture_rates(mixture, size)
    weight = {task: rates[task] * _examples_per_feature(r)
              for task, r in ((r["task"], r) for r in records)}  # fmt: skip
    total = sum(weight.values()) or 1.0
    return [{**r, "mixture": mixture, "rate": rates[r["task"]],
             "share": weight[r["task"]] / total} for r in records]  # fmt: skip


def _examples_per_feature(record: Mapping[str, Any]) -> float:
    if not record["featurized"] or not record["features"] or record["kind"] == "mlm":
        return 1.0
    return record["kept"] / record["features"]


def records_for_mixture(
    mixture: str,
    data_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    max_length: MaxLength = None,
    *,
    split: str = pipeline.TRAIN_SPLIT,
    cache_dir: str | os.PathLike | None = None,
    allow_samples: bool = False,
    first: int = 0,
) -> list[dict[str, Any]]:
    """A record per task of ``mixture`` (its sub-mixtures' included), with rates and shares."""
    pairs = [(task, split) for task in mixture_tasks(mixture)]
    records = records_for_tasks(pairs, data_dir, tokenizer, max_length, cache_dir=cache_dir,
                                allow_samples=allow_samples, first=first)  # fmt: skip
    return add_shares(mixture, records)


def _order(record: Mapping[str, Any]) -> tuple:
    return (record.get("mixture") or "", record["task"], record["split"],
            record.get("max_length") or 0)  # fmt: skip


def manifest_json(records: Iterable[Mapping[str, Any]],
                  old: Iterable[Mapping[str, Any]] = ()) -> str:
    """The manifest file's text: ``{"version", "records"}``, ``records`` replacing those of
    ``old`` with the same (mixture, task, split, max_length), in that order, keys sorted."""
    new = {_order(r): dict(r) for r in records}
    kept = {_order(r): r for r in old}
    merged = [{**kept, **new}[key] for key in sorted({**kept, **new})]
    return json.dumps({"version": MANIFEST_VERSION, "records": merged}, indent=1,
                      sort_keys=True, ensure_ascii=False)


def write_manifest(
    path: str | os.PathLike, records: Iterable[Mapping[str, Any]], *, merge: bool = False
) -> Path:
    """``{"version", "records"}`` as JSON at ``path``, records in a deterministic order
    (mixture, task, split, max_length), keys sorted, written atomically (temporary file and
    rename). ``merge``: keep the records already in the file that the new ones do not
    replace (same mixture, task, split and max_length)."""
    path = Path(path)
    old = read_manifest(path) if merge and path.is_file() else []
    text = manifest_json(records, old)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a manifest written by ``write_manifest``."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {document.get('version')!r}, expected "
                         f"{MANIFEST_VERSION}")  # fmt: skip
    return document["records"]
