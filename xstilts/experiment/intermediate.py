"""Phase 1: intermediate training on a Mixture (one head, or one head per head group)."""

from __future__ import annotations

import logging
import time

from xstilts.data import tasks
from xstilts.experiment.inputs import factory
from xstilts.experiment.plan import PhaseJob
from xstilts.experiment.rundir import is_done, mark_done
from xstilts.experiment.runtime import Runtime

log = logging.getLogger("xstilts.experiment")


def run_intermediate(rt: Runtime, job: PhaseJob) -> None:
    """Train ``job`` unless its ``DONE`` marker exists; phase 2 and retrieval read only its
    encoder, so they do not care whether it was single- or multi-head.

    Epochs count the capped supervised data (``tasks.mixture_epoch_size``); a multi-head job
    draws one task per step by the Mixture's rates, each at its own length (jiant-style).
    """
    done = rt.run_dir / job.model_dir / "DONE"
    if is_done(done):
        return
    lengths = dict(job.lengths)
    epoch = tasks.mixture_epoch_size(
        job.source, lambda t: len(rt.inputs.features(t, "train", lengths[t])))
    steps = job.num_steps(epoch)
    start = time.perf_counter()
    if job.kind != "multitask":
        first = tasks.get_task(job.lengths[0][0])
        rt.train(job, train_batches=factory(rt.inputs.mixture_batcher(
            job.source, job.length, job.seed)), total_steps=steps,
            num_labels=job.num_labels or rt.inputs.num_labels(first))
    else:
        heads = {head: (kind, labels or _data_labels(rt, job, head))
                 for head, kind, labels in job.heads}
        log.info("phase 1 %s: %d heads %s", job.config, len(heads), heads)
        rt.train(job, train_batches=factory(rt.inputs.mixture_batcher(
            job.source, lengths, job.seed), with_task=True), total_steps=steps, heads=heads)
    mark_done(done)
    log.info("phase 1 %s seed %d (%s, %d steps) took %.0f s", job.config, job.seed, job.source,
             steps, time.perf_counter() - start)


def _data_labels(rt: Runtime, job: PhaseJob, head: str) -> int:
    """The label count of an open-label-set head, read from its tasks' train data."""
    counts = {rt.inputs.num_labels(tasks.get_task(t)) for t, h in job.task_heads if h == head}
    if len(counts) != 1:
        raise ValueError(f"{job.source}: head {head!r} has tasks with label counts {counts}")
    return counts.pop()
