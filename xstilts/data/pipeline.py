"""From a registered task or mixture name to fixed-shape batches: read, featurize (cached on
disk, written atomically), batch. Pure Python/numpy.

Example::

    tok = XLMRTokenizer.from_pretrained(checkpoint_dir)
    batcher = mixture_batcher("intermediate.mnli.multilingual", tok, data_dir="data",
                              batch_size=32, seed=0, shard_info=ShardInfo(jax.process_index(),
                                                                          jax.process_count()))
    task_name, batch = batcher.batch(step)       # a pure function of step: exact resume

Featurization is done once per split and host share: the split is cut into parts of
``PART_SIZE`` examples, each featurized with the batched tokenizer path (``encode_texts``, one
SentencePiece call per ``CHUNK`` examples) and, with ``cache_dir``, pickled there; with a
``shard_info`` (the hosts sharing ``cache_dir``) each host featurizes only its parts and reads
the others', so every host ends with the same feature list as one host would.

Nothing is dropped silently. ``task_features(..., stats=d)`` fills ``d`` with what featurization
did to the split (``featurization_stats``); the same record is kept in memory for the process
(``cached_stats``) and, with ``cache_dir``, pickled in every part file ahead of its features
(so reading the counts back does not load the features). On the ``train`` split an
example without a usable target (``preprocessors.DROP_REASONS``) is dropped and counted under
``dropped``; on other splits it is kept (evaluation sees every example) and counted under
``flagged``. ``truncated`` counts examples kept but cut (``preprocessors.TRUNCATION_REASONS``).
Files are read through ``sources.resolve``: the prepared file of the split, a sample file only
with ``allow_samples=True``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import pickle
import re
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tqdm

from xstilts.data import preprocessors as P
from xstilts.data import sources
from xstilts.data.feature_converters import FeatureBatcher, MixtureBatcher, Origin, ShardInfo
from xstilts.data.tasks import TaskSpec, get_task, mixture_rates, mixture_tasks

log = logging.getLogger(__name__)
CACHE_VERSION = 4  # 2: training splits drop examples without a usable target; 3: parts;
# 4: features carry example_index
PART_SIZE = 50_000  # examples per cache part: what one host featurizes (MLM packs within it)
CHUNK = 2_000  # examples per featurize() call (the batched tokenizer call)
SHARD_WAIT_SECONDS = 1800.0  # how long a host waits for a part another host featurizes
TRAIN_SPLIT = "train"
FEATURIZED_KINDS = ("classification", "tagging", "qa", "multiple_choice", "mlm")
_STATS: dict[str, dict[str, Any]] = {}  # cache key -> featurization stats of this process


UNKNOWN_TAG = "<other>"


def task_labels(
    spec: TaskSpec, data_dir: str | os.PathLike | None = None, *, allow_samples: bool = False
) -> tuple[str, ...]:
    """The task's label list; for an open tag set (``labels=None``, e.g. CCG supertags) the
    sorted tags of the train split plus ``UNKNOWN_TAG`` for tags never seen in training."""
    if spec.labels is not None:
        return tuple(spec.labels)
    if spec.kind != "tagging":
        raise ValueError(f"task {spec.name} has no label list")
    train = sources.read(spec, TRAIN_SPLIT, data_dir, allow_samples=allow_samples)
    seen = {tag for e in train for tag in e.get("tags") or ()}
    return (*sorted(seen), UNKNOWN_TAG)


def usable_examples(
    spec: TaskSpec,
    examples: Sequence[Mapping[str, Any]],
    *,
    training: bool,
    counts: P.Counts | None = None,
) -> list[Mapping[str, Any]]:
    """``examples`` less, when ``training``, those without a usable target
    (``preprocessors.example_problem``); every problem is counted by reason either way."""
    return [examples[i] for i in _usable(spec, examples, training=training, counts=counts)]


def _usable(spec: TaskSpec, examples: Sequence[Mapping[str, Any]], *, training: bool,
            counts: P.Counts | None) -> list[int]:
    """The indices of ``usable_examples``."""
    kept = []
    for index, example in enumerate(examples):
        problem = P.example_problem(spec.kind, example)
        if problem is not None:
            P.count(counts, problem)
        if problem is None or not training:
            kept.append(index)
    return kept


def _indexed(features: Sequence[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """``features`` (of one example), each marked with the example's ``example_index``."""
    for feature in features:
        feature["example_index"] = index
    return list(features)


