"""Phase 2 and 3: fine-tune on the English train task, select on English dev by the task's
official metric, then score dev and test of every target language zero-shot."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from xstilts import trainer as trainer_lib
from xstilts.data import tasks
from xstilts.data.feature_converters import ShardInfo
from xstilts.evals import metrics
from xstilts.experiment import rundir
from xstilts.experiment.inputs import factory
from xstilts.experiment.plan import PhaseJob
from xstilts.experiment.rundir import is_done, read_rows, row
from xstilts.experiment.runtime import Runtime
from xstilts.experiment.scoring import check_gold, score_outputs
from xstilts.multihost import barrier

log = logging.getLogger("xstilts.experiment")
SPLITS = ("dev", "test")  # target-language dev is scored and reported, never used to select


def english_dev_evaluator(rt: Runtime, job: PhaseJob, spec: tasks.TaskSpec, num_labels: int
                          ) -> Callable[[Any], Mapping[str, float]]:
    """``params -> {primary key: value}`` on the train task's own dev split, scored exactly as
    the test splits are (seqeval F1, (EM + F1) / 2 after answer extraction, accuracy)."""
    scorer = split_scorer(rt, job, spec, "dev", num_labels)  # read and checked once
    key = metrics.primary(job.selection)
    return lambda params: {key: scorer(params)[0][key]}


def split_scorer(rt: Runtime, job: PhaseJob, spec: tasks.TaskSpec, split: str,
                 num_labels: int) -> Callable[[Any], tuple[dict[str, float], np.ndarray]]:
    """``params -> (scores, per-example statistics)`` of one task-language split, its examples
    read (and their gold checked) and its features built once."""
    examples = rt.inputs.examples(spec.name, split)
    check_gold(spec, split, examples, rt.grid.data_dir)
    features = rt.inputs.features(spec.name, split, job.length)

    def score(params: Any) -> tuple[dict[str, float], np.ndarray]:
        outputs = rt.predictor.outputs(params, rt.inputs.eval_batches(
            features, job.kind, job.length), job.kind, num_labels, len(features))
        return score_outputs(spec, examples, features, outputs)

    return score


def score_targets(rt: Runtime, job: PhaseJob, params: Any, num_labels: int, step: int
                  ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Rows and per-example statistics of dev (where it exists) and test of every target
    language; a target language without a test split is an error, never a missing row."""
    rows, stats = [], {}
    for target in job.targets:
        for spec in tasks.tasks_for(target):
            if "test" not in spec.splits:
                raise ValueError(f"target {target}: task {spec.name} has no test split "
                                 f"(splits {list(spec.splits)})")
            for split in (s for s in SPLITS if s in spec.splits):
                scores, stats[rundir.stats_key(target, spec.language, split)] = split_scorer(
                    rt, job, spec, split, num_labels)(params)
                rows += [row(job.config, target, spec.language, split, m, v, job.seed, step)
                         for m, v in scores.items()]
    return rows, stats


def run_finetune(rt: Runtime, job: PhaseJob) -> list[dict[str, Any]]:
    """Fine-tune one cell (or resume it), keep its best checkpoint, score every target."""
    cell = rt.run_dir / job.model_dir
    results = cell / "results.jsonl"
    if is_done(results):
        return read_rows(results)
    spec = tasks.get_task(job.source)
    num_labels = job.num_labels or rt.inputs.num_labels(spec)
    batcher = rt.inputs.task_batcher(job.source, "train", job.length, job.seed, True,
                                     **job.settings.batching())
    steps = job.num_steps(batcher(ShardInfo(0, 1), 1).num_rows)  # packed: rows, not examples
    select = "dev" in spec.splits and job.settings.eval_every_steps > 0
    best = f"eval/{metrics.primary(job.selection)}" if select else None
    start = time.perf_counter()
    result = rt.train(
        job, train_batches=factory(batcher),
        total_steps=steps, num_labels=num_labels, best_metric=best,
        evaluator=english_dev_evaluator(rt, job, spec, num_labels) if select else None)
    shape = trainer_lib.StepShape(job.kind, num_labels, job.settings.batch_size, job.length,
                                  spec.num_choices or 1)
    params, step = rt.predictor.best_params(cell / "checkpoints", shape, best)
    rows, stats = score_targets(rt, job, params, num_labels, step)
    rundir.write_json(cell / "selection.json", {
        "split": f"{job.source} dev" if select else None, "metric": job.selection,
        "key": best, "best_step": step, "trained_steps": result.step, "total_steps": steps,
        "patience": job.settings.patience, "eval_every_steps": job.settings.eval_every_steps})
    rundir.write_example_stats(cell / rundir.STATS_FILENAME, stats)
    read = [(job.source, "train")] + ([(job.source, "dev")] if select else [])
    read += [(spec.name, split) for target in job.targets for spec in tasks.tasks_for(target)
             for split in SPLITS if split in spec.splits]
    rt.record_data(job.model_dir, splits=read, max_length=job.length)
    rundir.write_rows(results, rows)
    barrier(f"phase2 {cell}")
    log.info("phase 2 %s/%s seed %d: %d steps (best %d by %s), scored in %.0f s", job.config,
             job.source, job.seed, result.step, step, best or "last step",
             time.perf_counter() - start)
    return rows
