"""The X-STILTs grid driver: (0) MLM pre-training, (1) intermediate training, (2) target
fine-tuning, (3) zero-shot evaluation in every language, plus retrieval straight from phase 1.

One gin file describes a grid (``gin/experiments/*.gin``)::

    python -m xstilts.experiment --gin_file=experiments/demo.gin --gin.RUN_DIR="'/tmp/run'"
    python -m xstilts.experiment --gin_file=experiments/xstilts_large.gin --dry_run

Cells and their directories under ``run_dir``::

    tokenizer/                       SentencePiece model (trained here when asked, phase "-1")
    phase0/                          MLM pre-training (train.train model dir)
    phase1/<config>/seed<k>/         intermediate training on a Mixture; retrieval results
    phase2/<config>/<train task>/seed<k>/   fine-tune from the phase-1 encoder + a fresh head,
                                     keep-best on English dev, zero-shot test in every language
    results.jsonl, results.csv       the tidy table: config, task, language, split, metric, value,
                                     seed, step (``config == "chance"``: constant predictors)
    experiment.json                  what the report needs: configs, baseline, tiers, chance rows

Multi-process runs (``jax.distributed``, one process per host) run every cell in lockstep: all
processes train and score together, only the chief (process 0) writes the tokenizer, the tidy
tables, ``experiment.json``, retrieval results and ``DONE`` markers (Orbax checkpoints coordinate
their own writes), and every skip/resume decision is the chief's, broadcast to all.

A cell is finished when its ``results.jsonl`` exists (written atomically after evaluation); a
finished cell is skipped, an unfinished one resumes from its last Orbax checkpoint (``train.train``
restores params, optimizer, RNG and data position). Early stopping is keep-best: every
``eval_every_steps`` the English dev split is scored and the best checkpoint (``eval/accuracy``) is
the one evaluated, which selects the same model as early stopping with unbounded patience.

Phase 1 trains one head when every task of the Mixture has the same kind and label set (the
per-task English and multilingual mixtures, exactly as before). A Mixture that mixes kinds or
label sets (``all9``, ``+mlm``) trains jiant-style multi-task: one shared encoder, one head per
head group (``TaskSpec.head``, else the dataset: ANLI+'s tasks and MNLI's translations share the
NLI head; each MLM language set one LM head), one task per step drawn by the Mixture's rates,
each task at its own max length capped by the phase's ``max_length``. Phase 2 and retrieval
read only the ``roberta`` encoder of phase 1, so they do not care which it was.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xstilts import checkpoints as ckpt_lib
from xstilts import partitioning
from xstilts import train as train_lib
from xstilts import trainer as trainer_lib
from xstilts.data import pipeline, tasks
from xstilts.data.feature_converters import FeatureBatcher, ShardInfo
from xstilts.evals import metrics, retrieval
from xstilts.models.xlmr import XLMRConfig

log = logging.getLogger("xstilts.experiment")

FIELDS = ("config", "task", "language", "split", "metric", "value", "seed", "step")
CHANCE = "chance"
BASELINE = "baseline"
SPM_FILENAME = "sentencepiece.bpe.model"


class Preempted(RuntimeError):
    """A phase was stopped by SIGTERM after saving its checkpoint."""


# ----------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Phase:
    """Hyper-parameters of one training phase (gin passes them as dicts)."""

    steps: int | None = None  # fixed number of steps, or ...
    epochs: float | None = None  # ... epochs over the training features (None: the task's)
    batch_size: int = 32
    learning_rate: float = 1e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_length: int | None = None  # None: the task's
    eval_every_steps: int = 0  # phase 2: keep-best on English dev every this many steps
    save_every_steps: int = 1000
    max_steps: int | None = None  # cap on epoch-derived steps

    @classmethod
    def of(cls, value: Phase | Mapping[str, Any] | None, where: str) -> Phase:
        if isinstance(value, Phase):
            return value
        value = dict(value or {})
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; expected some of "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**value)

    def num_steps(self, num_features: float, task_epochs: float | None, where: str) -> int:
        if self.steps is not None:
            return int(self.steps)
        epochs = self.epochs if self.epochs is not None else task_epochs
        if epochs is None:
            raise ValueError(f"{where}: give steps or epochs (the task declares no epochs)")
        steps = max(1, math.ceil(epochs * num_features / self.batch_size))
        return min(steps, self.max_steps) if self.max_steps else steps


@dataclasses.dataclass(frozen=True)
class Grid:
    """The grid and how to run it (``run_experiment``'s arguments, validated)."""

    run_dir: str
    model_config: XLMRConfig
    intermediate: Mapping[str, str | None]  # config name -> Mixture (None: the baseline)
    targets: Sequence[str]  # target datasets (xnli, synthetic.paraphrase, ...)
    retrieval: Sequence[str] = ()  # tatoeba, bucc2018, synthetic.parallel, synthetic.bucc
    seeds: Sequence[int] = (0,)
    data_dir: str | None = None
    tokenizer_dir: str | None = None  # holds sentencepiece.bpe.model (None: run_dir/tokenizer)
    pretrained: str | None = None  # Hugging Face checkpoint (dir or hub id) to start from
    spm_vocab_size: int | None = None  # train a SentencePiece model on the phase-0 mixture
    pretrain: Phase | None = None  # phase 0: MLM on ``pretrain_mixture``
    pretrain_mixture: str | None = None
    intermediate_phase: Phase = Phase()
    finetune: Phase = Phase()
    finetune_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    intermediate_per_seed: bool = False  # phase 1 once per seed (else once, seed = seeds[0])
    retrieval_layer: int | None = None  # hidden state for retrieval (None: 14/24 of the depth)
    # Subtract each language's mean sentence embedding before retrieval (Libovický et al., 2020;
    # not in XTREME's protocol, so off by default): ``evals.retrieval.center``.
    retrieval_center: bool = False
    english_config: str | None = None  # the pair the research question compares
    multilingual_config: str | None = None
    # Further (English-only, multilingual) pairs the report compares the same way (e.g. one per
    # intermediate task); the report also sums every pair up in one table.
    more_comparisons: Sequence[tuple[str, str]] = ()
    low_resource: Sequence[str] = ()
    tiers: Mapping[str, str] | None = None  # language -> tier (None: CC-100 tiers)
    eval_batch_size: int = 32
    compilation_cache: bool = True  # JAX's persistent cache in run_dir/jax_cache: every cell
    # compiles the same steps, so all but the first load them

    def __post_init__(self) -> None:
        baselines = [c for c, m in self.intermediate.items() if m is None]
        if len(baselines) != 1:
            raise ValueError(f"intermediate: exactly one config must have mixture None (the "
                             f"baseline), found {baselines or 'none'} in {dict(self.intermediate)}")
        for name, mixture in self.intermediate.items():
            if "/" in name or not name:
                raise ValueError(f"intermediate config name {name!r}: must be a plain name")
            if mixture is not None:
                tasks.get_mixture(mixture)
        for target in self.targets:
            if not tasks.tasks_for(target):
                raise ValueError(f"target {target!r}: no registered tasks of that dataset")
        for name in (self.english_config, self.multilingual_config,
                     *(n for pair in self.more_comparisons for n in pair)):
            if name is not None and name not in self.intermediate:
                raise ValueError(f"config {name!r} is not one of {list(self.intermediate)}")
        for pair in self.more_comparisons:
            if len(pair) != 2:
                raise ValueError(f"more_comparisons: {pair!r} is not an (English-only, "
                                 f"multilingual) pair of configs")
        if self.pretrain is not None and not self.pretrain_mixture:
            raise ValueError("pretrain is set but pretrain_mixture is not")
        if not self.seeds:
            raise ValueError("seeds: need at least one")

    @property
    def baseline(self) -> str:
        return next(c for c, m in self.intermediate.items() if m is None)


# ----------------------------------------------------------------------------------- helpers
def is_chief() -> bool:
    """Whether this process writes the shared files (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def agreed(flag: bool) -> bool:
    """The chief's ``flag`` on every process (skip/resume decisions must not diverge)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def barrier(name: str) -> None:
    """Wait until every process gets here (the chief's files are then visible to all)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"xstilts.experiment:{name}")


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """The tidy table as JSONL (atomically; the chief only)."""
    if not is_chief():
        return
    _atomic_text(path, "".join(json.dumps({k: r[k] for k in FIELDS}) + "\n" for r in rows))


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not is_chief():
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in FIELDS})
    _atomic_text(path, out.getvalue())


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e})") from None
            missing = [k for k in FIELDS if k not in row]
            if missing:
                raise ValueError(f"{path}:{number}: row lacks {missing}; expected {FIELDS}")
            rows.append(row)
    return rows


def _row(config: str, task: str, language: str, split: str, metric: str, value: float,
         seed: int, step: int) -> dict[str, Any]:
    return {"config": config, "task": task, "language": language, "split": split,
            "metric": metric, "value": float(value), "seed": int(seed), "step": int(step)}


def task_kind(spec: tasks.TaskSpec) -> tuple[str, int]:
    """(train.train task type, number of labels) of a task."""
    if spec.kind in ("classification", "tagging"):
        return spec.kind, len(spec.labels or ())
    if spec.kind in ("qa", "multiple_choice", "mlm"):
        return spec.kind, 2
    raise ValueError(f"task {spec.name}: kind {spec.kind!r} cannot be trained")


def mixture_kind(mixture: str) -> tuple[str, int, int] | None:
    """(task type, number of labels, max length) shared by every task of a single-head mixture;
    None when the mixture mixes task kinds or label sets (multi-head: ``mixture_heads``)."""
    names = tasks.mixture_tasks(mixture)
    kinds = {(task_kind(tasks.get_task(t)), tasks.get_task(t).labels) for t in names}
    if len(kinds) != 1:
        return None
    (kind, labels), _ = next(iter(kinds))
    return kind, labels, max(tasks.get_task(t).max_length for t in names)


def data_num_labels(spec: tasks.TaskSpec, data_dir: str | None) -> int:
    """``task_kind``'s label count, read from the train split for an open tag set (CCG)."""
    kind, num_labels = task_kind(spec)
    if kind in ("classification", "tagging") and not spec.labels:
        return len(pipeline.task_labels(spec, data_dir))
    return num_labels


def mixture_heads(mixture: str, data_dir: str | None = None
                  ) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
    """The heads of a multi-head mixture, ``{head: (task type, number of labels)}``, and each
    task's head: tasks naming the same ``head`` (else the same dataset) share one."""
    heads: dict[str, tuple[str, int]] = {}
    task_heads: dict[str, str] = {}
    for name in tasks.mixture_tasks(mixture):
        spec = tasks.get_task(name)
        head = spec.metadata["head"]
        kind = (task_kind(spec)[0], data_num_labels(spec, data_dir))
        if heads.setdefault(head, kind) != kind:
            raise ValueError(f"mixture {mixture}: task {name} is {kind[0]}({kind[1]}) but shares "
                             f"head {head!r} with a {heads[head][0]}({heads[head][1]}) task")
        task_heads[name] = head
    return heads, task_heads


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
            batch = {k: v for k, v in batch.items() if k != "feature_index"}
            if with_task and task is None:
                raise TypeError("factory(with_task=True) needs a MixtureBatcher")
            yield (task, batch) if with_task else batch
            step += 1

    return batches


def dev_factory(batcher_of: Any) -> train_lib.BatchFactory:
    """One pass over a (fixed) evaluation split."""

    def batches(*, shard_index: int, num_shards: int, batch_size: int, start_batch: int
                ) -> Iterator[dict[str, np.ndarray]]:
        batcher = batcher_of(ShardInfo(shard_index, num_shards), batch_size)
        for batch in batcher.epoch():
            yield {k: v for k, v in batch.items() if k != "feature_index"}

    return batches


# ----------------------------------------------------------------------------------- driver
class Experiment:
    """Runs the grid cell by cell (see the module docstring)."""

    def __init__(self, grid: Grid, partitioner: partitioning.Partitioner | None = None,
                 progress: bool = False) -> None:
        self.grid = grid
        self.run_dir = Path(grid.run_dir)
        self.partitioner = partitioner or partitioning.Partitioner()
        self.progress = progress
        self._tokenizer = None
        self._features: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        self._jitted: dict[tuple[Any, ...], Any] = {}
        self.model_config = grid.model_config

    # -- data -------------------------------------------------------------------------------
    @property
    def tokenizer_dir(self) -> Path:
        return Path(self.grid.tokenizer_dir) if self.grid.tokenizer_dir else \
            self.run_dir / "tokenizer"

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from xstilts.tokenization import XLMRTokenizer

            path = self.tokenizer_dir / SPM_FILENAME
            if not path.is_file():
                raise FileNotFoundError(f"no tokenizer at {path}: set tokenizer_dir, or "
                                        f"spm_vocab_size to train one")
            self._tokenizer = XLMRTokenizer(path)
        return self._tokenizer

    def features(self, name: str, split: str, max_length: int | None = None) -> list[dict]:
        length = max_length or tasks.get_task(name).max_length
        key = (name, split, length)
        if key not in self._features:
            self._features[key] = pipeline.task_features(
                name, split, self.tokenizer, data_dir=self.grid.data_dir, max_length=length,
                cache_dir=self.run_dir / "cache")
        return self._features[key]

    def _task_batcher(self, name: str, split: str, length: int, seed: int, shuffle: bool):
        spec = tasks.get_task(name)

        def make(shard: ShardInfo, batch_size: int) -> FeatureBatcher:
            mlm = {"mask_id": self.tokenizer.mask_id} if spec.kind == "mlm" else None
            return FeatureBatcher(self.features(name, split, length), spec.kind,
                                  batch_size=batch_size, length=length, seed=seed,
                                  shuffle=shuffle, shard_info=shard,
                                  num_choices=spec.num_choices, mlm=mlm)

        return make

    def _mixture_batcher(self, mixture: str, length: int | Mapping[str, int], seed: int):
        """Batches of ``mixture`` at one length, or a length per task (multi-head)."""
        def make(shard: ShardInfo, batch_size: int):
            return pipeline.mixture_batcher(
                mixture, self.tokenizer, batch_size=batch_size, data_dir=self.grid.data_dir,
                seed=seed, shard_info=shard, max_length=length,
                cache_dir=self.run_dir / "cache")

        return make

    # -- phases -----------------------------------------------------------------------------
    def prepare_tokenizer(self) -> None:
        path = self.tokenizer_dir / SPM_FILENAME
        if agreed(path.is_file()) or self.grid.spm_vocab_size is None:
            return
        if not is_chief():  # the chief trains it; the others read its file
            barrier("tokenizer")
            return
        import sentencepiece as spm

        if not self.grid.pretrain_mixture:
            raise ValueError("spm_vocab_size needs pretrain_mixture (the text to train on)")
        lines = []
        for name in tasks.mixture_tasks(self.grid.pretrain_mixture):
            lines.extend(e["text"] for e in tasks.get_task(name).examples("train",
                                                                         self.grid.data_dir))
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buffer,
            vocab_size=self.grid.spm_vocab_size, model_type="unigram", unk_id=0, bos_id=1,
            eos_id=2, pad_id=-1, character_coverage=1.0, hard_vocab_limit=False,
            num_threads=1, minloglevel=2)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
        barrier("tokenizer")
        log.info("trained SentencePiece (%d ids) on %d lines of %s", self.tokenizer.vocab_size,
                 len(lines), self.grid.pretrain_mixture)

    def _fit_vocab(self) -> None:
        """A model trained from scratch takes the tokenizer's vocabulary size."""
        if self.grid.pretrained is None and self.grid.pretrain is not None:
            size = self.tokenizer.vocab_size
            if self.model_config.vocab_size != size:
                self.model_config = self.model_config.replace(vocab_size=size)

    def _train(self, model_dir: Path, *, phase: Phase, task_type: str, num_labels: int,
               train_batches: Any, total_steps: int, seed: int, init_encoder_from: str | None,
               eval_batches: Any = None, heads: Mapping[str, tuple[str, int]] | None = None,
               task_heads: Mapping[str, str] | None = None) -> train_lib.TrainResult:
        best = "eval/accuracy" if eval_batches is not None and phase.eval_every_steps else None
        result = train_lib.train(
            model_dir=str(model_dir), model_config=self.model_config, total_steps=total_steps,
            batch_size=phase.batch_size, train_batches=train_batches, task_type=task_type,
            num_labels=num_labels, use_pooler=False, partitioner=self.partitioner,
            optimizer=lambda total_steps: trainer_lib.make_optimizer(
                learning_rate=phase.learning_rate, total_steps=total_steps,
                warmup_fraction=phase.warmup_fraction, weight_decay=phase.weight_decay),
            checkpoint=ckpt_lib.CheckpointConfig(
                save_every_steps=phase.save_every_steps, keep=1, best_metric=best,
                async_save=False),
            init_encoder_from=init_encoder_from,
            init_pretrained_from=None if init_encoder_from else self.grid.pretrained,
            eval_batches=eval_batches, eval_every_steps=phase.eval_every_steps if best else 0,
            seed=seed, log_every_steps=max(1, min(50, total_steps)), progress=self.progress,
            **({} if heads is None else {"heads": heads, "task_heads": task_heads}))
        if result.preempted:  # SIGTERM: the checkpoint is saved; the next run resumes here
            raise Preempted(f"stopped at step {result.step} of {model_dir} (SIGTERM); run "
                            f"again to resume")
        return result

    def phase0(self) -> str | None:
        """MLM pre-training; returns the checkpoint directory of its encoder."""
        g = self.grid
        if g.pretrain is None:
            return None
        model_dir = self.run_dir / "phase0"
        done = model_dir / "DONE"
        ckpts = str(model_dir / "checkpoints")
        if agreed(done.is_file()):
            return ckpts
        phase = g.pretrain
        length = phase.max_length or 128
        start = time.perf_counter()
        self._train(model_dir, phase=phase, task_type="mlm", num_labels=2,
                    train_batches=factory(self._mixture_batcher(g.pretrain_mixture, length, 0)),
                    total_steps=int(phase.steps or 1), seed=0, init_encoder_from=None)
        self._mark_done(done)
        log.info("phase 0 (MLM on %s, %d steps) took %.0f s", g.pretrain_mixture, phase.steps,
                 time.perf_counter() - start)
        return ckpts

    def phase1_seed(self, seed: int) -> int:
        return seed if self.grid.intermediate_per_seed else self.grid.seeds[0]

    def phase1(self, config: str, seed: int, start_from: str | None) -> str | None:
        """Intermediate training of ``config``; returns its checkpoint dir (baseline: phase 0's)."""
        mixture = self.grid.intermediate[config]
        if mixture is None:
            return start_from
        model_dir = self.run_dir / "phase1" / config / f"seed{seed}"
        ckpts = str(model_dir / "checkpoints")
        if agreed((model_dir / "DONE").is_file()):
            return ckpts
        single = mixture_kind(mixture)
        phase = self.grid.intermediate_phase
        names = tasks.mixture_tasks(mixture)
        start = time.perf_counter()
        if single is not None:  # one head (unchanged)
            kind, _, task_length = single
            num_labels = data_num_labels(tasks.get_task(names[0]), self.grid.data_dir)
            length = phase.max_length or task_length
            epoch = tasks.mixture_epoch_size(
                mixture, lambda t: len(self.features(t, "train", length)))
            steps = phase.num_steps(epoch, tasks.get_task(names[0]).epochs, f"phase 1 {config}")
            self._train(model_dir, phase=phase, task_type=kind, num_labels=num_labels,
                        train_batches=factory(self._mixture_batcher(mixture, length, seed)),
                        total_steps=steps, seed=seed, init_encoder_from=start_from)
        else:  # kinds mixed: one head per head group, each task at its own length
            heads, task_heads = mixture_heads(mixture, self.grid.data_dir)
            lengths = {t: min(tasks.get_task(t).max_length, phase.max_length or math.inf)
                       for t in names}
            epoch = tasks.mixture_epoch_size(
                mixture, lambda t: len(self.features(t, "train", lengths[t])))
            steps = phase.num_steps(epoch, tasks.get_task(names[0]).epochs, f"phase 1 {config}")
            log.info("phase 1 %s: %d heads %s", config, len(heads), heads)
            self._train(model_dir, phase=phase, task_type="multitask", num_labels=0,
                        train_batches=factory(self._mixture_batcher(mixture, lengths, seed),
                                              with_task=True),
                        total_steps=steps, seed=seed, init_encoder_from=start_from,
                        heads=heads, task_heads=task_heads)
        self._mark_done(model_dir / "DONE")
        log.info("phase 1 %s seed %d (%s, %d steps) took %.0f s", config, seed, mixture, steps,
                 time.perf_counter() - start)
        return ckpts

    def train_tasks(self) -> dict[str, list[str]]:
        """English train task -> the target datasets evaluated from its fine-tune."""
        out: dict[str, list[str]] = {}
        for target in self.grid.targets:
            train_task = tasks.tasks_for(target)[0].train_task
            if not train_task:
                raise ValueError(f"target {target}: its tasks name no train_task")
            out.setdefault(train_task, []).append(target)
        return out

    def phase2(self, config: str, train_task: str, targets: Sequence[str], seed: int,
               encoder_from: str | None) -> list[dict[str, Any]]:
        """Fine-tune on ``train_task`` from ``encoder_from`` and score every target language."""
        cell = self.run_dir / "phase2" / config / train_task / f"seed{seed}"
        results = cell / "results.jsonl"
        if agreed(results.is_file()):
            return read_rows(results)
        spec = tasks.get_task(train_task)
        kind, num_labels = task_kind(spec)
        phase = Phase.of({**dataclasses.asdict(self.grid.finetune),
                          **self.grid.finetune_overrides.get(train_task, {})},
                         f"finetune_overrides[{train_task!r}]")
        length = phase.max_length or spec.max_length
        train_features = self.features(train_task, "train", length)
        steps = phase.num_steps(len(train_features), spec.epochs, f"phase 2 {train_task}")
        eval_batches = None
        if "dev" in spec.splits and phase.eval_every_steps:
            eval_batches = dev_factory(self._task_batcher(train_task, "dev", length, 0, False))
        start = time.perf_counter()
        result = self._train(
            cell, phase=phase, task_type=kind, num_labels=num_labels,
            train_batches=factory(self._task_batcher(train_task, "train", length, seed, True)),
            total_steps=steps, seed=seed, init_encoder_from=encoder_from,
            eval_batches=eval_batches)
        params, step = self._best_params(cell, kind, num_labels, length, result)
        rows = []
        for target in targets:
            for task_spec in tasks.tasks_for(target):
                if "test" not in task_spec.splits:
                    continue
                scores = self.score(task_spec, params, kind, num_labels, length)
                rows += [_row(config, target, task_spec.language, "test", m, v, seed, step)
                         for m, v in scores.items()]
        write_rows(results, rows)
        barrier(f"phase2 {cell}")
        log.info("phase 2 %s/%s seed %d: %d steps (best %d), scored in %.0f s", config,
                 train_task, seed, steps, step, time.perf_counter() - start)
        return rows

    @staticmethod
    def _mark_done(path: Path) -> None:
        if is_chief():
            _atomic_text(path, "done\n")
        barrier(f"done {path}")

    def _best_params(self, cell: Path, kind: str, num_labels: int, length: int,
                     result: train_lib.TrainResult) -> tuple[Any, int]:
        checkpointer = ckpt_lib.Checkpointer(cell / "checkpoints", ckpt_lib.CheckpointConfig(
            best_metric="eval/accuracy"), read_only=True)
        try:
            step = checkpointer.best_step() or checkpointer.latest_step()
            model = train_lib.build_model(kind, self.model_config, num_labels=num_labels,
                                          use_pooler=False)
            trainer = self._trainer(model, kind)
            shape = self._input_shape(kind, length, self.grid.finetune.batch_size)
            params = checkpointer.restore_params(trainer.abstract_state(shape).params, step)
        finally:
            checkpointer.manager.close()
        return params, int(step)

    def _trainer(self, model: Any, kind: str) -> trainer_lib.Trainer:
        tx, schedule = trainer_lib.make_optimizer(total_steps=1)
        return trainer_lib.Trainer(model, trainer_lib.task_loss(kind), tx, schedule,
                                   self.partitioner)

    @staticmethod
    def _input_shape(kind: str, length: int, batch: int, choices: int = 4) -> tuple[int, ...]:
        return (batch, choices, length) if kind == "multiple_choice" else (batch, length)

    # -- phase 3: scoring -------------------------------------------------------------------
    def _apply_fn(self, kind: str, num_labels: int) -> Any:
        """The jitted inference function of a task model (one per kind: no recompiles)."""
        key = ("apply", kind, num_labels)
        if key not in self._jitted:
            model = train_lib.build_model(kind, self.model_config, num_labels=num_labels,
                                          use_pooler=False)
            # Replicated outputs: every process can read them (multi-process runs score on all).
            self._jitted[key] = jax.jit(lambda p, ids, mask: model.apply(
                {"params": p}, ids, mask, deterministic=True),
                out_shardings=self.partitioner.replicated)
        return self._jitted[key]

    def _predict(self, params: Any, features: list[dict], kind: str, num_labels: int,
                 length: int) -> list[Any]:
        """Model outputs per feature (host numpy), in feature order."""
        batcher = FeatureBatcher(features, kind, batch_size=self.grid.eval_batch_size,
                                 length=length, shuffle=False)
        apply = self._apply_fn(kind, num_labels)
        outputs: list[Any] = [None] * len(features)
        with self.partitioner.context():
            for batch in batcher.epoch():
                out = jax.device_get(apply(params, batch["input_ids"], batch["attention_mask"]))
                for row, index in enumerate(batch["feature_index"]):
                    if index >= 0:
                        outputs[index] = (tuple(o[row] for o in out) if isinstance(out, tuple)
                                          else out[row])
        return outputs

    def score(self, spec: tasks.TaskSpec, params: Any, kind: str, num_labels: int,
              length: int) -> dict[str, float]:
        """Zero-shot test scores of one task-language (XTREME's metrics, x100)."""
        features = self.features(spec.name, "test", length)
        outputs = self._predict(params, features, kind, num_labels, length)
        examples = list(spec.examples("test", self.grid.data_dir))
        if kind == "classification":
            gold = [e["label"] for e in examples]
            predicted = [spec.labels[int(np.argmax(o))] for o in outputs]
            return metrics.accuracy(gold, predicted)
        if kind == "tagging":
            return tagging_scores(spec, examples, features, [np.argmax(o, -1) for o in outputs])
        if kind == "qa":
            start = np.stack([o[0] for o in outputs])
            end = np.stack([o[1] for o in outputs])
            offsets = [[None if a < 0 else (int(a), int(b)) for a, b in f["offsets"]]
                       for f in features]
            contexts = {e["id"]: e["context"] for e in examples}
            answers = metrics.qa_postprocess(start, end, offsets,
                                             [f["example_id"] for f in features], contexts)
            return qa_scores(spec, examples, answers)
        raise ValueError(f"task {spec.name}: cannot score kind {kind!r}")

    def chance_rows(self) -> list[dict[str, Any]]:
        """Constant predictors per target language: the chance level the report states."""
        rows = []
        for target in self.grid.targets:
            for spec in tasks.tasks_for(target):
                if "test" not in spec.splits:
                    continue
                train_spec = tasks.get_task(spec.train_task)
                examples = list(spec.examples("test", self.grid.data_dir))
                scores = chance_scores(spec, examples, list(train_spec.examples(
                    "train", self.grid.data_dir)))
                rows += [_row(CHANCE, target, spec.language, "test", m, v, 0, 0)
                         for m, v in scores.items()]
        for name in self.grid.retrieval:
            for lang, pairs in self._retrieval_sets(name):
                metric = "accuracy" if pairs["kind"] == "tatoeba" else "f1"
                value = 100.0 / len(pairs["test"]["target"]) if metric == "accuracy" else 0.0
                rows.append(_row(CHANCE, name, lang, "test", metric, value, 0, 0))
        return rows

    # -- retrieval --------------------------------------------------------------------------
    @property
    def retrieval_layer(self) -> int:
        n = self.model_config.num_hidden_layers
        if self.grid.retrieval_layer is not None:
            return self.grid.retrieval_layer
        return max(1, round(n * 14 / 24))

    def _retrieval_sets(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(language, {"kind", "dev", "test"}) where dev/test hold source/target/gold."""
        if name == "synthetic.bucc":
            english = [e["text"] for e in tasks.get_task("synthetic.mlm.en").examples(
                "train", self.grid.data_dir)]
            for spec in tasks.tasks_for("synthetic.parallel"):
                full = tasks.load_retrieval(spec.name, "test", self.grid.data_dir)
                yield spec.language, {"kind": "bucc", **bucc_like(full, english)}
            return
        for spec in tasks.tasks_for(name):
            if name == "bucc2018":
                dev = tasks.load_retrieval(spec.name, "dev", self.grid.data_dir)
                test = tasks.load_retrieval(spec.name, "test", self.grid.data_dir)
                yield spec.language, {"kind": "bucc", "dev": dev, "test": test}
            else:
                test = tasks.load_retrieval(spec.name, "test", self.grid.data_dir)
                yield spec.language, {"kind": "tatoeba", "test": test}

    def retrieval_rows(self, config: str, encoder_from: str | None, seed: int
                       ) -> list[dict[str, Any]]:
        """BUCC and Tatoeba scores of the phase-1 encoder (mean-pooled hidden state)."""
        if not self.grid.retrieval:
            return []
        encoder, step = self._encoder_params(encoder_from)
        embed_fn, length = self._embed_fn(), 128
        batch_size = self.grid.eval_batch_size

        def embed(sentences: Sequence[str]) -> np.ndarray:
            # Mean-pooled hidden state ``retrieval_layer`` (xstilts.evals.retrieval's recipe)
            # with one jitted function for every call (sentence_embeddings jits per call).
            ids = [self.tokenizer.encode(s, max_length=length) for s in sentences]
            rows = -(-len(ids) // batch_size) * batch_size
            padded = np.full((rows, length), self.tokenizer.pad_id, np.int32)
            for row, seq in enumerate(ids):
                padded[row, :len(seq)] = seq
            padded[len(ids):, :2] = (self.tokenizer.bos_id, self.tokenizer.eos_id)
            mask = (padded != self.tokenizer.pad_id).astype(np.int32)
            out = []
            with self.partitioner.context():
                for start in range(0, rows, batch_size):
                    out.append(np.asarray(embed_fn(encoder, padded[start:start + batch_size],
                                                   mask[start:start + batch_size])))
            vectors = np.concatenate(out)[:len(ids)].astype(np.float32)
            # Each call embeds one language's side of one set: centring it here is per language.
            return retrieval.center(vectors) if self.grid.retrieval_center else vectors

        # The nearest-neighbour search runs on this process's devices: every process mines
        # the same (replicated) embeddings, so a global mesh would only add cross-host traffic.
        knn_mesh = {} if jax.process_count() == 1 else {"mesh": jax.sharding.Mesh(
            np.array(jax.local_devices()), ("data",))}
        rows = []
        for name in self.grid.retrieval:
            for lang, sets in self._retrieval_sets(name):
                if sets["kind"] == "tatoeba":
                    test = sets["test"]
                    other = embed([t for _, t in test["source"]])
                    english = embed([t for _, t in test["target"]])
                    predicted = retrieval.tatoeba_predict(english, other, **knn_mesh)
                    value = retrieval.tatoeba_accuracy(predicted, np.arange(len(predicted)))
                    rows.append(_row(config, name, lang, "test", "accuracy", value, seed, step))
                    continue
                candidates = {}
                for split in ("dev", "test"):
                    data = sets[split]
                    src_ids, src = zip(*data["source"], strict=True)
                    trg_ids, trg = zip(*data["target"], strict=True)
                    candidates[split] = retrieval.bucc_candidates(
                        list(map(str, src_ids)), list(src), embed(src),
                        list(map(str, trg_ids)), list(trg), embed(trg), **knn_mesh)
                gold = {split: {(str(a), str(b)) for a, b in sets[split]["gold"]}
                        for split in ("dev", "test")}
                out = retrieval.bucc_evaluate(candidates["dev"], gold["dev"], candidates["test"],
                                              gold["test"] or None)
                if "test" in out:
                    rows += [_row(config, name, lang, "test", m, out["test"][m], seed, step)
                             for m in ("f1", "precision", "recall")]
        return rows

    def _embed_fn(self) -> Any:
        if "embed" not in self._jitted:
            from xstilts.models.xlmr import XLMRModel

            model, layer = XLMRModel(self.model_config), self.retrieval_layer
            if not 0 <= layer <= self.model_config.num_hidden_layers:
                raise ValueError(f"retrieval_layer {layer}: expected 0.."
                                 f"{self.model_config.num_hidden_layers} (0 = embeddings)")

            def embed(params: Any, ids: Any, mask: Any) -> Any:
                _, hidden = model.apply({"params": params}, ids, mask,
                                        output_hidden_states=True)
                return retrieval.mean_pool(hidden[layer].astype(np.float32), mask)

            self._jitted["embed"] = jax.jit(embed, out_shardings=self.partitioner.replicated)
        return self._jitted["embed"]

    def _encoder_params(self, encoder_from: str | None) -> tuple[Any, int]:
        from xstilts.models import heads

        model = train_lib.build_model("mlm", self.model_config)
        abstract = self._trainer(model, "mlm").abstract_state(self._input_shape("mlm", 8, 8))
        if encoder_from is None:
            if self.grid.pretrained is None:
                raise ValueError("retrieval needs an encoder: phase 0, phase 1 or pretrained")
            from xstilts.models.convert import load_hf_checkpoint, split_encoder

            _, loaded = load_hf_checkpoint(self.grid.pretrained)
            return split_encoder(loaded)[0], 0  # the encoder is at the top level there
        source = ckpt_lib.Checkpointer(encoder_from, read_only=True)
        try:
            step = source.latest_step()
            encoder = source.restore_encoder(abstract.params[heads.ENCODER_KEY], step)
        finally:
            source.manager.close()
        return encoder, int(step)

    # -- the grid ---------------------------------------------------------------------------
    def cells(self) -> list[tuple[str, str, list[str], int]]:
        return [(config, train_task, targets, seed)
                for config in self.grid.intermediate
                for seed in self.grid.seeds
                for train_task, targets in self.train_tasks().items()]

    def write_meta(self) -> None:
        g = self.grid
        meta = {
            "configs": list(g.intermediate), "mixtures": dict(g.intermediate),
            "baseline": g.baseline, "english_config": g.english_config,
            "multilingual_config": g.multilingual_config,
            "more_comparisons": [list(pair) for pair in g.more_comparisons],
            "targets": list(g.targets),
            "retrieval": list(g.retrieval), "seeds": list(g.seeds),
            "low_resource": list(g.low_resource), "tiers": dict(g.tiers or {}),
            "primary_metric": primary_metrics(g.targets, g.retrieval),
            "retrieval_layer": self.retrieval_layer if g.retrieval else None,
            "retrieval_center": g.retrieval_center,
            "model": dataclasses.asdict(self.model_config),
        }
        if is_chief():
            _atomic_text(self.run_dir / "experiment.json", json.dumps(meta, indent=1) + "\n")

    def run(self) -> list[dict[str, Any]]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.grid.compilation_cache:
            enable_compilation_cache(self.run_dir / "jax_cache")
        self.write_meta()
        self.prepare_tokenizer()
        self._fit_vocab()
        start = time.perf_counter()
        chance_path = self.run_dir / "chance.jsonl"
        if not agreed(chance_path.is_file()):
            write_rows(chance_path, self.chance_rows())
            barrier("chance")
        rows = read_rows(chance_path)
        phase0 = self.phase0()
        encoders: dict[tuple[str, int], str | None] = {}
        for config in self.grid.intermediate:
            for seed in sorted({self.phase1_seed(s) for s in self.grid.seeds}):
                encoders[config, seed] = self.phase1(config, seed, phase0)
                path = self.run_dir / "phase1" / config / f"seed{seed}" / "retrieval.jsonl"
                if not agreed(path.is_file()):
                    write_rows(path, self.retrieval_rows(config, encoders[config, seed], seed))
                    barrier(f"retrieval {path}")
                rows += read_rows(path)
        cells = self.cells()
        for number, (config, train_task, targets, seed) in enumerate(cells, 1):
            done_before = (self.run_dir / "phase2" / config / train_task / f"seed{seed}" /
                           "results.jsonl").is_file()
            rows += self.phase2(config, train_task, targets, seed,
                                encoders[config, self.phase1_seed(seed)])
            elapsed = time.perf_counter() - start
            log.info("cell %d/%d %s %s seed %d %s (%.0f s elapsed)", number, len(cells), config,
                     train_task, seed, "skipped (finished before)" if done_before else "done",
                     elapsed)
        rows.sort(key=lambda r: (r["config"] != CHANCE, r["config"], r["task"], r["language"],
                                 r["metric"], r["seed"]))
        write_rows(self.run_dir / "results.jsonl", rows)
        write_csv(self.run_dir / "results.csv", rows)
        barrier("results")
        return rows


def enable_compilation_cache(directory: Path) -> None:
    """JAX's persistent compilation cache (every compile kept, however fast)."""
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir:
        return  # the user chose one
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # applies even if something was compiled before


# ----------------------------------------------------------------------------------- scoring
def primary_metrics(targets: Sequence[str], retrieval_tasks: Sequence[str]) -> dict[str, str]:
    """The one number per language: qa -> (EM+F1)/2 ("em_f1"), tagging f1, else accuracy/f1."""
    out = {}
    for target in targets:
        kind = tasks.tasks_for(target)[0].kind
        out[target] = {"qa": "em_f1", "tagging": "f1"}.get(kind, "accuracy")
    for name in retrieval_tasks:
        out[name] = "f1" if "bucc" in name else "accuracy"
    return out


def tagging_scores(spec: tasks.TaskSpec, examples: Sequence[Mapping[str, Any]],
                   features: Sequence[Mapping[str, Any]], predicted: Sequence[np.ndarray]
                   ) -> dict[str, float]:
    """seqeval F1 from first-sub-token predictions assembled over each sentence's windows."""
    by_id: dict[Any, dict[int, str]] = {}
    for feature, tags in zip(features, predicted, strict=True):
        words = by_id.setdefault(feature["example_id"], {})
        for position in np.flatnonzero(np.asarray(feature["label_mask"])):
            words[int(feature["word_ids"][position])] = spec.labels[int(tags[position])]
    gold, pred = [], []
    for e in examples:
        words = by_id.get(e["id"], {})
        gold.append(list(e["tags"]))
        pred.append([words.get(i, "O") for i in range(len(e["tags"]))])
    return {k: v for k, v in metrics.tagging_f1(gold, pred).items()}


def _squad_dataset(examples: Sequence[Mapping[str, Any]]) -> list[dict]:
    return [{"paragraphs": [{"context": e["context"], "qas": [
        {"id": e["id"], "question": e["question"], "answers": e["answers"]}]}]}
        for e in examples]


def qa_scores(spec: tasks.TaskSpec, examples: Sequence[Mapping[str, Any]],
              answers: Mapping[str, str]) -> dict[str, float]:
    dataset = _squad_dataset(examples)
    if spec.metric == "mlqa_em_f1":
        return metrics.mlqa_evaluate(dataset, answers, spec.language)
    return metrics.squad_evaluate(dataset, answers)


def chance_scores(spec: tasks.TaskSpec, examples: Sequence[Mapping[str, Any]],
                  train_examples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Scores of a predictor that ignores its input: the English-train majority label (pair
    classification), the majority tag for every word (tagging), a random context word (QA,
    seeded)."""
    from collections import Counter

    if spec.kind == "classification":
        majority = Counter(e["label"] for e in train_examples).most_common(1)[0][0]
        return metrics.accuracy([e["label"] for e in examples], [majority] * len(examples))
    if spec.kind == "tagging":
        majority = Counter(t for e in train_examples for t in e["tags"]).most_common(1)[0][0]
        return metrics.tagging_f1([list(e["tags"]) for e in examples],
                                  [[majority] * len(e["tags"]) for e in examples])
    if spec.kind == "qa":
        rng = np.random.default_rng(0)
        answers = {}
        for e in examples:
            words = e["context"].split()
            answers[e["id"]] = words[int(rng.integers(len(words)))] if words else ""
        return qa_scores(spec, examples, answers)
    raise ValueError(f"task {spec.name}: no chance level for kind {spec.kind!r}")


def bucc_like(parallel: Mapping[str, list], english_pool: Sequence[str], keep: float = 0.7,
              seed: int = 0) -> dict[str, dict[str, list]]:
    """A BUCC-style mining set from parallel pairs: each half (dev / test) keeps the translation
    of a random ``keep`` share of its source sentences and adds as many unrelated English
    sentences, so some source sentences have no partner and the threshold matters."""
    rng = np.random.default_rng(seed)
    pairs = list(zip(parallel["source"], parallel["target"], strict=True))
    half = len(pairs) // 2
    used = {text for _, (_, text) in pairs}
    pool = [s for s in dict.fromkeys(english_pool) if s not in used]
    out = {}
    for split, chunk in (("dev", pairs[:half]), ("test", pairs[half:])):
        source = [(f"{split}-s{i}", text) for i, ((_, text), _) in enumerate(chunk)]
        target, gold = [], []
        for i, (_, (_, text)) in enumerate(chunk):
            if rng.random() < keep:
                target.append((f"{split}-t{i}", text))
                gold.append((f"{split}-s{i}", f"{split}-t{i}"))
        missing = len(chunk) - len(gold)
        target += [(f"{split}-d{j}", pool.pop()) for j in range(missing) if pool]
        out[split] = {"source": source, "target": target, "gold": gold}
    return out


# ----------------------------------------------------------------------------------- gin
def run_experiment(*, run_dir: str, model_config: XLMRConfig,
                   intermediate: Mapping[str, str | None], targets: Sequence[str],
                   dry_run: bool = False,
                   partitioner: partitioning.Partitioner | None = None, progress: bool = False,
                   lowered: dict | None = None, **settings: Any) -> Any:
    """Run (or, with ``dry_run``, build and lower) the grid; gin binds the arguments."""
    grid = make_grid(run_dir=run_dir, model_config=model_config, intermediate=intermediate,
                     targets=targets, **settings)
    if dry_run:
        from xstilts import experiment_dry_run

        return experiment_dry_run.dry_run(grid, partitioner=partitioner, lowered=lowered)
    return Experiment(grid, partitioner=partitioner, progress=progress).run()


def make_grid(**kwargs: Any) -> Grid:
    for key in ("pretrain",):
        if kwargs.get(key) is not None:
            kwargs[key] = Phase.of(kwargs[key], key)
    for key in ("intermediate_phase", "finetune"):
        if key in kwargs:
            kwargs[key] = Phase.of(kwargs[key], key)
    known = {f.name for f in dataclasses.fields(Grid)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"run_experiment: unknown settings {unknown}; expected some of "
                         f"{sorted(known)}")
    for key in ("targets", "retrieval", "seeds", "low_resource"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = tuple(kwargs[key])
    return Grid(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xstilts.experiment",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--dry_run", action="store_true",
                        help="build every Task and Mixture and lower every train step (no data, "
                             "no download, no training)")
    args = parser.parse_args(train_lib.rewrite_gin_args(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.gin_file:
        raise SystemExit("python -m xstilts.experiment: at least one --gin_file is required")
    bindings = list(args.gin_bindings)
    if args.dry_run:
        bindings.append("experiment.run_experiment.dry_run = True")
    train_lib.parse_gin(args.gin_file, ["from xstilts import experiment", *bindings])
    result = train_lib._configured(run_experiment)()  # noqa: SLF001
    if args.dry_run:
        print(result.summary())
    else:
        print(f"{len(result)} result rows")
    return 0


if __name__ == "__main__":
    from xstilts import experiment as _experiment  # gin registered the imported module

    sys.exit(_experiment.main())
