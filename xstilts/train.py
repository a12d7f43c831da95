"""Gin-configurable training loop and its command line (t5x's ``train.py``).

    python -m xstilts.train \\
        --gin_file=xstilts/gin/models/xlmr_base.gin --gin_file=xstilts/gin/runs/finetune.gin \\
        --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=1000 \\
        --gin_bindings="trainer.make_optimizer.learning_rate = 2e-5"

``train(...)`` is keyword-only. Batches come from a factory called as ``factory(shard_index=...,
num_shards=..., batch_size=<per host>, start_batch=<batches already consumed>)`` that yields
host-local dicts with DESIGN.md's keys (the data package supplies real ones;
:func:`synthetic_batches` generates them for tests and smoke runs). The run directory (a local
path or a URL such as ``gs://bucket/run``: ``checkpoints.run_path``, written through
``etils.epath`` and Orbax, never turned into a local path) gets ``checkpoints/``, TensorBoard
event files (tensorboardX: clu's writers need TensorFlow and TensorBoard at import time, which
the core install does not carry), ``train_metrics.jsonl`` (one line per step), ``config.gin``
and ``operative_config.gin``, and ``data_manifest.json`` (files, counts and shares of what a
``SeqioBatches`` factory reads).

The host never waits for the device between steps (t5x's way): each step's metrics stay on the
device until the next logging step (every ``log_every_steps``, and before any evaluation or
checkpoint save), when all of them are read in one transfer and written (the jsonl lines, the
TensorBoard scalars of the last step, ``step_hook`` per step, the tqdm postfix). A NaN/Inf loss
or gradient norm is therefore found at the next logging step, evaluation or save, at most
``log_every_steps - 1`` steps after it happened; the error names the first bad step and no
checkpoint is ever written after it (every save reads the pending metrics first).

Throughput (``perf/*`` each logging window): tokens/s and MFU count the **real** tokens
(``attention_mask``; padding examples of the data pipeline carry an all-zero mask) over
**train-step time only**: the first step of every new batch shape (a compile), evaluations and
checkpoint saves are timed out of the window (the device is synchronised around them, not around
ordinary steps). ``perf/padding_efficiency`` = real / computed (padded) tokens;
``perf/mfu`` = model FLOPs of the computed shape (``trainer.train_flops_per_example``; MLM at
its masked positions) x padding efficiency / window seconds / devices / peak per device, and
``perf/mfu_computed`` the same without the padding factor. The peak is per JAX device (one GPU,
one TPU v4+ chip, one v2/v3 core): ``PEAK_TFLOPS`` in gin, else :data:`DEVICE_PEAK_TFLOPS` by the
device kind, else (CPU) no MFU.

seqio (t5x's way in): ``runs/*.gin`` default ``TRAIN_BATCHES`` to :class:`SeqioBatches`, so a
seqio Task or Mixture trains by name, its head(s) taken from the task::

    python -m xstilts.train --gin_file=models/xlmr_base.gin --gin_file=runs/intermediate.gin \\
        --gin.MIXTURE_OR_TASK_NAME="'my_mixture'" --gin.TASK_FEATURE_LENGTHS="{'inputs': 128}" \\
        --gin.MIXTURE_OR_TASK_MODULE="'my_tasks'" --gin.MODEL_DIR="'/tmp/run'" ...

Multi-task (``heads=``, jiant's multi-task training): one shared encoder with one head per task,
``train_batches`` yields ``(task name, batch)`` pairs (one task per step), and every task's step
is its own jitted function over one shared train state and optimizer.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from xstilts import checkpoints as ckpt_lib
from xstilts import gin_utils, multihost, partitioning, run_settings
from xstilts import trainer as trainer_lib
from xstilts.data import manifest, tasks
from xstilts.data.feature_converters import provenance_of
from xstilts.data.readers import DataFormatError
from xstilts.gin_utils import parse_gin, rewrite_gin_args
from xstilts.models import convert
from xstilts.models import heads as heads_lib  # ``train(heads=...)`` is a parameter
from xstilts.models.xlmr import XLMRConfig
from xstilts.seqio_feed import (  # noqa: F401 (re-exported: gin's train_script.SeqioBatches)
    DATA_MANIFEST,
    LABELLED_KINDS,
    DataModel,
    SeqioBatches,
    seqio_data_model,
)
from xstilts.stop_signals import StopRequest as _StopRequest
from xstilts.stop_signals import StopRequested
from xstilts.summaries import SummaryWriter, cut_metrics  # noqa: F401 (train.cut_metrics)

if __name__ == "__main__":
    # ``python -m xstilts.train`` runs this file as ``__main__``. Registering it under its own
    # name keeps one copy of the module: the gin files' ``from xstilts import train`` then binds
    # the functions that ``main`` below calls, not those of a second import.
    sys.modules.setdefault("xstilts.train", sys.modules[__name__])

log = logging.getLogger("xstilts.train")

BatchFactory = Callable[..., Iterator[Mapping[str, np.ndarray]]]


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) went NaN/Inf; the last good checkpoint is left intact."""


# Models -----------------------------------------------------------------------------------------
def build_model(task_type: str, config: XLMRConfig, *, num_labels: int = 2,
                use_pooler: bool = True) -> Any:
    """The ``xstilts.models.heads`` task model for ``task_type``."""
    if task_type not in heads_lib.TASK_MODELS:
        raise ValueError(f"unknown task_type {task_type!r}: expected one of "
                         f"{sorted(heads_lib.TASK_MODELS)}")
    cls = heads_lib.TASK_MODELS[task_type]
    if task_type == "classification":
        return cls(config, num_labels, use_pooler=use_pooler)
    if task_type == "tagging":
        return cls(config, num_labels)
    return cls(config)


HeadSpec = tuple[tuple[str, str, int], ...]


def head_spec(heads_: Mapping[str, Sequence[Any]]) -> HeadSpec:
    """``{name: (kind, num_labels)}`` -> ``((name, kind, num_labels), ...)``, checked."""
    out = []
    for name, value in heads_.items():
        if isinstance(value, str) or len(value) != 2:
            raise ValueError(f"heads[{name!r}] = {value!r}: expected (task kind, num_labels)")
        kind, num_labels = value
        if kind not in heads_lib.TASK_MODELS:
            raise ValueError(f"heads[{name!r}]: unknown task kind {kind!r}: expected one of "
                             f"{sorted(heads_lib.TASK_MODELS)}")
        out.append((str(name), str(kind), int(num_labels)))
    if not out:
        raise ValueError("heads: need at least one (name -> (kind, num_labels))")
    return tuple(out)