def featurize(
    spec: TaskSpec,
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
    *,
    counts: P.Counts | None = None,
    training: bool = False,
    mlm_packing: str = "stream",
    first_index: int = 0,
) -> list[dict[str, Any]]:
    """Features of ``examples`` for the task's kind (see ``preprocessors.py``); ``labels``
    overrides the task's label list (see ``task_labels``). ``counts`` gets one count per example
    and reason (``preprocessors.DROP_REASONS`` and ``TRUNCATION_REASONS``); with ``training``
    the examples without a usable target are dropped (see ``usable_examples``). ``mlm_packing``:
    how MLM rows are packed (``preprocessors.mlm_features``: ``stream`` or ``documents``).
    Each feature but MLM's packed rows carries ``example_index``: ``first_index`` plus the
    index of its example in ``examples`` (its place in the split, for error messages)."""
    length = max_length or spec.max_length
    labels = labels or spec.labels
    kept = _usable(spec, examples, training=training, counts=counts)
    indices = [first_index + i for i in kept]
    examples = [examples[i] for i in kept]
    tokenizer = P.pre_encoded(spec.kind, examples, tokenizer)
    out: list[dict[str, Any]] = []
    if spec.kind == "classification":
        for e, i in zip(examples, indices, strict=True):
            out.extend(_indexed([P.classification_features(e, tokenizer, length, labels,
                                                           counts=counts)], i))
        return out
    if spec.kind == "tagging":
        unknown = UNKNOWN_TAG if labels and labels[-1] == UNKNOWN_TAG else None
        for e, i in zip(examples, indices, strict=True):
            out.extend(_indexed(P.tagging_features(e, tokenizer, length, labels,
                                                   unknown_tag=unknown, counts=counts), i))
        return out
    if spec.kind == "qa":  # preprocessors.qa_features_for_examples, one example at a time
        contexts: dict[str, Any] = {}
        for e, i in zip(examples, indices, strict=True):
            if e["context"] not in contexts:
                contexts[e["context"]] = tokenizer.encode_with_offsets(
                    e["context"], add_special_tokens=False)
            out.extend(_indexed(P.qa_features(
                e, tokenizer, max_length=length, counts=counts, drop_misaligned=training,
                context_encoding=contexts[e["context"]]), i))
        return out
    if spec.kind == "multiple_choice":
        for e, i in zip(examples, indices, strict=True):
            out.extend(_indexed([P.multiple_choice_features(e, tokenizer, length,
                                                            counts=counts)], i))
        return out
    if spec.kind == "mlm":
        return P.mlm_features([e["text"] for e in examples], tokenizer, length, mlm_packing)
    raise ValueError(f"task {spec.name}: kind {spec.kind!r} has no training features")


def featurization_stats(
    examples: int, features: int, counts: Mapping[str, int], *, training: bool
) -> dict[str, Any]:
    """The record of one featurized split: ``examples`` read, ``features`` made, and the
    counts by reason split into ``dropped`` (training: removed), ``flagged`` (other splits:
    kept) and ``truncated`` (kept, cut), each sorted by reason."""
    problems = {r: n for r, n in sorted(counts.items()) if r in P.DROP_REASONS and n}
    cut = {r: n for r, n in sorted(counts.items()) if r not in P.DROP_REASONS and n}
    return {
        "examples": examples,
        "features": features,
        "dropped": problems if training else {},
        "flagged": {} if training else problems,
        "truncated": cut,
    }


def _cache_key(
    spec: TaskSpec,
    split: str,
    data_dir: Any,
    tokenizer: Any,
    length: int,
    labels: Any,
    allow_samples: bool = False,
    mlm_packing: str = "stream",
) -> str:
    digest = hashlib.sha256()
    digest.update(f"{CACHE_VERSION}|{spec.name}|{split}|{length}|{labels}".encode())
    if spec.kind == "mlm" and mlm_packing != "stream":  # the stream's keys stay as they were
        digest.update(f"|packing={mlm_packing}".encode())
    for path in sources.resolve(spec, split, data_dir, allow_samples=allow_samples):
        stat = path.stat()
        digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    model_file = getattr(tokenizer, "model_file", None)
    if model_file is not None:
        digest.update(hashlib.sha256(Path(model_file).read_bytes()).digest())
    return digest.hexdigest()[:20]


def _entry(name: str, split: str, tokenizer: Any, data_dir: Any, max_length: int | None,
           allow_samples: bool, mlm_packing: str = "stream"
           ) -> tuple[TaskSpec, int, tuple[str, ...] | None, str, str]:
    """(spec, length, labels, cache key, part-file stem) of one featurized split."""
    spec = get_task(name)
    length = max_length or spec.max_length
    labels = _labels(spec, data_dir, allow_samples)
    key = _cache_key(spec, split, data_dir, tokenizer, length, labels, allow_samples,
                     mlm_packing)
    return spec, length, labels, key, f"{name}.{split}.{length}.{key}"


