"""Phase 1: intermediate training on a Mixture (one head, or one head per head group)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from xstilts import train as train_lib
from xstilts.data import tasks
from xstilts.data.feature_converters import ShardInfo
from xstilts.experiment import rundir
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
    steps = intermediate_steps(rt, job)
    start = time.perf_counter()
    if job.seqio:
        run_seqio_intermediate(rt, job, steps)
    elif job.kind != "multitask":
        first = tasks.get_task(job.lengths[0][0])
        rt.train(job, train_batches=factory(rt.inputs.mixture_batcher(
            job.source, job.length, job.seed, **job.settings.batching())), total_steps=steps,
            num_labels=job.num_labels or rt.inputs.num_labels(first))
    else:
        heads = {head: (kind, labels or _data_labels(rt, job, head))
                 for head, kind, labels in job.heads}
        log.info("phase 1 %s: %d heads %s", job.config, len(heads), heads)
        rt.train(job, train_batches=factory(rt.inputs.mixture_batcher(
            job.source, lengths, job.seed, **job.settings.batching()), with_task=True),
            total_steps=steps, heads=heads)
    rundir.write_json(rt.run_dir / job.model_dir / "budget.json", budget_record(rt, job, steps))
    if not job.seqio:  # a seqio name's files are its DataSources' (not the registry's)
        rt.record_data(job.model_dir, mixture=job.source, max_length=dict(job.lengths))
    mark_done(done)
    log.info("phase 1 %s seed %d (%s, %d steps) took %.0f s", job.config, job.seed, job.source,
             steps, time.perf_counter() - start)


def run_seqio_intermediate(rt: Runtime, job: PhaseJob, steps: int) -> None:
    """Phase 1 on a seqio Task/Mixture name: ``train.SeqioBatches`` (per-host shards, exact
    resume), one head, or one head per head group with ``(task, batch)`` pairs."""
    batches = train_lib.SeqioBatches(
        mixture_or_task_name=job.source, task_feature_lengths={"inputs": job.length},
        mixture_or_task_module=tuple(rt.grid.seqio_modules), data_dir=rt.grid.data_dir,
        seed=job.seed, num_labels=job.num_labels)
    if job.kind != "multitask":
        rt.train(job, train_batches=batches, total_steps=steps, num_labels=job.num_labels)
        return
    heads = {head: (kind, labels) for head, kind, labels in job.heads}
    log.info("phase 1 %s (seqio %s): %d heads %s", job.config, job.source, len(heads), heads)
    rt.train(job, train_batches=batches, total_steps=steps, heads=heads)


def seqio_epoch_size(name: str) -> int:
    """Training examples of a seqio Task/Mixture: its tasks' ``num_input_examples("train")``."""
    import seqio

    provider = seqio.get_mixture_or_task(name)
    leaves = [provider] if isinstance(provider, seqio.Task) else provider.tasks
    return sum(int(t.num_input_examples("train")) for t in leaves)


def intermediate_steps(rt: Runtime, job: PhaseJob) -> int:
    """Steps of a phase-1 job: its epochs over the budget mixture's capped supervised data (its
    own, or the English-only config's under the equal-steps budget); a seqio name's epochs
    count its tasks' training examples."""
    lengths = dict(job.budget_lengths or job.lengths)
    source = job.budget_source or job.source
    if rt.grid.is_seqio(source):
        return job.num_steps(seqio_epoch_size(source) if job.settings.steps is None else 0)
    epoch = tasks.mixture_epoch_size(
        source, lambda t: len(rt.inputs.features(t, "train", lengths[t])))
    return job.num_steps(epoch)


def budget_record(rt: Runtime, job: PhaseJob, steps: int) -> dict[str, Any]:
    """What one phase-1 run trained on: steps, batch, and per task and language the steps
    drawn and examples seen (the report's budget table; for a seqio name, the totals)."""
    if job.seqio:
        return {"config": job.config, "seed": job.seed, "mixture": job.source, "steps": steps,
                "batch_size": job.settings.batch_size, "budget": job.size_text,
                "seqio": True, "examples_per_language": {}, "tokens_per_language_estimate": {},
                "per_task": {}}
    batcher = rt.inputs.mixture_batcher(job.source, dict(job.lengths), job.seed)(
        ShardInfo(0, 1), int(job.settings.batch_size))
    draws = Counter(batcher.task_and_step(step)[0] for step in range(steps))
    lengths = dict(job.lengths)
    per_task = {}
    for t, n in sorted(draws.items()):
        examples = n * int(job.settings.batch_size)
        per_task[t] = {"language": tasks.get_task(t).language, "steps": n, "examples": examples,
                       "tokens_estimate": round(examples * mean_tokens(
                           rt.inputs.features(t, "train", lengths[t])))}
    languages: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for record in per_task.values():
        languages[record["language"]] += record["examples"]
        tokens[record["language"]] += record["tokens_estimate"]
    return {"config": job.config, "seed": job.seed, "mixture": job.source, "steps": steps,
            "batch_size": job.settings.batch_size,
            "budget": job.size_text if job.equal_budget or job.settings.steps is not None
            else f"{job.size_text} of {job.source}",
            "examples_per_language": dict(sorted(languages.items())),
            "tokens_per_language_estimate": dict(sorted(tokens.items())), "per_task": per_task}


def mean_tokens(features: list[dict[str, Any]]) -> float:
    """Mean real (unpadded) tokens per feature; the budget estimates tokens seen as examples
    seen x this (the batches drawn are not materialised)."""
    def size(ids: Any) -> int:
        return sum(len(x) for x in ids) if len(ids) and hasattr(ids[0], "__len__") else len(ids)

    return sum(size(f["input_ids"]) for f in features) / max(1, len(features))


def _data_labels(rt: Runtime, job: PhaseJob, head: str) -> int:
    """The label count of an open-label-set head, read from its tasks' train data."""
    counts = {rt.inputs.num_labels(tasks.get_task(t)) for t, h in job.task_heads if h == head}
    if len(counts) != 1:
        raise ValueError(f"{job.source}: head {head!r} has tasks with label counts {counts}")
    return counts.pop()
