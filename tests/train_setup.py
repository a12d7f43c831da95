"""The small training run the trainer tests share (pytest process and subprocess workers alike)."""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

import jax
import numpy as np

from xstilts import checkpoints, partitioning, train, trainer
from xstilts.models.xlmr import XLMRConfig

BATCH, LENGTH, NUM_LABELS = 8, 16, 3


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache, shared with the subprocess workers.

    The same tiny train step is compiled by several ``train()`` calls and processes; XLA:CPU
    takes 10-30 s per compile on the 2-core machine, the cache makes the repeats ~1 s.
    """
    path = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                 os.path.join(tempfile.gettempdir(), "xstilts_test_jax_cache"))
    jax.config.update("jax_compilation_cache_dir", path)


def make_partitioner(mesh: dict[str, int]) -> partitioning.Partitioner:
    n = int(np.prod(list(mesh.values())))
    return partitioning.Partitioner(partitioning.create_mesh(**mesh, devices=jax.devices()[:n]))


def run_train(spec: dict[str, Any], *, stop_at_step: int | None = None) -> train.TrainResult:
    """``train()`` on tiny XLM-R classification with generated batches, as ``spec`` says."""
    dropout = spec.get("dropout", 0.0)
    config = XLMRConfig.tiny(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return train.train(
        model_dir=spec["model_dir"], model_config=config, total_steps=spec["total_steps"],
        batch_size=BATCH, task_type="classification", num_labels=NUM_LABELS,
        train_batches=functools.partial(train.synthetic_batches, task_type="classification",
                                        length=LENGTH, num_labels=NUM_LABELS, seed=1),
        partitioner=make_partitioner(spec["mesh"]),
        optimizer=functools.partial(trainer.make_optimizer, learning_rate=spec.get("lr", 1e-3),
                                    warmup_fraction=0.1),
        num_microbatches=spec.get("microbatches", 1),
        checkpoint=checkpoints.CheckpointConfig(save_every_steps=spec["save_every"],
                                                keep=spec.get("keep", 3)),
        seed=0, log_every_steps=5, stop_at_step=stop_at_step, progress=False)
