"""From a registered task or mixture name to fixed-shape batches: read, featurize (cached on
disk, written atomically), batch. Pure Python/numpy.

Example::

    tok = XLMRTokenizer.from_pretrained(checkpoint_dir)
    batcher = mixture_batcher("intermediate.mnli.multilingual", tok, data_dir="data",
                              batch_size=32, seed=0, shard_info=ShardInfo(jax.process_index(),
                                                                          jax.process_count()))
    task_name, batch = batcher.batch(step)       # a pure function of step: exact resume
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tqdm

from xstilts.data import preprocessors as P
from xstilts.data.feature_converters import FeatureBatcher, MixtureBatcher
from xstilts.data.tasks import TaskSpec, get_task, mixture_rates, mixture_tasks

log = logging.getLogger(__name__)
CACHE_VERSION = 1


UNKNOWN_TAG = "<other>"


def task_labels(spec: TaskSpec, data_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The task's label list; for an open tag set (``labels=None``, e.g. CCG supertags) the
    sorted tags of the train split plus ``UNKNOWN_TAG`` for tags never seen in training."""
    if spec.labels is not None:
        return tuple(spec.labels)
    if spec.kind != "tagging":
        raise ValueError(f"task {spec.name} has no label list")
    seen = {tag for e in spec.examples("train", data_dir) for tag in e.get("tags") or ()}
    return (*sorted(seen), UNKNOWN_TAG)


def featurize(
    spec: TaskSpec,
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Features of ``examples`` for the task's kind (see ``preprocessors.py``); ``labels``
    overrides the task's label list (see ``task_labels``)."""
    length = max_length or spec.max_length
    labels = labels or spec.labels
    if spec.kind == "classification":
        return [P.classification_features(e, tokenizer, length, labels) for e in examples]
    if spec.kind == "tagging":
        unknown = UNKNOWN_TAG if labels and labels[-1] == UNKNOWN_TAG else None
        out: list[dict[str, Any]] = []
        for e in examples:
            out.extend(P.tagging_features(e, tokenizer, length, labels, unknown_tag=unknown))
        return out
    if spec.kind == "qa":
        return P.qa_features_for_examples(examples, tokenizer, max_length=length)
    if spec.kind == "multiple_choice":
        return [P.multiple_choice_features(e, tokenizer, length) for e in examples]
    if spec.kind == "mlm":
        return P.mlm_sequences([e["text"] for e in examples], tokenizer, length)
    raise ValueError(f"task {spec.name}: kind {spec.kind!r} has no training features")


def _cache_key(
    spec: TaskSpec, split: str, data_dir: Any, tokenizer: Any, length: int, labels: Any
) -> str:
    digest = hashlib.sha256()
    digest.update(f"{CACHE_VERSION}|{spec.name}|{split}|{length}|{labels}".encode())
    for path in spec.path(split, data_dir):
        stat = path.stat()
        digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    model_file = getattr(tokenizer, "model_file", None)
    if model_file is not None:
        digest.update(hashlib.sha256(Path(model_file).read_bytes()).digest())
    return digest.hexdigest()[:20]


def task_features(
    name: str,
    split: str,
    tokenizer: Any,
    *,
    data_dir: str | os.PathLike | None = None,
    max_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Featurized ``split`` of task ``name``; with ``cache_dir``, read from / written to a pickle
    keyed by the data files, tokenizer and length (written to a temporary file, then renamed)."""
    spec = get_task(name)
    length = max_length or spec.max_length
    labels = task_labels(spec, data_dir) if spec.kind in ("classification", "tagging") else None
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(spec, split, data_dir, tokenizer, length, labels)
        cache_path = Path(cache_dir) / f"{name}.{split}.{length}.{key}.pkl"
        if cache_path.is_file():
            with open(cache_path, "rb") as handle:
                return pickle.load(handle)
    examples = list(spec.examples(split, data_dir))
    if not examples:
        raise ValueError(f"task {name} split {split!r} is empty ({spec.path(split, data_dir)})")
    start = time.perf_counter()
    features: list[dict[str, Any]] = []
    # chunks only drive the progress bar; MLM packing needs the whole stream at once
    chunk = len(examples) if spec.kind == "mlm" else 2000
    chunks = range(0, len(examples), chunk)
    progress = tqdm.tqdm(chunks, desc=f"featurize {name}/{split}", unit="chunk", leave=False,
                         disable=len(chunks) <= 4)  # fmt: skip
    for offset in progress:
        part = examples[offset : offset + chunk]
        features.extend(featurize(spec, part, tokenizer, length, labels))
    elapsed = time.perf_counter() - start
    if cache_path is not None:
        _atomic_pickle(cache_path, features)
    log.info(
        "%s/%s: %d examples -> %d features in %.1f s (%.0f examples/s)",
        name, split, len(examples), len(features), elapsed, len(examples) / max(elapsed, 1e-9),
    )  # fmt: skip
    return features


def _atomic_pickle(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
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
) -> FeatureBatcher:
    spec = get_task(name)
    length = max_length or spec.max_length
    features = task_features(
        name, split, tokenizer, data_dir=data_dir, max_length=length, cache_dir=cache_dir
    )
    mlm = {"mask_id": tokenizer.mask_id} if spec.kind == "mlm" else None
    return FeatureBatcher(
        features, spec.kind, batch_size=batch_size, length=length, seed=seed, shuffle=shuffle,
        shard_info=shard_info, num_choices=spec.num_choices, mlm=mlm,
    )  # fmt: skip


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
) -> MixtureBatcher:
    """Per-step task choice by the mixture's rates (sizes = featurized training examples).
    ``max_length``: one length for every task, or a length per task (multi-head training)."""
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
        )  # fmt: skip
        for task in mixture_tasks(mixture)
    }
    rates = mixture_rates(mixture, {task: len(b.features) for task, b in batchers.items()})
    return MixtureBatcher(batchers, rates, seed=seed)
