"""Phase 0: MLM pre-training of the encoder on a multilingual corpus (the embedded demo)."""

from __future__ import annotations

import logging
import time

from xstilts.experiment.inputs import factory
from xstilts.experiment.plan import PhaseJob
from xstilts.experiment.rundir import is_done, mark_done
from xstilts.experiment.runtime import Runtime

log = logging.getLogger("xstilts.experiment")


def run_pretrain(rt: Runtime, job: PhaseJob) -> None:
    """Train ``job`` (MLM on its mixture) unless its ``DONE`` marker exists."""
    done = rt.run_dir / job.model_dir / "DONE"
    if is_done(done):
        return
    start = time.perf_counter()
    rt.train(job, train_batches=factory(rt.inputs.mixture_batcher(
        job.source, job.length, 0, **job.settings.batching())),
             total_steps=int(job.settings.steps))
    rt.record_data(job.model_dir, mixture=job.source, max_length=job.length)
    mark_done(done)
    log.info("phase 0 (MLM on %s, %d steps) took %.0f s", job.source, job.settings.steps,
             time.perf_counter() - start)
