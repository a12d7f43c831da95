"""The experiment's inputs: the tokenizer, cached features, and batch factories per phase."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xstilts import train as train_lib
from xstilts.checkpoints import is_url
from xstilts.data import pipeline, sources, tasks
from xstilts.data.feature_converters import FeatureBatcher, ShardInfo, without_keys
from xstilts.experiment.grid import Grid
from xstilts.experiment.plan import task_kind
from xstilts.experiment.rundir import SPM_FILENAME, atomic_bytes, local_cache_dir, run_dir_path
from xstilts.multihost import agreed, barrier, is_chief
from xstilts.tokenization import XLMRTokenizer

log = logging.getLogger("xstilts.experiment")


def factory(make_batcher: Any, *, with_task: bool = False) -> train_lib.BatchFactory:
    """A ``train.train`` batch factory over a Feature/Mixture batcher built per host shard;
    ``with_task``: yield a MixtureBatcher's ``(task, batch)`` pairs (multi-head training)."""
    cache: dict[tuple[int, int, int], Any] = {}

    def batches(*, shard_index: int, num_shards: int, batch_size: int, start_batch: int
                ) -> Iterator[Any]:
        key = (shard_index, num_shards, batch_size)
        if key not in cache:
            cache[key] = make_batcher(ShardInfo(shard_index, num_shards), batch_size)
        batcher = cache[key]
        step = start_batch
        while True:
            batch = batcher.batch(step)
            task = None
            if isinstance(batch, tuple):  # MixtureBatcher: (task, batch)
                task, batch = batch
            batch = without_keys(batch, "feature_index")  # its provenance kept
            if with_task and task is None:
                raise TypeError("factory(with_task=True) needs a MixtureBatcher")
            yield (task, batch) if with_task else batch
            step += 1

    return batches


class Inputs:
    """Tokenizer and features of one run directory (features cached in memory and on disk)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.run_dir = run_dir_path(grid.run_dir)
        self._tokenizer: XLMRTokenizer | None = None
        self._features: dict[tuple[str, str, int], list[dict[str, Any]]] = {}

    @property
    def tokenizer_dir(self) -> Path:
        return run_dir_path(self.grid.tokenizer_dir) if self.grid.tokenizer_dir else \
            self.run_dir / "tokenizer"

    @property
    def tokenizer(self) -> XLMRTokenizer:
        if self._tokenizer is None:
            path = self.tokenizer_dir / SPM_FILENAME
            if not path.is_file():
                raise FileNotFoundError(f"no tokenizer at {path}: set tokenizer_dir, or "
                                        f"spm_vocab_size to train one")
            if is_url(os.fspath(path)):  # SentencePiece reads local files: a copy of it
                local = Path(tempfile.mkdtemp(prefix="xstilts-tokenizer-")) / SPM_FILENAME
                local.write_bytes(path.read_bytes())
                path = local
            self._tokenizer = XLMRTokenizer(path)
        return self._tokenizer

    def prepare_tokenizer(self) -> None:
        """Train SentencePiece on the phase-0 mixture when the grid asks for it (chief)."""
        path = self.tokenizer_dir / SPM_FILENAME
        if agreed(path.is_file()) or self.grid.spm_vocab_size is None:
            return
        if not is_chief():  # the chief trains it; the others read its file
            barrier("tokenizer")
            return
        import sentencepiece as spm  # heavy, optional: only when training a tokenizer

        if not self.grid.pretrain_mixture:
            raise ValueError("spm_vocab_size needs pretrain_mixture (the text to train on)")
        lines = [e["text"] for name in tasks.mixture_tasks(self.grid.pretrain_mixture)
                 for e in self.examples(name, "train")]
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buffer,
            vocab_size=self.grid.spm_vocab_size, model_type="unigram", unk_id=0, bos_id=1,
            eos_id=2, pad_id=-1, character_coverage=1.0, hard_vocab_limit=False,
            num_threads=1, minloglevel=2)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_bytes(path, buffer.getvalue())
        barrier("tokenizer")
        log.info("trained SentencePiece (%d ids) on %d lines of %s", self.tokenizer.vocab_size,
                 len(lines), self.grid.pretrain_mixture)

    def features(self, name: str, split: str, max_length: int | None = None) -> list[dict]:
        length = max_length or tasks.get_task(name).max_length
        key = (name, split, length)
        if key not in self._features:
            # every process calls this for the same splits: each featurizes its share of the
            # parts and reads the others' from the shared cache
            self._features[key] = pipeline.task_features(
                name, split, self.tokenizer, data_dir=self.grid.data_dir, max_length=length,
                cache_dir=local_cache_dir(self.run_dir), shard_info=self._featurize_shard())
        return self._features[key]

    def _featurize_shard(self) -> ShardInfo:
        """This host's share of the featurization: the cache in the run directory is shared by
        the hosts; without it (a URL run directory) each host featurizes everything."""
        if local_cache_dir(self.run_dir) is None:
            return ShardInfo(0, 1)
        return ShardInfo(jax.process_index(), jax.process_count())

    def examples(self, name: str, split: str) -> list[dict[str, Any]]:
        """The examples of a split from its prepared file (never a sample file: an error
        naming every path looked for instead), as the pipeline reads them."""
        return list(sources.read(tasks.get_task(name), split, self.grid.data_dir))

    def num_labels(self, spec: tasks.TaskSpec) -> int:
        """``task_kind``'s label count, read from the train split for an open tag set (CCG)."""
        kind, num_labels = task_kind(spec)
        if kind in ("classification", "tagging") and not spec.labels:
            return len(pipeline.task_labels(spec, self.grid.data_dir))
        return num_labels

    def task_batcher(self, name: str, split: str, length: int, seed: int, shuffle: bool,
                     **batching: Any):
        """``make(shard, batch_size)`` of a FeatureBatcher over one task split; ``batching``:
        ``Phase.batching()`` (length buckets, length grouping)."""
        spec = tasks.get_task(name)

        def make(shard: ShardInfo, batch_size: int) -> FeatureBatcher:
            mlm = {"mask_id": self.tokenizer.mask_id} if spec.kind == "mlm" else None
            return FeatureBatcher(self.features(name, split, length), spec.kind,
                                  batch_size=batch_size, length=length, seed=seed,
                                  shuffle=shuffle, shard_info=shard,
                                  num_choices=spec.num_choices, mlm=mlm,
                                  origin=pipeline.origin(name, split, self.grid.data_dir),
                                  **batching)

        return make

    def mixture_batcher(self, mixture: str, length: int | Mapping[str, int], seed: int,
                        **batching: Any):
        """``make(shard, batch_size)`` of a mixture at one length or a length per task."""
        def make(shard: ShardInfo, batch_size: int):
            return pipeline.mixture_batcher(
                mixture, self.tokenizer, batch_size=batch_size, data_dir=self.grid.data_dir,
                seed=seed, shard_info=shard, max_length=length,
                cache_dir=local_cache_dir(self.run_dir), **batching)

        return make

    def eval_batches(self, features: list[dict], kind: str, length: int
                     ) -> Iterator[dict[str, np.ndarray]]:
        """One ordered pass over ``features`` at the evaluation batch size."""
        return FeatureBatcher(features, kind, batch_size=self.grid.eval_batch_size,
                              length=length, shuffle=False).epoch()
