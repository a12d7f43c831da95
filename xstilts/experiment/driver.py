"""The grid driver: plan every phase, run job after job, write the tidy table."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from xstilts import partitioning
from xstilts.checkpoints import RunLock
from xstilts.data import tasks
from xstilts.data.mixtures import derived_targets
from xstilts.evals import metrics
from xstilts.experiment import plan as plan_lib
from xstilts.experiment import rundir
from xstilts.experiment.cells import Cell, Ledger
from xstilts.experiment.finetune import run_finetune
from xstilts.experiment.grid import Grid
from xstilts.experiment.intermediate import run_intermediate
from xstilts.experiment.pretrain import run_pretrain
from xstilts.experiment.retrieval import chance_rows as retrieval_chance_rows
from xstilts.experiment.retrieval import (
    retrieval_layer,
    retrieval_length,
    retrieval_metric,
    retrieval_rows,
    task_length,
)
from xstilts.experiment.rundir import CHANCE, is_done, read_rows, row, write_rows
from xstilts.experiment.runtime import Runtime
from xstilts.experiment.scoring import chance_scores, check_gold
from xstilts.experiment.workers import claimed_cells, mine, parse_part
from xstilts.multihost import barrier, is_chief

log = logging.getLogger("xstilts.experiment")


def task_metrics(targets: Any, retrieval_tasks: Any) -> dict[str, str]:
    """Each task's metric name (``evals.metrics.METRICS``)."""
    return {**{name: tasks.tasks_for(name)[0].metric for name in targets},
            **{name: retrieval_metric(name) for name in retrieval_tasks}}


def primary_metrics(targets: Any, retrieval_tasks: Any) -> dict[str, str]:
    """Each task's primary number (the key of its score dict), from ``evals.metrics``."""
    return {name: metrics.primary(metric)
            for name, metric in task_metrics(targets, retrieval_tasks).items()}


def seen_languages(grid: Grid) -> dict[str, list[str]]:
    """Per config, the languages its intermediate mixture trains on (the report's covariate)."""
    return {config: sorted({tasks.get_task(t).language for t in tasks.mixture_tasks(m)})
            if m and not grid.is_seqio(m) else plan_lib.seqio_languages(grid, m)
            for config, m in grid.intermediate.items()}


def contaminated(grid: Grid) -> dict[str, list[str]]:
    """Per config, the targets whose own data its intermediate mixture trains on (those cells
    are not zero-shot; the report marks them)."""
    out = {}
    for config, mixture in grid.intermediate.items():
        hit = [t for t in derived_targets(mixture, tasks.MIXTURES) if t in grid.targets] \
            if mixture and not grid.is_seqio(mixture) else plan_lib.seqio_targets(grid, mixture)
        if hit:
            out[config] = hit
    return out


def retrieval_settings(rt: Runtime) -> dict[str, Any]:
    """The retrieval cells' resolved layer, lengths and centring."""
    g = rt.grid
    return {"layer": retrieval_layer(rt) if g.retrieval else None,
            "length": {n: retrieval_length(rt, task_length(n)) for n in g.retrieval},
            "center": g.retrieval_center}


def phase_settings(grid: Grid) -> dict[str, Any]:
    """The grid's phase settings as given (``experiment.json``; each job resolves them)."""
    return {"pretrain": dataclasses.asdict(grid.pretrain) if grid.pretrain else None,
            "intermediate_phase": dataclasses.asdict(grid.intermediate_phase),
            "finetune": dataclasses.asdict(grid.finetune),
            "finetune_overrides": {k: dict(v) for k, v in grid.finetune_overrides.items()},
            "intermediate_budget": grid.intermediate_budget, "pretrained": grid.pretrained,
            "spm_vocab_size": grid.spm_vocab_size, "on_change": grid.on_change}


def experiment_meta(rt: Runtime, jobs: list[plan_lib.PhaseJob], ledger: Ledger | None = None
                    ) -> dict[str, Any]:
    """``experiment.json``: what the report needs, every job as the run resolves it, the phase
    settings and every cell's settings and fingerprint (``cells``)."""
    g = rt.grid
    primary = [g.english_config, g.multilingual_config]
    return {
        "configs": list(g.intermediate), "mixtures": dict(g.intermediate),
        "baseline": g.baseline, "english_config": g.english_config,
        "multilingual_config": g.multilingual_config,
        "primary_comparison": primary if all(primary) else None,
        "more_comparisons": [list(pair) for pair in g.more_comparisons],
        "targets": list(g.targets), "retrieval": list(g.retrieval), "seeds": list(g.seeds),
        "intermediate_per_seed": g.intermediate_per_seed,
        "low_resource": list(g.low_resource), "tiers": dict(g.tiers or {}),
        "tier_boundary": dict(g.tier_boundary) if g.tier_boundary else None,
        "primary_metric": primary_metrics(g.targets, g.retrieval),
        "task_metric": task_metrics(g.targets, g.retrieval),
        "seen_languages": seen_languages(g),
        "not_zero_shot": contaminated(g),
        "selection": "english_dev", "use_pooler": g.use_pooler,
        "retrieval_layer": retrieval_layer(rt) if g.retrieval else None,
        "retrieval_length": {n: retrieval_length(rt, task_length(n)) for n in g.retrieval},
        "retrieval_center": g.retrieval_center,
        "jobs": [job.describe() for job in jobs],
        "deviations": sorted({d for job in jobs for d in job.deviations}),
        "model": dataclasses.asdict(rt.model_config),
        "phase_settings": phase_settings(g),
        "cells": ledger.describe() if ledger else [],
    }


