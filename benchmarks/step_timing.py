"""Wall time of JAX train steps, shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import time
from typing import Any


def time_train_steps(trainer: Any, state: Any, batch: Any, *, warmup: int, steps: int
                     ) -> list[float]:
    """Seconds of each of ``steps`` ``trainer.train_step`` calls after ``warmup`` untimed ones;
    every step waits for its loss, so the time includes the device work."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        float(metrics["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def classification_trainer(config: Any) -> Any:
    """The benchmarks' timed model: a 3-way XLM-R classifier (HF head) with AdamW, on one
    device."""
    import jax

    from xstilts import partitioning, trainer
    from xstilts.models.heads import XLMRForSequenceClassification

    optimizer, schedule = trainer.make_optimizer(learning_rate=2e-5, total_steps=1000,
                                                 weight_decay=0.01)
    return trainer.Trainer(
        model=XLMRForSequenceClassification(config, 3, use_pooler=False),
        loss_fn=trainer.task_loss("classification"), optimizer=optimizer, schedule=schedule,
        partitioner=partitioning.Partitioner(partitioning.create_mesh(
            devices=jax.devices()[:1])))