def _blocks(num_examples: int, part_size: int) -> list[tuple[int, int]]:
    """``[begin, end)`` of each part: consecutive runs of ``part_size`` examples."""
    if part_size < 1:
        raise ValueError(f"part_size must be positive, got {part_size}")
    return [(b, min(b + part_size, num_examples)) for b in range(0, num_examples, part_size)]


def _part_file(cache_dir: str | os.PathLike, stem: str, index: int, count: int) -> Path:
    return Path(cache_dir) / f"{stem}.part-{index:05d}-of-{count:05d}.pkl"


def _complete_parts(cache_dir: str | os.PathLike, stem: str) -> list[Path] | None:
    """The part files of a complete cache entry in order, or None when any is missing."""
    pattern = re.compile(re.escape(stem) + r"\.part-(\d{5})-of-(\d{5})\.pkl")
    found: dict[int, set[int]] = {}
    for path in Path(cache_dir).glob(glob.escape(stem) + ".part-*-of-*.pkl"):
        match = pattern.fullmatch(path.name)
        if match:
            found.setdefault(int(match[2]), set()).add(int(match[1]))
    for count, indices in sorted(found.items()):
        if indices == set(range(count)):
            return [_part_file(cache_dir, stem, i, count) for i in range(count)]
    return None


def _read_part(path: Path, *, with_features: bool) -> tuple[dict[str, Any], Any]:
    """(stats, features or None) of a part file: two pickles, the stats first."""
    with open(path, "rb") as handle:
        recorded = pickle.load(handle)
        return recorded, pickle.load(handle) if with_features else None


def _wait_for(path: Path, timeout: float) -> None:
    """Block until another host has written ``path`` (or fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"waited {timeout:.0f} s for {path}, the part another host featurizes: is "
                f"{path.parent} shared by every host, and does every host featurize this split?")
        time.sleep(0.5)


def merge_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One ``featurization_stats`` record of a split from the records of its parts."""
    merged: dict[str, Any] = {"examples": 0, "features": 0}
    for field in ("dropped", "flagged", "truncated"):
        total: Counter[str] = Counter()
        for record in records:
            total.update(record[field])
        merged[field] = dict(sorted(total.items()))
    for record in records:
        merged["examples"] += record["examples"]
        merged["features"] += record["features"]
    return {key: merged[key] for key in ("examples", "features", "dropped", "flagged",
                                         "truncated")}  # fmt: skip