def target_chance_rows(rt: Runtime) -> list[dict[str, Any]]:
    """Constant predictors per target language; fails first on a test split without gold."""
    rows = []
    for target in rt.grid.targets:
        for spec in tasks.tasks_for(target):
            examples = rt.inputs.examples(spec.name, "test")
            check_gold(spec, "test", examples, rt.grid.data_dir)
            train = rt.inputs.examples(spec.train_task, "train")
            rows += [row(CHANCE, target, spec.language, "test", m, v, 0, 0)
                     for m, v in chance_scores(spec, examples, train).items()]
    return rows


class Experiment:
    """Runs the grid cell by cell (``xstilts.experiment.rundir`` describes the directory; a
    grid split across launches: ``xstilts.experiment.workers``)."""

    def __init__(self, grid: Grid, partitioner: partitioning.Partitioner | None = None,
                 progress: bool = False) -> None:
        self.grid = grid
        self.rt = Runtime.create(grid, partitioner, progress)
        self._vocab_ready = False

    def run(self) -> list[dict[str, Any]]:
        """The whole grid (or this launch's part of it), resumable. A plain driver is the only
        one in its run directory: the chief holds ``RUN_DIR/writer.lock``
        (``checkpoints.RunLock``), so a second one stops at once naming the holder (a lock
        left by a killed run on this host is stale and taken over). Launches with ``worker``
        or ``cells`` share the directory: each claims a cell before computing it."""
        shared = self.grid.worker or self.grid.cells is not None
        lock = RunLock(self.rt.run_dir) if is_chief() and not shared else None
        if lock is not None:
            lock.acquire()
        try:
            return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> list[dict[str, Any]]:
        rt, run_dir = self.rt, self.rt.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.grid.compilation_cache:
            rundir.enable_compilation_cache(run_dir / "jax_cache")
        self.jobs = {j.model_dir: j for j in plan_lib.plan(self.grid)}
        # Every recorded cell against this run's settings, before any work (cells.py).
        self.ledger = ledger = Ledger.check(self.grid, list(self.jobs.values()),
                                            retrieval_settings(rt), self.grid.on_change)
        start, finetunes = time.perf_counter(), [c for c in ledger.cells if c.phase == "phase2"]
        for cell in claimed_cells(run_dir, mine(ledger.cells, parse_part(self.grid.cells)),
                                  done=self._done, ready=self._ready,
                                  poll_seconds=self.grid.poll_seconds):
            ledger.begin(cell.name)
            self._compute(cell)
            if cell.phase == "phase2":
                job = self.jobs[cell.name]
                log.info("cell %d/%d %s %s seed %d done (%.0f s elapsed)",
                         finetunes.index(cell) + 1, len(finetunes), job.config, job.source,
                         job.seed, time.perf_counter() - start)
        log.info("%s", ledger.summary())
        if not all(self._done(c) for c in ledger.cells):
            log.info("this launch's cells are done; the results table is written by the "
                     "launch that finds every cell finished")
            return []
        self._vocab()
        rt.merge_manifests([c.name for c in ledger.cells if c.phase in ("phase0", "phase1",
                                                                          "phase2")])
        rows = [r for c in ledger.cells if c.phase in ("chance", "retrieval", "phase2")
                for r in read_rows(run_dir / c.done)]
        rows.sort(key=lambda r: (r["config"] != CHANCE, r["config"], r["task"], r["language"],
                                 r["split"], r["metric"], r["seed"]))
        write_rows(run_dir / "results.jsonl", rows)
        rundir.write_csv(run_dir / "results.csv", rows)
        barrier("results")
        return rows

    def _done(self, cell: Cell) -> bool:
        return is_done(self.rt.run_dir / cell.done)

    def _ready(self, cell: Cell) -> bool:
        """Whether the cells it needs are finished: the tokenizer, the checkpoint it starts
        from."""
        needs = [cell.upstream] if cell.upstream else []
        if cell.phase not in ("tokenizer", "chance") and self.ledger.has("tokenizer"):
            needs.append("tokenizer")
        return all(self._done(self.ledger.cell(name)) for name in needs)

    def _vocab(self) -> None:
        """Once the tokenizer exists: the model's vocabulary, and ``experiment.json``."""
        if not self._vocab_ready:
            self.rt.fit_vocab()
            rundir.write_json(self.rt.run_dir / "experiment.json", experiment_meta(
                self.rt, list(self.jobs.values()), self.ledger))
            self._vocab_ready = True

    def _compute(self, cell: Cell) -> None:
        rt = self.rt
        if cell.phase == "tokenizer":
            rt.inputs.prepare_tokenizer()
            return
        if cell.phase == "chance":
            write_rows(rt.run_dir / cell.done,
                       target_chance_rows(rt) + retrieval_chance_rows(rt, CHANCE))
            barrier("chance")
            return
        self._vocab()
        if cell.phase == "retrieval":
            config, seed = cell.name.split("/")[1], int(cell.name.split("/")[2][len("seed"):])
            encoder = f"{cell.upstream}/checkpoints" if cell.upstream else None
            write_rows(rt.run_dir / cell.done, retrieval_rows(rt, config, rt.path(encoder), seed))
            barrier(f"retrieval {cell.name}")
            return
        run = {"phase0": run_pretrain, "phase1": run_intermediate, "phase2": run_finetune}
        run[cell.phase](rt, self.jobs[cell.name])
