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