def _featurize_part(
    spec: TaskSpec,
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    length: int,
    labels: Any,
    training: bool,
    progress: Any,
    mlm_packing: str = "stream",
    first_index: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(stats, features) of one part (its first example is the split's ``first_index``-th);
    chunks of 2,000 examples only drive the progress bar (MLM packs the whole part at once)."""
    counts: Counter[str] = Counter()
    features: list[dict[str, Any]] = []
    chunk = len(examples) if spec.kind == "mlm" else CHUNK
    for offset in range(0, len(examples), chunk):
        part = examples[offset : offset + chunk]
        features.extend(featurize(spec, part, tokenizer, length, labels, counts=counts,
                                  training=training, mlm_packing=mlm_packing,
                                  first_index=first_index + offset))  # fmt: skip
        progress.update(len(part))
    return featurization_stats(len(examples), len(features), counts, training=training), features


def task_features(
    name: str,
    split: str,
    tokenizer: Any,
    *,
    data_dir: str | os.PathLike | None = None,
    max_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    stats: dict[str, Any] | None = None,
    allow_samples: bool = False,
    shard_info: Any = None,
    part_size: int = PART_SIZE,
    mlm_packing: str = "stream",
) -> list[dict[str, Any]]:
    """Featurized ``split`` of task ``name``, the same list on every host.

    The split is cut into parts of ``part_size`` examples. With ``cache_dir`` each part is
    pickled there (to a temporary file, then renamed) and a complete set of parts is read back
    instead of featurizing again; with ``cache_dir`` and ``shard_info`` (``seqio.ShardInfo`` or
    ours: this host's index among the hosts sharing ``cache_dir``), host ``i`` featurizes only
    the parts ``p`` with ``p % num_shards == i`` and reads the others' parts when they appear.
    ``stats`` (a dict) is filled with ``featurization_stats`` (see the module docstring).
    ``mlm_packing`` (MLM tasks): ``stream`` or ``documents`` (``preprocessors.mlm_features``).
    """
    spec, length, labels, key, stem = _entry(name, split, tokenizer, data_dir, max_length,
                                             allow_samples, mlm_packing)
    if cache_dir is not None:
        complete = _complete_parts(cache_dir, stem)
        if complete is not None:
            read = [_read_part(path, with_features=True) for path in complete]
            return _finish(spec, split, key, [r for r, _ in read], [f for _, f in read], stats)
    examples = list(sources.read(spec, split, data_dir, allow_samples=allow_samples))
    if not examples:
        paths = sources.resolve(spec, split, data_dir, allow_samples=allow_samples)
        raise ValueError(f"task {name} split {split!r} is empty ({paths})")
    training = split == TRAIN_SPLIT
    blocks = _blocks(len(examples), part_size)
    info = shard_info or ShardInfo()
    shard = ShardInfo(int(info.index), int(info.num_shards)) if cache_dir else ShardInfo()
    own = [b for b in range(len(blocks)) if b % shard.num_shards == shard.index]
    parts: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    start = time.perf_counter()
    total = sum(blocks[b][1] - blocks[b][0] for b in own)
    with tqdm.tqdm(total=total, desc=f"featurize {name}/{split}", unit="ex", leave=False,
                   disable=total <= 4 * CHUNK) as progress:  # fmt: skip
        for b in own:
            path = _part_file(cache_dir, stem, b, len(blocks)) if cache_dir else None
            if path is not None and path.is_file():  # left by an interrupted run
                parts[b] = _read_part(path, with_features=True)
                progress.update(blocks[b][1] - blocks[b][0])
                continue
            begin, end = blocks[b]
            parts[b] = _featurize_part(spec, examples[begin:end], tokenizer, length, labels,
                                       training, progress, mlm_packing, begin)  # fmt: skip
            if path is not None:
                _atomic_pickle(path, *parts[b])
    elapsed = time.perf_counter() - start
    log.info("%s/%s: featurized %d of %d parts (%d examples) in %.1f s (%.0f examples/s)%s",
             name, split, len(own), len(blocks), total, elapsed, total / max(elapsed, 1e-9),
             f" as host {shard.index} of {shard.num_shards}" if shard.num_shards > 1 else "")
    for b in range(len(blocks)):
        if b not in parts:
            path = _part_file(cache_dir, stem, b, len(blocks))  # type: ignore[arg-type]
            _wait_for(path, SHARD_WAIT_SECONDS)
            parts[b] = _read_part(path, with_features=True)
    ordered = [parts[b] for b in range(len(blocks))]
    return _finish(spec, split, key, [r for r, _ in ordered], [f for _, f in ordered], stats)


def _finish(
    spec: TaskSpec,
    split: str,
    key: str,
    records: Sequence[Mapping[str, Any]],
    parts: Sequence[list[dict[str, Any]]],
    stats: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """The parts' features concatenated (MLM rows renumbered) and their merged stats."""
    record = merge_stats(records)
    features = [feature for part in parts for feature in part]
    if not features:
        raise ValueError(f"task {spec.name} split {split!r}: every example was dropped "
                         f"({record['dropped'] or record['flagged']})")  # fmt: skip
    if spec.kind == "mlm":
        features = [{**feature, "example_id": i} for i, feature in enumerate(features)]
    _STATS[key] = record
    _fill(stats, record)
    log.info("%s/%s: %d examples -> %d features; dropped %s, flagged %s, truncated %s",
             spec.name, split, record["examples"], record["features"], record["dropped"],
             record["flagged"], record["truncated"])  # fmt: skip
    return features


def _labels(spec: TaskSpec, data_dir: Any, allow_samples: bool) -> tuple[str, ...] | None:
    if spec.kind not in ("classification", "tagging"):
        return None
    return task_labels(spec, data_dir, allow_samples=allow_samples)


def _copy(record: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(record))  # a deep copy, as JSON would give it back


def _fill(stats: dict[str, Any] | None, record: Mapping[str, Any]) -> None:
    if stats is not None:
        stats.clear()
        stats.update(_copy(record))


def cached_stats(
    name: str,
    split: str,
    tokenizer: Any,
    *,
    data_dir: str | os.PathLike | None = None,
    max_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_samples: bool = False,
) -> dict[str, Any]:
    """``featurization_stats`` of a split, cheaply: from this process's memory, else from the
    stats pickled ahead of each cached part, else by featurizing (and caching) the split."""
    _, length, _, key, stem = _entry(name, split, tokenizer, data_dir, max_length,
                                     allow_samples)
    if key in _STATS:
        return _copy(_STATS[key])
    complete = None if cache_dir is None else _complete_parts(cache_dir, stem)
    if complete is not None:
        _STATS[key] = merge_stats([_read_part(p, with_features=False)[0] for p in complete])
        return _copy(_STATS[key])
    stats: dict[str, Any] = {}
    task_features(name, split, tokenizer, data_dir=data_dir, max_length=length,
                  cache_dir=cache_dir, stats=stats, allow_samples=allow_samples)  # fmt: skip
    return stats


def _atomic_pickle(path: Path, *values: Any) -> None:
    """``values`` pickled one after another into ``path`` through a temporary file and a
    rename: nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            for value in values:
                pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def task_batcher(
    name: str,
    split: str,
    tokenizer: Any,
    *,
    batch_size: int,
    data_dir: str | os.PathLike | None = None,
    max_length: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    shard_info: Any = None,
    cache_dir: str | os.PathLike | None = None,
    allow_samples: bool = False,
    part_size: int = PART_SIZE,
    length_buckets: Sequence[int] | str | None = None,
    mlm_packing: str = "stream",
    length_grouping: int = 0,
    classification_packing: bool = False,
    max_segments: int | None = None,
) -> FeatureBatcher:
    """Batches of one task split; its features from ``task_features`` (each host featurizes its
    parts when ``cache_dir`` is shared, see there). ``length_buckets``, ``length_grouping``,
    ``classification_packing`` and ``max_segments`` (packed rows of whole examples, for
    classification tasks only; other kinds are batched as before): see
    ``feature_converters``; ``mlm_packing``: see ``task_features``."""
    spec = get_task(name)
    length = max_length or spec.max_length
    features = task_features(name, split, tokenizer, data_dir=data_dir, max_length=length,
                             cache_dir=cache_dir, allow_samples=allow_samples,
                             shard_info=shard_info, part_size=part_size,
                             mlm_packing=mlm_packing)  # fmt: skip
    mlm = {"mask_id": tokenizer.mask_id} if spec.kind == "mlm" else None
    return FeatureBatcher(
        features, spec.kind, batch_size=batch_size, length=length, seed=seed, shuffle=shuffle,
        shard_info=shard_info, num_choices=spec.num_choices, mlm=mlm,
        length_buckets=length_buckets, length_grouping=length_grouping,
        origin=origin(name, split, data_dir, allow_samples=allow_samples),
        classification_packing=classification_packing, max_segments=max_segments,
    )  # fmt: skip


def origin(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
           allow_samples: bool = False) -> Origin:
    """Where the batches of task ``name``'s ``split`` come from (named in batch errors)."""
    paths = sources.resolve(get_task(name), split, data_dir, allow_samples=allow_samples)
    return Origin(name, split, tuple(str(path) for path in paths))


def mixture_batcher(
    mixture: str,
    tokenizer: Any,
    *,
    batch_size: int,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    seed: int = 0,
    shard_info: Any = None,
    max_length: int | Mapping[str, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_samples: bool = False,
    length_buckets: Sequence[int] | str | None = None,
    mlm_packing: str = "stream",
    length_grouping: int = 0,
    classification_packing: bool = False,
    max_segments: int | None = None,
) -> MixtureBatcher:
    """Per-step task choice by the mixture's rates (sizes = featurized training examples).
    ``max_length``: one length for every task, or a length per task (multi-head training);
    ``length_buckets``, ``length_grouping``, ``mlm_packing``, ``classification_packing`` and
    ``max_segments``: see ``task_batcher`` (packing applies to the classification tasks)."""
    batchers = {
        task: task_batcher(
            task,
            split,
            tokenizer,
            batch_size=batch_size,
            data_dir=data_dir,
            max_length=max_length.get(task) if isinstance(max_length, Mapping) else max_length,
            seed=seed,
            shard_info=shard_info,
            cache_dir=cache_dir,
            allow_samples=allow_samples,
            length_buckets=length_buckets,
            mlm_packing=mlm_packing,
            length_grouping=length_grouping,
            classification_packing=classification_packing,
            max_segments=max_segments,
        )  # fmt: skip
        for task in mixture_tasks(mixture)
    }
    rates = mixture_rates(mixture, {task: len(b.features) for task, b in batchers.items()})
    return MixtureBatcher(batchers, rates, seed=seed)