def load_pretrained_encoder(params: Any, path_or_hub_id: str) -> Any:
    """``params`` with the encoder of a Hugging Face XLM-R checkpoint, sharded like ``params``."""
    _, loaded = convert.load_hf_checkpoint(path_or_hub_id)
    encoder, _ = convert.split_encoder(loaded)
    fresh = params[heads_lib.ENCODER_KEY]
    if "pooler" not in encoder and "pooler" in fresh:
        encoder = {**encoder, "pooler": fresh["pooler"]}  # HF task models drop the pooler
    ckpt_lib.check_same_shapes(ckpt_lib.param_shapes(encoder), ckpt_lib.param_shapes(fresh),
                               where=f"Hugging Face checkpoint {path_or_hub_id}")
    placed = jax.tree.map(lambda new, old: jax.device_put(np.asarray(new, old.dtype),
                                                          old.sharding), encoder, fresh)
    return {**params, heads_lib.ENCODER_KEY: placed}


# Synthetic batches ------------------------------------------------------------------------------
def synthetic_batches(*, shard_index: int, num_shards: int, batch_size: int, start_batch: int,
                      task_type: str = "classification", length: int = 16,
                      vocab_size: int = 1002, num_labels: int = 3, num_choices: int = 2,
                      seed: int = 0, num_batches: int | None = None,
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic generated batches: batch ``i`` depends only on ``(seed, i)``.

    Each host gets rows ``[shard_index * batch_size, (shard_index + 1) * batch_size)`` of the
    global batch, so any number of hosts sees the same global data. Sequences have random
    lengths (padding id 1 after them), ``<s>`` first and ``</s>`` last; the last example of
    every other batch is a padding example (``example_mask = 0``). Labels are a function of
    the tokens, so the loss can go down.
    """
    global_size = batch_size * num_shards
    rows = slice(shard_index * batch_size, (shard_index + 1) * batch_size)
    index = start_batch
    while num_batches is None or index < num_batches:
        rng = np.random.default_rng([seed, index])
        lead = (global_size, num_choices) if task_type == "multiple_choice" else (global_size,)
        ids = rng.integers(5, vocab_size - 1, (*lead, length)).astype(np.int32)
        lengths = rng.integers(max(3, length // 2), length + 1, lead)
        positions = np.arange(length)
        mask = (positions < lengths[..., None]).astype(np.int32)
        ids[..., 0] = 0
        np.put_along_axis(ids, (lengths - 1)[..., None], 2, axis=-1)
        ids = np.where(mask == 1, ids, 1).astype(np.int32)
        batch: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        example_mask = np.ones((global_size,), np.int32)
        if index % 2 == 1:
            example_mask[-1] = 0
        batch["example_mask"] = example_mask
        if task_type in ("classification", "multiple_choice"):
            n = num_choices if task_type == "multiple_choice" else num_labels
            first = ids[:, 0, 1] if task_type == "multiple_choice" else ids[:, 1]
            batch["labels"] = (first % n).astype(np.int32)
        elif task_type in ("tagging", "mlm"):
            n = vocab_size if task_type == "mlm" else num_labels
            label_mask = mask.copy()
            label_mask[:, 0] = 0
            np.put_along_axis(label_mask, (lengths - 1)[:, None], 0, axis=1)
            if task_type == "mlm":
                chosen = (rng.random(ids.shape) < 0.15) & (label_mask == 1)
                chosen[:, 1] = label_mask[:, 1] == 1  # at least one target per row
                batch["labels"] = ids.copy()
                batch["input_ids"] = np.where(chosen, vocab_size - 1, ids).astype(np.int32)
                label_mask = chosen.astype(np.int32)
            else:
                batch["labels"] = (ids % n).astype(np.int32)
            batch["label_mask"] = label_mask.astype(np.int32)
        elif task_type == "qa":
            start = rng.integers(1, np.maximum(lengths - 2, 2))
            batch["start_positions"] = start.astype(np.int32)
            batch["end_positions"] = np.minimum(start + 1, lengths - 2).astype(np.int32)
        else:
            raise ValueError(f"synthetic_batches: unknown task_type {task_type!r}")
        yield {k: v[rows] for k, v in batch.items()}
        index += 1


_write_atomic = ckpt_lib.write_atomic  # the name other modules and tests use


def write_gin_configs(model_dir: str | os.PathLike[str]) -> None:
    """``config.gin`` (everything parsed) and ``operative_config.gin`` (what was used)."""
    if jax.process_index() != 0:
        return
    run_dir = ckpt_lib.run_path(model_dir)
    _write_atomic(run_dir / "config.gin", gin.config_str())
    _write_atomic(run_dir / "operative_config.gin", gin.operative_config_str())


# Throughput -------------------------------------------------------------------------------------
# Dense bf16 peak TFLOP/s of one JAX device (vendor data sheets, no sparsity). A GPU is one
# device whatever the host holds (8 H100s are 8 devices of 989, not one of 7,912); TPU v2/v3
# expose each core as a device, v4 and later one device per chip (megacore).
DEVICE_PEAK_TFLOPS = {
    "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0,
    "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
    "TPU v2": 22.5, "TPU v3": 61.5, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
    "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


def device_peak_tflops(device: Any) -> float | None:
    """The per-device peak of ``device`` (its ``device_kind``; the longest matching name of
    ``DEVICE_PEAK_TFLOPS``), or None (a CPU, an unknown accelerator: no MFU is logged)."""
    kind = str(getattr(device, "device_kind", "")).lower()
    matches = [name for name in DEVICE_PEAK_TFLOPS if name.lower() in kind]
    return DEVICE_PEAK_TFLOPS[max(matches, key=len)] if matches else None


@dataclasses.dataclass
class ThroughputWindow:
    """One logging window's train steps: their time (train steps only: no first step of a new
    shape, i.e. no compile, no evaluation, no checkpoint save), real tokens (``attention_mask``,
    the device's ``tokens`` metric), computed tokens (the padded shape) and model FLOPs of the
    computed shape (``trainer.train_flops_per_example``)."""

    seconds: float = 0.0
    steps: int = 0
    real_tokens: float = 0.0
    computed_tokens: float = 0.0
    flops: float = 0.0

    def add(self, *, real_tokens: float, computed_tokens: float, flops: float) -> None:
        self.steps += 1
        self.real_tokens += real_tokens
        self.computed_tokens += computed_tokens
        self.flops += flops

    def summary(self, *, num_devices: int, peak_tflops: float | None) -> dict[str, float]:
        """``perf/*`` scalars; empty when no timed step is in the window.

        ``perf/tokens_per_s``: real tokens per second; ``perf/padding_efficiency``: real over
        computed tokens; ``perf/tflops_per_s_per_device``: model FLOPs of the real tokens (the
        computed FLOPs times the padding efficiency) per second per device, and ``perf/mfu``
        that over ``peak_tflops`` (per device); ``perf/computed_*`` and ``perf/mfu_computed``
        count every computed (padded) token: what the hardware did, not what the data needed.
        """
        if self.steps == 0 or self.seconds <= 0 or self.computed_tokens <= 0:
            return {}
        efficiency = self.real_tokens / self.computed_tokens
        computed_tflops = self.flops / self.seconds / num_devices / 1e12
        out = {"perf/tokens_per_s": self.real_tokens / self.seconds,
               "perf/computed_tokens_per_s": self.computed_tokens / self.seconds,
               "perf/padding_efficiency": efficiency,
               "perf/step_time_s": self.seconds / self.steps,
               "perf/tflops_per_s_per_device": computed_tflops * efficiency,
               "perf/computed_tflops_per_s_per_device": computed_tflops}
        if peak_tflops:
            out["perf/mfu"] = computed_tflops * efficiency / peak_tflops
            out["perf/mfu_computed"] = computed_tflops / peak_tflops
        return out


class _StepClock:
    """Wall time of train steps: running between ``resume`` and ``pause``/``lap``."""

    def __init__(self) -> None:
        self._since: float | None = None

    def resume(self) -> None:
        self._since = time.perf_counter()

    def pause(self) -> float:
        """Seconds since the last resume/lap (0 when paused); stops the clock."""
        elapsed = self.lap()
        self._since = None
        return elapsed

    def lap(self) -> float:
        """Seconds since the last resume/lap (0 when paused); keeps running."""
        if self._since is None:
            return 0.0
        now = time.perf_counter()
        elapsed, self._since = now - self._since, now
        return elapsed


@dataclasses.dataclass
class _PendingStep:
    """A dispatched step whose metrics (device arrays) are read at the next logging step."""

    step: int
    task: str | None
    head: str | None
    metrics: Mapping[str, Any]
    timed: bool
    computed_tokens: float
    flops: float


# The loop ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    step: int
    state: trainer_lib.TrainState | None  # None: stopped by a signal before the first step
    history: list[dict[str, Any]]  # per step; multi-task records also name the task and head
    preempted: bool = False


def _host_batch(batch: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    out = {}
    for key, value in batch.items():
        array = np.asarray(value)
        if array.dtype.kind in "iub" and array.dtype != np.int32:
            array = array.astype(np.int32)
        out[key] = array
    if "input_ids" not in out:
        raise ValueError(f"{where}: batch has no 'input_ids' (keys {sorted(out)})")
    return out


def evaluate(trainer: trainer_lib.Trainer, params: Any, batches: Iterator[Mapping[str, Any]],
             layout: partitioning.DataLayout,
             check: Callable[..., None] | None = None) -> dict[str, float]:
    """Loss and accuracy over a finite iterator of host-local batches (honours example_mask).

    ``check(batch, where, source=...)``: run on each host batch first (``train`` and
    ``evaluate_checkpoint`` pass ``trainer.check_batch_values`` for their model, so an eval
    label out of range is an error as in training, not a clipped one); ``source`` describes a
    row's task, split, file and example where the batch carries its provenance, else None."""
    totals: dict[str, float] = {}
    for number, batch in enumerate(batches):
        host = _host_batch(batch, f"eval batch {number}")
        if check is not None:
            check(host, f"eval batch {number}", source=_provenance_source(batch))
        global_batch = trainer.partitioner.host_local_to_global(host, layout.global_batch_size)
        sums = jax.device_get(trainer.eval_step(params, global_batch))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    if not totals:
        raise ValueError("evaluation got no batches")
    return trainer_lib.summarize_eval(totals)


def _check_values(batch: Mapping[str, np.ndarray], where: str, *, kind: str, num_labels: int,
                  model_config: XLMRConfig, source: Callable[[int], str] | None = None,
                  factory: Any = None) -> None:
    """``trainer.check_batch_values`` against ``model_config``'s vocabulary and positions; an
    error names the row's ``source`` (task, split, file, example), else the ``factory``."""
    trainer_lib.check_batch_values(batch, kind=kind, num_labels=num_labels,
                                   vocab_size=model_config.vocab_size, where=where,
                                   max_length=model_config.max_length,
                                   source=source or _factory_source(factory))


def _provenance_source(batch: Any) -> Callable[[int], str] | None:
    """``row -> "task 'x', split 'y', file f, example index i [id ...]"`` of a batch that
    carries its provenance (``feature_converters.Batch``: the native pipeline), else None."""
    provenance = provenance_of(batch)
    return None if provenance is None else provenance.describe


def _factory_source(factory: Any) -> Callable[[int], str] | None:
    """What is known of a plain batch's rows: the factory that made them (no task, no file)."""
    if factory is None:
        return None
    name = getattr(factory, "__name__", None) or getattr(getattr(factory, "func", None),
                                                         "__name__", None)
    name = name or type(factory).__name__
    named = getattr(factory, "mixture_or_task_name", None)  # SeqioBatches: its task or mixture
    if isinstance(named, str):
        return lambda row: f"from {name} of {named!r}, which records no split, file or example"
    return lambda row: f"from {name}, which records no task or file"


def evaluate_heads(head_trainers: Mapping[str, trainer_lib.Trainer], params: Any,
                   items: Iterator[Any], layout: partitioning.DataLayout,
                   unpack: Callable[[Any, str], tuple[Any, str, dict[str, np.ndarray]]],
                   ) -> dict[str, float]:
    """Multi-task evaluation over ``(task, batch)`` items: ``<head>/<metric>`` per head, and the
    unweighted mean over heads of each metric (``loss``, ``accuracy``)."""
    totals: dict[str, dict[str, float]] = {}
    for number, item in enumerate(items):
        _, head, batch = unpack(item, f"eval batch {number}")
        trainer = head_trainers[head]
        global_batch = trainer.partitioner.host_local_to_global(batch, layout.global_batch_size)
        sums = jax.device_get(trainer.eval_step(params, global_batch))
        for k, v in sums.items():
            totals.setdefault(head, {})[k] = totals.get(head, {}).get(k, 0.0) + float(v)
    if not totals:
        raise ValueError("evaluation got no batches")
    per_head = {head: trainer_lib.summarize_eval(sums) for head, sums in totals.items()}
    out = {f"{head}/{k}": v for head, result in per_head.items() for k, v in result.items()}
    for k in ("loss", "accuracy"):
        out[k] = float(np.mean([result[k] for result in per_head.values()]))
    return out


@dataclasses.dataclass
class EarlyStopping:
    """Evaluations since the best value of ``metric`` (``patience`` None: never stop)."""

    metric: str | None
    mode: str = "max"
    patience: int | None = None
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped: bool = False

    def update(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Record one evaluation; True when it ends training."""
        if self.metric is None or self.metric not in metrics:
            return False
        value = float(metrics[self.metric])
        better = self.best is None or (value > self.best if self.mode == "max"
                                       else value < self.best)
        if better:
            self.best, self.best_step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        self.stopped = self.patience is not None and self.bad_evals >= self.patience
        return self.stopped

    def as_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None, current: EarlyStopping) -> EarlyStopping:
        """The saved counters under the current run's metric, mode and patience."""
        if not meta:
            return current
        keep = {k: meta[k] for k in ("best", "best_step", "bad_evals", "stopped") if k in meta}
        return dataclasses.replace(current, **keep)


def check_pooler(meta: Mapping[str, Any], use_pooler: bool | None, where: str) -> bool:
    """The checkpoint's ``use_pooler``; an explicit value that contradicts it is an error."""
    saved = meta.get("use_pooler")
    if saved is None:
        if use_pooler is None:
            raise ValueError(f"{where}: the checkpoint does not record use_pooler; pass it")
        return use_pooler
    if use_pooler is not None and bool(saved) != bool(use_pooler):
        raise ValueError(f"{where}: trained with use_pooler={saved}, asked for "
                         f"use_pooler={use_pooler} (the pooler would be untrained or dropped)")
    return bool(saved)


_MACRO_NAMES = {"total_steps": "TRAIN_STEPS", "model_config": "MODEL_CONFIG (a models/*.gin)"}


def _validated_hint(checkpointer: ckpt_lib.Checkpointer) -> str:
    """Which checkpoint to resume from after a NaN: the latest one that a later finite step
    validated (``Checkpointer.mark_validated``), and how."""
    where = checkpointer.directory
    validated = checkpointer.latest_validated()
    later = [s for s in checkpointer.all_steps() if validated is None or s > validated]
    if validated is None:
        return (f"No checkpoint in {where} was followed by a finite step "
                f"(saved: {checkpointer.all_steps() or 'none'}), so none is known to be good: "
                f"start again in a new MODEL_DIR.")
    move = "; ".join(f"mv {where}/{s} {where}.unvalidated-step-{s}" for s in later)
    return (f"The last checkpoint validated by a finite next step is step {validated} in "
            f"{where}" + (f"; the later {later} were not: move them aside ({move}) and" if later
                          else ": to resume from it,") +
            " rerun with the change and --on_change=keep.")


def _check_required(fn_name: str, **values: Any) -> None:
    """A ``%gin.REQUIRED`` macro that reached us unset is an error naming the macro."""
    missing = [name for name, value in values.items() if value is gin.REQUIRED]
    if missing:
        macros = ", ".join(_MACRO_NAMES.get(n, n.upper()) for n in missing)
        raise ValueError(f"{fn_name}(): required settings {missing} were not given: set the "
                         f"gin macros {macros} (e.g. --gin.{missing[0].upper()}=...)")


def _model_of_data(train_batches: Any, task_type: str | None, num_labels: int | None,
                   task_heads: Mapping[str, str] | None) -> tuple[Any, Any, Any, Any]:
    """``(task_type, num_labels, heads, task_heads)``: the given ones, or (``task_type`` None)
    those of a factory that knows its data (``SeqioBatches.model()``). A given ``num_labels``
    is first checked against the label list of the project task(s) the factory names."""
    _check_named_labels(train_batches, task_type, num_labels)
    describe = getattr(train_batches, "model", None)
    if task_type is not None and (num_labels is not None or task_type not in LABELLED_KINDS):
        return task_type, 2 if num_labels is None else num_labels, None, task_heads
    if not callable(describe):
        raise ValueError(f"train(): task_type={task_type!r}, num_labels={num_labels!r}: set the "
                         f"gin macros TASK_TYPE and NUM_LABELS, or train on a factory that knows "
                         f"its task (TRAIN_BATCHES = @train_script.SeqioBatches())")
    model = describe()
    if model.heads:
        return "multitask", 2, model.heads, task_heads or model.task_heads
    return model.task_type, model.num_labels, None, task_heads


class LabelCountError(ValueError):
    """NUM_LABELS disagrees with the label list of the task the data names."""


def _check_named_labels(train_batches: Any, task_type: str | None,
                        num_labels: int | None) -> None:
    """NUM_LABELS against the label list of each project task (``tasks.TASKS``) that the
    factory's ``mixture_or_task_name`` names (a task, or a mixture's tasks): an error naming
    the task and its labels, before any data is read or any step compiled."""
    name = getattr(train_batches, "mixture_or_task_name", None)
    if num_labels is None or not isinstance(name, str):
        return
    names = [name] if name in tasks.TASKS else \
        list(tasks.mixture_tasks(name)) if name in tasks.MIXTURES else []
    for task in names:
        spec = tasks.get_task(task)
        if spec.labels is None or spec.kind not in LABELLED_KINDS or \
                task_type not in (None, spec.kind):
            continue
        if int(num_labels) != len(spec.labels):
            within = "" if task == name else f" (of mixture {name!r})"
            raise LabelCountError(
                f"NUM_LABELS={num_labels} but task {task!r}{within} has {len(spec.labels)} "
                f"labels {list(spec.labels)}: set --gin.NUM_LABELS={len(spec.labels)}, or None "
                f"to take the task's")


_STOP: contextvars.ContextVar[_StopRequest | None] = contextvars.ContextVar("stop",
                                                                             default=None)


def _holding_run_lock(fn: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """``fn`` run while process 0 holds ``model_dir/writer.lock`` (``checkpoints.RunLock``),
    released however it ends, and while SIGTERM/SIGINT stop it cleanly (``_StopRequest``: a
    signal before the first step returns a preempted result with a log line, not exit 143).
    The wrapper keeps ``fn``'s signature (gin checks parameters against it)."""

    @functools.wraps(fn)
    def locked(**kwargs: Any) -> TrainResult:
        model_dir = kwargs.get("model_dir")
        lock = ckpt_lib.RunLock(model_dir) if (
            jax.process_index() == 0 and model_dir and model_dir is not gin.REQUIRED) else None
        with _StopRequest() as stop:
            token = _STOP.set(stop)
            try:
                if lock is not None:
                    lock.acquire()
                return fn(**kwargs)
            except StopRequested as signal_name:
                log.warning("%s before the first step (during set-up): stopping; nothing was "
                            "trained or saved by this run, so rerunning the same command "
                            "starts (or resumes) where it would have", signal_name)
                return TrainResult(step=-1, state=None, history=[], preempted=True)
            finally:
                _STOP.reset(token)
                if lock is not None:
                    lock.release()

    locked.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return locked


@_holding_run_lock
def train(*, model_dir: str, model_config: XLMRConfig, total_steps: int, batch_size: int,
          train_batches: BatchFactory, task_type: str | None = "classification",
          num_labels: int | None = 2,
          use_pooler: bool = True, partitioner: partitioning.Partitioner | None = None,
          optimizer: Callable[..., Any] = trainer_lib.make_optimizer,
          num_microbatches: int = 1,
          checkpoint: ckpt_lib.CheckpointConfig | None = None,
          init_encoder_from: str | None = None,
          init_pretrained_from: str | None = None,
          eval_batches: BatchFactory | None = None, eval_every_steps: int = 0,
          seed: int = 0, log_every_steps: int = 10,
          peak_tflops_per_device: float | None = None,
          stop_at_step: int | None = None,
          step_hook: Callable[[int, Mapping[str, float]], None] | None = None,
          progress: bool = True,
          heads: Mapping[str, Sequence[Any]] | None = None,
          task_heads: Mapping[str, str] | None = None,
          evaluator: Callable[[Any], Mapping[str, float]] | None = None,
          patience: int | None = None, on_change: str = "stop") -> TrainResult:
    """Train (or resume) a task model; returns the last step, the state and per-step metrics.

    Resumes from the latest finished checkpoint in ``model_dir/checkpoints`` (params, optimizer,
    step, RNG and data position); otherwise initialises from ``seed`` and, with
    ``init_encoder_from``, restores the encoder of that checkpoint directory (STILTs), or with
    ``init_pretrained_from``, the encoder of a Hugging Face checkpoint (directory or hub id). The
    optimizer schedule always spans ``total_steps``; ``stop_at_step`` ends this invocation early
    (with a checkpoint), as a preemption would.

    ``task_type`` None (``num_labels`` None): the head(s) that ``train_batches.model()`` names
    (``SeqioBatches``: the seqio Task's kind and label count, or one head per head group of a
    Mixture drawn one task per step).

    Multi-task: ``heads`` maps each head's name to ``(task kind, num_labels)`` (``task_type`` and
    ``num_labels`` are then unused); ``train_batches`` (and ``eval_batches``) yield ``(task,
    batch)`` pairs, and ``task_heads`` maps a task to its head (default: the task's own name).
    Each step trains one task: its head and the encoder get gradients, the other heads zero
    (AdamW still moves them by their moments and weight decay, as in jiant). The records of
    ``train_metrics.jsonl`` then carry ``task`` and ``head``; evaluation reports
    ``eval/<head>/<metric>`` and the unweighted mean over heads as ``eval/<metric>``.

    Selection: every ``eval_every_steps`` the device metrics of ``eval_batches`` and the numbers
    of ``evaluator(params)`` (a host-side scorer, e.g. seqeval F1 on English dev) are logged as
    ``eval/<name>`` and saved with the checkpoint; ``checkpoint.best_metric`` keeps the best one
    (ties: the earlier step). ``patience``: stop after that many evaluations without a strict
    improvement of ``best_metric`` (jiant's ``no_improvements_for_n_evals``); the stop is saved,
    so a resumed run does not train on.

    Logging: every ``log_every_steps`` (runs/*.gin: 50) the metrics of the steps since the last
    one are read from the device in one transfer (no per-step host sync), written one
    ``train_metrics.jsonl`` line per step (also the ``history`` and ``step_hook(step, metrics)``,
    called then, not at the step), and the window's TensorBoard scalars (``train/*`` of its last
    step, ``perf/*``: the module docstring). ``peak_tflops_per_device`` None: the device kind's
    (``DEVICE_PEAK_TFLOPS``). ``model_dir`` may be a ``gs://`` URL.

    One writer per run directory: process 0 holds ``model_dir/writer.lock``
    (``checkpoints.RunLock``) for the whole run; a second run into the same directory stops at
    once naming the holder (pid, host), and a lock left by a killed run on this host is stale.

    A run remembers what it is (``run_settings``): its effective settings are stored in
    ``model_dir/run_settings.json`` before the first step, and a resume whose settings differ
    stops before any step, printing the difference setting by setting, unless ``on_change``
    is ``'keep'`` (gin ``ON_CHANGE``, flag ``--on_change=keep``).

    Faults: SIGTERM and SIGINT checkpoint and return (``preempted``; before the first step they
    return at once with a log line); a failed background save is raised before the next step
    (``CheckpointSaveError``: step, path, cause; its partial directory removed); a NaN stop
    names the latest checkpoint a later finite step validated; a latest checkpoint that cannot
    be read is moved aside with a warning and the previous intact one resumed;
    ``train_metrics.jsonl`` is cut back to the restored step.
    """
    call_args = dict(locals())
    stop = _STOP.get() or _StopRequest()
    _check_required("train", model_dir=model_dir, model_config=model_config,
                    total_steps=total_steps, batch_size=batch_size, train_batches=train_batches,
                    task_type=task_type, num_labels=num_labels,
                    init_encoder_from=init_encoder_from,
                    init_pretrained_from=init_pretrained_from)
    if heads is None:
        task_type, num_labels, heads, task_heads = _model_of_data(
            train_batches, task_type, num_labels, task_heads)
    ckpt_lib.run_path(model_dir).mkdir(parents=True, exist_ok=True)
    partitioner = partitioner or partitioning.Partitioner()
    checkpoint = checkpoint or ckpt_lib.CheckpointConfig()
    if patience is not None and not checkpoint.best_metric:
        raise ValueError("train(): patience needs checkpoint.best_metric (what must improve)")
    chief = jax.process_index() == 0
    records = train_batches.data_records() if chief and hasattr(train_batches, "data_records") \
        else None  # provenance of what the run reads
    partitioner.check_batch_size(batch_size)
    layout = partitioner.data_layout(batch_size)

    tx, schedule = optimizer(total_steps=total_steps)
    if chief:  # before any step: a resume with other settings stops here
        settings = run_settings.train_settings(
            {**call_args, "task_type": task_type, "num_labels": num_labels, "heads": heads,
             "task_heads": task_heads, "checkpoint": checkpoint, "partitioner": partitioner},
            schedule=schedule, data_records=records)
        steps = run_settings.finished_steps(ckpt_lib.run_path(model_dir) / "checkpoints")
        resume_step = steps[-1] if steps else None
        try:
            accepted = run_settings.check(model_dir, settings, resume_step=resume_step,
                                          on_change=on_change)
        except run_settings.SettingsChangedError as error:
            settings_error: run_settings.SettingsChangedError | None = error
        else:
            settings_error = None
    # Every process stops with the chief (the others would wait in the first collective).
    if not multihost.agreed(not chief or settings_error is None):
        raise settings_error if chief else run_settings.SettingsChangedError(
            f"{model_dir}: process 0 found settings that differ from those the run was "
            f"started with (its log lists them); stopping with it")
    if records is not None:
        _write_atomic(ckpt_lib.run_path(model_dir) / DATA_MANIFEST,
                      manifest.manifest_json(records) + "\n")
    multi = heads is not None
    if multi:
        spec = head_spec(heads)
        kinds = {name: kind for name, kind, _ in spec}
        model = heads_lib.XLMRMultiTask(model_config, spec, use_pooler=use_pooler)
        # The all-heads model initialises the state; each head trains with its own Trainer.
        trainer = trainer_lib.Trainer(model, trainer_lib.task_loss(spec[0][1]), tx, schedule,
                                      partitioner, num_microbatches=num_microbatches)
        head_trainers = {name: trainer_lib.Trainer(
            model.clone(task=name), trainer_lib.task_loss(kind), tx, schedule, partitioner,
            num_microbatches=num_microbatches) for name, kind, _ in spec}
    else:
        model = build_model(task_type, model_config, num_labels=num_labels,
                            use_pooler=use_pooler)
        trainer = trainer_lib.Trainer(model, trainer_lib.task_loss(task_type), tx, schedule,
                                      partitioner, num_microbatches=num_microbatches)
        head_trainers = {}

    def head_of(task: str, where: str) -> str:
        head = task if task_heads is None else task_heads.get(task)
        if head not in head_trainers:
            raise ValueError(f"{where}: task {task!r} has no head: heads {sorted(head_trainers)}"
                             + ("" if task_heads is None else
                                f", tasks {sorted(task_heads)}"))
        return head

    labels_of = {name: (kind, n) for name, kind, n in spec} if multi else {}

    def unpack(item: Any, where: str, check: bool = False
               ) -> tuple[str | None, str | None, dict[str, np.ndarray]]:
        """(task, head, host batch) of one item of ``train_batches`` / ``eval_batches``; with
        ``check`` (train batches) its token ids and labels are checked against the model
        (``trainer.check_batch_values``: an error, never a clipped label or a NaN)."""
        if not multi:
            batch = _host_batch(item, where)
            if check:
                _check_values(batch, where, kind=task_type, num_labels=num_labels,
                              model_config=model_config, source=_provenance_source(item),
                              factory=train_batches)
            return None, None, batch
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"{where}: multi-task batches must be (task name, batch) pairs, "
                             f"got {type(item).__name__}")
        head = head_of(item[0], where)
        batch = _host_batch(item[1], where)
        if check:
            kind, n = labels_of[head]
            provenance = provenance_of(item[1])
            if provenance is None:
                where = f"{where} (task {item[0]!r}, head {head!r})"
            _check_values(batch, where, kind=kind, num_labels=n, model_config=model_config,
                          source=None if provenance is None else
                          lambda row: f"{provenance.describe(row)}, head {head!r}")
        return item[0], head, batch

    check_eval = functools.partial(_check_values, kind=task_type, num_labels=num_labels,
                                   model_config=model_config, factory=eval_batches)

    def batches_from(start: int) -> Iterator[Any]:
        return iter(train_batches(shard_index=layout.shard_index, num_shards=layout.num_shards,
                                  batch_size=layout.per_host_batch_size, start_batch=start))

    # Peek at the first batch for shapes (the iterator restarts at the right position below).
    _, probe_head, probe = unpack(next(batches_from(0)), "train batch 0", check=True)
    if multi:  # the all-heads model initialises on [B, L] whatever the first task's shape
        input_shape = (batch_size, probe["input_ids"].shape[-1])
        head_trainers[probe_head].check_batch(
            {**probe, "input_ids": np.zeros((batch_size, *probe["input_ids"].shape[1:]),
                                            np.int32)})
    else:
        input_shape = (batch_size, *probe["input_ids"].shape[1:])
        trainer.check_batch({**probe, "input_ids": np.zeros(input_shape, np.int32)})

    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.run_path(model_dir) / "checkpoints",
                                         checkpoint)
    try:
        stopping = EarlyStopping(checkpoint.best_metric, checkpoint.best_mode, patience)
        restored = checkpointer.restore_latest_intact(trainer.abstract_state(input_shape))
        if restored is not None:
            state, meta = restored
            latest = int(meta["step"])
            start_batch = int(meta["data_position"].get("batches_consumed", latest))
            check_pooler(meta, use_pooler, checkpointer.directory)
            stopping = EarlyStopping.from_meta(meta.get("early_stopping"), stopping)
            log.info("resumed from step %d of %s", latest, checkpointer.directory)
        else:
            state = trainer.init_state(jax.random.PRNGKey(seed), input_shape)
            if init_encoder_from:
                params = ckpt_lib.restore_encoder_into(state.params, init_encoder_from)
                state = state.replace(params=params)
            elif init_pretrained_from:
                state = state.replace(params=load_pretrained_encoder(state.params,
                                                                     init_pretrained_from))
            start_batch = 0
    except BaseException:
        checkpointer.close()
        raise
    start_step = int(jax.device_get(state.step))
    end_step = start_step if stopping.stopped else min(total_steps, stop_at_step or total_steps)

    def flops_per_example(kind: str, shape: tuple[int, ...]) -> float:
        length = int(shape[-1])
        return trainer_lib.train_flops_per_example(
            model_config, length, num_choices=int(shape[1]) if len(shape) == 3 else 1,
            mlm=kind == "mlm",
            mlm_predictions=trainer_lib.mlm_max_predictions(length) if kind == "mlm" else None)

    peak = peak_tflops_per_device or device_peak_tflops(jax.devices()[0])
    writer = SummaryWriter(model_dir, enabled=chief, start_step=start_step)
    history: list[dict[str, Any]] = []
    preempted = False
    batches = batches_from(start_batch)
    consumed = start_batch
    from tqdm import tqdm

    bar = tqdm(total=end_step, initial=start_step, disable=not (chief and progress),
               desc="train", unit="step", dynamic_ncols=True)
    window = ThroughputWindow()
    clock = _StepClock()
    compiled: set[Any] = set()  # step signatures already compiled (their first step is untimed)
    pending: list[_PendingStep] = []  # dispatched steps whose metrics are still on the device
    last: dict[str, float] = {}  # the metrics of the last fetched step
    window_losses: dict[str, list[float]] = {}  # multi-task: this window's losses per head
    save_meta = {"task_type": "multitask", "heads": {n: [k, c] for n, k, c in spec}} if multi \
        else {"task_type": task_type}
    save_meta["use_pooler"] = use_pooler
    unvalidated: set[int] = set()  # saved steps whose next step's metrics are not yet read
    if start_step and start_step not in checkpointer.validated_steps():
        unvalidated.add(start_step)  # resumed: the first step validates the restored one

    def fetch_pending() -> None:
        """Read the pending steps' metrics from the device (one transfer; it waits for the last
        dispatched step), check them, and record them: a ``train_metrics.jsonl`` line, the
        history and ``step_hook`` per step, the throughput window's real tokens."""
        nonlocal last
        if not pending:
            return
        values = jax.device_get([p.metrics for p in pending])
        done = list(pending)
        pending.clear()
        for entry, raw in zip(done, values, strict=True):
            metrics = {k: float(v) for k, v in raw.items()}
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                writer.flush()
                checkpointer.wait()
                raise NonFiniteLossError(
                    f"loss {metrics['loss']} / grad norm {metrics['grad_norm']} at step "
                    f"{entry.step}{f' (task {entry.task})' if multi else ''}: stopping. "
                    f"No checkpoint was saved at or after it. "
                    f"{_validated_hint(checkpointer)} "
                    f"Every batch's token ids and labels were checked in range before its "
                    f"step, so the cause is the optimisation: lower the learning rate "
                    f"(or raise the warm-up)")
            if entry.step - 1 in unvalidated:  # the parameters saved there passed a step
                unvalidated.discard(entry.step - 1)
                checkpointer.mark_validated(entry.step - 1, entry.step)
            record: dict[str, Any] = {"step": entry.step, **{k: metrics[k] for k in (
                "loss", "accuracy", "grad_norm", "learning_rate", "weight", "tokens")}}
            if multi:
                record.update(task=entry.task, head=entry.head)
                window_losses.setdefault(entry.head, []).append(metrics["loss"])
            history.append(record)
            writer.step_record(record)
            if step_hook is not None:
                step_hook(entry.step, metrics)
            if entry.timed:
                window.add(real_tokens=metrics["tokens"], computed_tokens=entry.computed_tokens,
                           flops=entry.flops)
            last = metrics

    def untimed(fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (an evaluation, a checkpoint save) outside the throughput window: the
        steps already dispatched finish (and are fetched) first."""
        fetch_pending()
        window.seconds += clock.pause()
        try:
            return fn()
        finally:
            clock.resume()

    def save(step_state: trainer_lib.TrainState, metrics: Mapping[str, float] | None = None):
        # The pending metrics are checked first: a non-finite step is never checkpointed.
        untimed(lambda: checkpointer.save(
            step_state, data_position={"batches_consumed": consumed}, metrics=metrics,
            extra_meta={**save_meta, "total_steps": total_steps,
                        "early_stopping": stopping.as_meta()}))
        unvalidated.add(int(jax.device_get(step_state.step)))

    def run_eval() -> dict[str, float]:
        out: dict[str, float] = {}
        if eval_batches is not None:
            eval_it = iter(eval_batches(shard_index=layout.shard_index,
                                        num_shards=layout.num_shards,
                                        batch_size=layout.per_host_batch_size, start_batch=0))
            out.update(evaluate(trainer, state.params, eval_it, layout, check=check_eval)
                       if not multi else
                       evaluate_heads(head_trainers, state.params, eval_it, layout,
                                      functools.partial(unpack, check=True)))
        if evaluator is not None:
            out.update({k: float(v) for k, v in evaluator(state.params).items()})
        return out

    if chief:  # stored once the data and the model passed their checks, before any step
        run_settings.record(model_dir, settings, accepted=accepted,
                            resume_step=None if resume_step is None else start_step)
    try:
        stop.enter_loop()
        step = start_step
        clock.resume()
        while step < end_step:
            checkpointer.poll()  # a failed background save stops the run here
            try:
                task, head, host = unpack(next(batches), f"train batch {consumed} "
                                          f"(step {step + 1})", check=True)
            except StopIteration:
                raise ValueError(f"train_batches ran out after {consumed} batches; "
                                 f"{end_step} steps need one batch each") from None
            global_batch = partitioner.host_local_to_global(host, batch_size)
            shape = (batch_size, *host["input_ids"].shape[1:])
            signature = (head, tuple((k, v.shape) for k, v in sorted(host.items())))
            first_of_shape = signature not in compiled
            if first_of_shape:  # it compiles: keep it (and only it) out of the window
                if pending:
                    jax.block_until_ready(pending[-1].metrics)
                window.seconds += clock.pause()
            step_trainer = head_trainers[head] if multi else trainer
            state, metrics = step_trainer.train_step(state, global_batch)
            consumed += 1
            step += 1
            pending.append(_PendingStep(
                step, task, head, metrics, timed=not first_of_shape,
                computed_tokens=float(np.prod(shape)),
                flops=batch_size * flops_per_example(kinds[head] if multi else task_type,
                                                     shape)))
            if first_of_shape:
                jax.block_until_ready(metrics)
                compiled.add(signature)
                clock.resume()
            bar.update(1)
            if step == start_step + 1:
                write_gin_configs(model_dir)  # every configurable has been called by now
            log_now = step % log_every_steps == 0 or step == end_step
            if log_now:
                fetch_pending()
                window.seconds += clock.lap()

            eval_metrics = None
            if (eval_batches is not None or evaluator is not None) and eval_every_steps and (
                    step % eval_every_steps == 0 or step == end_step):
                result = untimed(run_eval)
                eval_metrics = {f"eval/{k}": v for k, v in result.items()}
                writer.scalars(step, eval_metrics)
                if stopping.update(step, eval_metrics):
                    log.info("early stop at step %d: %s did not improve on %.4f (step %d) "
                             "in %d evaluations", step, stopping.metric, stopping.best,
                             stopping.best_step, stopping.patience)
            if log_now:
                perf = window.summary(num_devices=jax.device_count(), peak_tflops=peak)
                per_head = {f"train/{h}/loss": float(np.mean(v))
                            for h, v in window_losses.items()}
                writer.scalars(step, {f"train/{k}": last[k] for k in (
                    "loss", "accuracy", "grad_norm", "learning_rate")} | perf | per_head)
                writer.flush()
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                window = ThroughputWindow()
                window_losses = {}
            stop_now = stop.requested if jax.process_count() == 1 else (
                step % log_every_steps == 0 and stop.agreed())
            if (step % checkpoint.save_every_steps == 0 or step == end_step or stop_now
                    or eval_metrics is not None):
                save(state, eval_metrics)
            if stop_now:
                preempted = True
                log.warning("stopped at step %d after SIGTERM/SIGINT (checkpoint of step "
                            "%d saved in %s)", step, step, checkpointer.directory)
                break
            if stopping.stopped:
                break
        fetch_pending()
        checkpointer.wait()
        write_gin_configs(model_dir)
    except BaseException:
        bar.close()
        writer.close()
        try:
            checkpointer.close()
        except ckpt_lib.CheckpointSaveError as error:  # the error in flight is the first
            log.error("%s", error)
        raise
    bar.close()
    writer.close()
    checkpointer.close()
    return TrainResult(step=int(jax.device_get(state.step)), state=state, history=history,
                       preempted=preempted)


def evaluate_checkpoint(*, model_dir: str, model_config: XLMRConfig, batch_size: int,
                        eval_batches: BatchFactory, task_type: str = "classification",
                        num_labels: int = 2, use_pooler: bool | None = None,
                        partitioner: partitioning.Partitioner | None = None,
                        step: int | None = None) -> dict[str, float]:
    """Loss and accuracy of a saved checkpoint (latest, or ``step``) on ``eval_batches``.

    ``use_pooler`` None: the checkpoint's own (saved by ``train``); a value that contradicts it
    is an error (an untrained pooler would be applied silently).

    Writes ``eval_results.json`` (step and metrics) into ``model_dir`` on the chief host.
    """
    _check_required("evaluate_checkpoint", model_dir=model_dir, model_config=model_config,
                    batch_size=batch_size, eval_batches=eval_batches, task_type=task_type,
                    num_labels=num_labels)
    partitioner = partitioner or partitioning.Partitioner()
    layout = partitioner.data_layout(batch_size)
    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.run_path(model_dir) / "checkpoints",
                                         read_only=True)
    try:
        step = checkpointer._step_or_latest(step)  # noqa: SLF001
        use_pooler = check_pooler(checkpointer.metadata(step), use_pooler, checkpointer.directory)
    except BaseException:
        checkpointer.manager.close()
        raise
    model = build_model(task_type, model_config, num_labels=num_labels, use_pooler=use_pooler)
    tx, schedule = trainer_lib.make_optimizer(total_steps=1)
    trainer = trainer_lib.Trainer(model, trainer_lib.task_loss(task_type), tx, schedule,
                                  partitioner)

    def batches() -> Iterator[Mapping[str, Any]]:
        return iter(eval_batches(shard_index=layout.shard_index, num_shards=layout.num_shards,
                                 batch_size=layout.per_host_batch_size, start_batch=0))

    first = next(batches())
    probe = _host_batch(first, "eval batch 0")
    _check_values(probe, "eval batch 0", kind=task_type, num_labels=num_labels,
                  model_config=model_config, source=_provenance_source(first),
                  factory=eval_batches)
    input_shape = (batch_size, *probe["input_ids"].shape[1:])
    try:
        params = checkpointer.restore_params(trainer.abstract_state(input_shape).params, step)
    finally:
        checkpointer.manager.close()
    result = evaluate(trainer, params, batches(), layout, check=functools.partial(
        _check_values, kind=task_type, num_labels=num_labels, model_config=model_config,
        factory=eval_batches))
    if jax.process_index() == 0:
        _write_atomic(ckpt_lib.run_path(model_dir) / "eval_results.json",
                      json.dumps({"step": step, **result}, indent=1) + "\n")
        write_gin_configs(model_dir)
    log.info("eval of step %d: %s", step, result)
    return result


def entry_point(*, action: str = "train") -> Any:
    """What ``python -m xstilts.train`` runs: ``'train'`` or ``'evaluate'`` (eval.gin)."""
    actions = {"train": train, "evaluate": evaluate_checkpoint}
    if action not in actions:
        raise ValueError(f"entry_point.action {action!r}: expected one of {sorted(actions)}")
    return gin_utils.configured(actions[action])()


# Command line -----------------------------------------------------------------------------------
def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xstilts.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file (repeatable; later files override earlier ones)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="one gin binding, e.g. 'MODEL_DIR = \"/tmp/x\"' (repeatable)")
    parser.add_argument("--gin_search_paths", action="append", default=[],
                        help="directories searched for relative --gin_file paths and includes")
    parser.add_argument("--coordinator_address", default=None,
                        help="multi-process: host:port of process 0 (jax.distributed)")
    parser.add_argument("--seqio_additional_cache_dirs", action="append", default=[],
                        help="directory searched for offline-cached seqio Tasks (repeatable; "
                             "t5x's flag; USE_CACHED_TASKS reads them)")
    parser.add_argument("--on_change", choices=run_settings.ON_CHANGE, default=None,
                        help="a resume whose settings differ from the run's "
                             "(MODEL_DIR/run_settings.json): 'stop' (the default) prints the "
                             "difference and stops; 'keep' resumes with the new settings and "
                             "records the change (gin: ON_CHANGE)")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    return parser.parse_args(rewrite_gin_args(argv))


# Errors that say what is wrong, where, and what to do: the command line prints the message alone.
REPORTED_ERRORS = (trainer_lib.BadBatchError, DataFormatError, LabelCountError,
                   gin_utils.GinMacroError,
                   run_settings.SettingsChangedError, ckpt_lib.RunLockedError,
                   ckpt_lib.CheckpointReadError, ckpt_lib.CheckpointSaveError,
                   NonFiniteLossError)


def _log_to_stderr() -> None:
    """``xstilts.*`` INFO logs on stderr (absl, imported by Orbax, owns the root logger)."""
    package = logging.getLogger("xstilts")
    if not any(getattr(h, "_xstilts", False) for h in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        handler._xstilts = True  # type: ignore[attr-defined]
        package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_flags(sys.argv[1:] if argv is None else argv)
    _log_to_stderr()
    partitioning.initialize_distributed(coordinator_address=args.coordinator_address,
                                        num_processes=args.num_processes,
                                        process_id=args.process_id)
    if not args.gin_file:
        raise SystemExit("python -m xstilts.train: at least one --gin_file is required")
    if args.seqio_additional_cache_dirs:
        import seqio

        seqio.add_global_cache_dirs([*seqio.get_global_cache_dirs(),
                                     *args.seqio_additional_cache_dirs])
    bindings = list(args.gin_bindings)
    if args.on_change is not None:
        bindings.append(f"train_script.train.on_change = {args.on_change!r}")
    try:
        with _StopRequest():  # a signal during start-up (gin, data, model) stops it cleanly
            parse_gin(args.gin_file, bindings, args.gin_search_paths)
            result = gin_utils.configured(entry_point)()
    except StopRequested as signal_name:
        log.warning("%s during start-up: stopping before the first step (nothing trained or "
                    "saved)", signal_name)
        return 0
    except REPORTED_ERRORS as error:  # each names what is wrong and the fix: no traceback
        text = "\n".join(line for line in str(error).splitlines()
                         if not line.startswith("  In call to configurable"))  # gin's note
        log.error("%s: %s", type(error).__name__, text)
        return 1
    if isinstance(result, TrainResult):
        if result.state is None:
            log.info("stopped before the first step (signal)")
        else:
            log.info("finished at step %d%s", result.step,
                     " (preempted)" if result.preempted else "")
    return 0


def console_entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_entry()
