"""Offline caching of seqio Tasks without Apache Beam, in the layout seqio reads.

``seqio.scripts.cache_tasks_main`` (Beam) is the reference way to cache a Task
(tests/test_seqio_beam_cache.py). It needs apache-beam[tfrecord] 2.77, which caps ``protobuf<7``:
an environment with Beam takes protobuf 6.33 and sentencepiece 0.2.2 (0.2.3's generated code
demands a 7.x protobuf runtime). This module needs no Beam and writes the same files from the
same steps, in one process: each source shard
(``task.source.list_shards``) read in order with Beam's per-shard preprocessor seed, the Task's
preprocessors up to its ``seqio.CacheDatasetPlaceholder`` (``Task.preprocess_precache``), then
``<split>.tfrecord-0000i-of-0000n`` (``seqio.dict_to_tfexample``), ``info.<split>.json``,
``stats.<split>.json`` and ``COMPLETED``. Training reads it like Beam's cache:
``seqio.add_global_cache_dirs`` (``--seqio_additional_cache_dirs``) and ``use_cached=True``
(``USE_CACHED_TASKS``). The task directory is written under a temporary name and renamed when
complete, so nothing half-written is ever read as a cache::

    python -m xstilts.data.seqio_cache --module_import=my_tasks --tasks=my_task \\
        --output_cache_dir=/cache
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

log = logging.getLogger(__name__)
INT64_MAX = 2**63 - 1


def shard_seed(task_name: str, shard_index: int, base_seed: int | None = None) -> int:
    """The preprocessors' seed of one source shard, as ``seqio.beam_utils.PreprocessTask``."""
    digest = hashlib.md5(f"{task_name}shard{shard_index}".encode()).digest()
    seed = int.from_bytes(digest, "little") + (base_seed or 0)
    if seed > INT64_MAX:
        seed = int.from_bytes(digest[:7], "little") + (base_seed or 0)
    return seed % INT64_MAX


def precache_examples(task: seqio.Task, split: str, base_seed: int | None = None
                      ) -> Iterator[dict[str, Any]]:
    """The examples of ``split`` after the Task's pre-cache preprocessors, shard by shard."""
    shards = task.source.list_shards(split)
    if not shards:
        raise FileNotFoundError(f"seqio task {task.name} split {split!r}: no source shards")
    for index, _ in enumerate(shards):
        seed = shard_seed(task.name, index, base_seed)
        ds = task.source.get_dataset(split=split, shuffle=False, seed=seed,
                                     shard_info=seqio.ShardInfo(index, len(shards)))
        yield from task.preprocess_precache(ds, seed=seed)


def _info(example: dict[str, Any], num_shards: int) -> dict[str, Any]:
    features = {}
    for key, value in example.items():
        tensor = value if isinstance(value, tf.RaggedTensor) else tf.constant(value)
        shape = tensor.shape.as_list()
        features[key] = {"shape": [None, *shape[1:]] if shape else [],
                         "dtype": tensor.dtype.name}
    return {"num_shards": num_shards, "features": features, "seqio_version": seqio.__version__}


def _count_tokens(example: dict[str, Any], output_features: Any, stats: dict[str, int]) -> None:
    """``<feature>_tokens`` / ``_max_tokens``: int ids that are not EOS or padding (Beam's)."""
    for name, feature in output_features.items():
        value = example.get(name)
        if not isinstance(value, tf.Tensor) or value.dtype not in (tf.int32, tf.int64):
            continue
        values = value.numpy()
        valid = np.ones_like(values, dtype=bool)
        for special in (feature.vocabulary.eos_id, feature.vocabulary.pad_id):
            if special is not None:
                valid &= values != special
        count = int(np.sum(valid))
        stats[f"{name}_tokens"] = stats.get(f"{name}_tokens", 0) + count
        stats[f"{name}_max_tokens"] = max(stats.get(f"{name}_max_tokens", 0), count)


def cache_task(task_name: str, output_cache_dir: str | os.PathLike, *,
               splits: Sequence[str] | None = None, num_shards: int = 1,
               overwrite: bool = False, base_seed: int | None = None) -> str | None:
    """Write ``task_name``'s offline cache under ``output_cache_dir``; returns its directory
    (None: already cached there and not ``overwrite``). A Task without a
    ``seqio.CacheDatasetPlaceholder`` cannot be cached (ValueError naming it)."""
    task = seqio.TaskRegistry.get(task_name)
    if not task.supports_caching:
        raise ValueError(f"seqio task {task_name}: no seqio.CacheDatasetPlaceholder() among its "
                         f"preprocessors, so it cannot be cached offline")
    if num_shards < 1:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    out = os.path.join(os.fspath(output_cache_dir), seqio.get_task_dir_from_name(task.name))
    if os.path.exists(os.path.join(out, "COMPLETED")) and not overwrite:
        log.info("%s is cached at %s already", task_name, out)
        return None
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for split in splits or task.splits:
            prefix = seqio.get_cached_tfrecord_prefix(tmp, split)
            writers = [tf.io.TFRecordWriter(f"{prefix}-{i:05d}-of-{num_shards:05d}")
                       for i in range(num_shards)]
            stats: dict[str, int] = {"examples": 0}
            info = None
            try:
                for number, example in enumerate(precache_examples(task, split, base_seed)):
                    info = info or _info(example, num_shards)
                    writers[number % num_shards].write(
                        seqio.dict_to_tfexample(example).SerializeToString())
                    stats["examples"] += 1
                    _count_tokens(example, task.output_features, stats)
            finally:
                for writer in writers:
                    writer.close()
            if info is None:
                raise ValueError(f"seqio task {task_name} split {split!r} is empty")
            for path, value in ((seqio.get_cached_info_path(tmp, split), info),
                                (seqio.get_cached_stats_path(tmp, split), stats)):
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(value, f, sort_keys=True, indent=2)
            log.info("cached %s %s: %d examples", task_name, split, stats["examples"])
        open(os.path.join(tmp, "COMPLETED"), "w").close()  # noqa: SIM115
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def matching_tasks(patterns: Sequence[str] | None) -> list[str]:
    """Registered Task names matching any of ``patterns`` (full-match regexes, as
    ``cache_tasks_main --tasks``); all Tasks when None."""
    regex = re.compile("(" + r"\Z|".join(patterns or [".*"]) + r"\Z)")
    return [name for name in seqio.TaskRegistry.names() if regex.match(name)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xstilts.data.seqio_cache",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=None,
                        help="comma-separated regexes of the Tasks to cache (default: all)")
    parser.add_argument("--module_import", action="append", default=[],
                        help="module that registers the Tasks (repeatable)")
    parser.add_argument("--output_cache_dir", required=True)
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--base_seed", type=int, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for module in args.module_import:
        importlib.import_module(module)
    names = matching_tasks(args.tasks.split(",") if args.tasks else None)
    if not names:
        raise SystemExit(f"no registered seqio Task matches --tasks={args.tasks!r}")
    for name in names:
        if seqio.TaskRegistry.get(name).supports_caching:
            cache_task(name, args.output_cache_dir, num_shards=args.num_shards,
                       overwrite=args.overwrite, base_seed=args.base_seed)
        else:
            log.info("skipping %s: it has no seqio.CacheDatasetPlaceholder", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
