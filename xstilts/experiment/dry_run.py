"""Dry run of a grid: the same phase jobs as the run, each train step lowered, nothing read.

No data is read, nothing is downloaded and no parameter is allocated: Tasks and Mixtures come
from the registry (mixture rates with one made-up size per task), models and optimizer states
are ``jax.eval_shape``d onto the partitioner's mesh (fake CPU devices in tests), and each
distinct train step (``trainer.StepShape``) is lowered ahead of time with ``jit(...).lower`` on
abstract, sharded inputs, which checks shapes, shardings and the loss for the paper-scale model
without running it. A phase-1 mixture of task kinds lowers each head's step of the multi-task
model (the shared state holds every head).

With ``topology`` (``"v5e:2x2"``) each step is also compiled, deviceless, by libtpu for that TPU
slice (``xstilts.aot``; the mesh is ``partitioning.create_mesh``'s over its chips, gin-bindable),
and the result names the steps whose per-chip memory exceeds the chip's HBM (``unfit``). Shapes
that cannot run are errors naming the step and its users before anything compiles: a batch that
the mesh's data axes do not divide, a length past the model's positions, a mesh that does not
use exactly the slice's chips.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from xstilts import aot, partitioning
from xstilts import train as train_lib
from xstilts import trainer as trainer_lib
from xstilts.data import tasks
from xstilts.data.registry import family_shares
from xstilts.experiment import plan as plan_lib
from xstilts.experiment.compiled_steps import CompiledSteps, step_key
from xstilts.experiment.grid import Grid
from xstilts.experiment.plan import PhaseJob
from xstilts.models.heads import XLMRMultiTask
from xstilts.models.xlmr import check_length

PLACEHOLDER_LABELS = 2  # tasks whose label set is read from the data (CCG supertags)
DRY_RUN_SIZE = 1000  # examples per task for mixture rates (the dry run reads no data)
StepShape = trainer_lib.StepShape


@dataclasses.dataclass
class DryRunResult:
    tasks: list[str]
    mixtures: dict[str, dict[str, float]]
    steps: dict[StepShape, dict[str, Any]]  # shape -> {"used_by", "params", "seconds", ...}
    notes: list[str]
    recipes: list[str] = dataclasses.field(default_factory=list)  # one line per phase recipe
    topology: str | None = None  # the TPU slice each step was compiled for

    @property
    def unfit(self) -> list[StepShape]:
        """The steps that do not fit the chip's HBM (compiled for a TPU topology only)."""
        return [shape for shape, info in self.steps.items() if info.get("fits") is False]

    def summary(self) -> str:
        done = f"compiled for TPU {self.topology}" if self.topology else "lowered"
        lines = [f"dry run: {len(self.tasks)} tasks, {len(self.mixtures)} mixtures, "
                 f"{len(self.steps)} train steps {done}"]
        lines += [f"  recipe: {r}" for r in self.recipes]
        for shape, info in self.steps.items():
            lines.append(f"  {describe(shape)}: {info['params']:,} params, loss "
                         f"{info['loss_shape']}, {info_text(info)}; used by "
                         f"{', '.join(sorted(info['used_by']))}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.topology:
            chip = next(iter(self.steps.values()), {})
            hbm = f"the {chip.get('hbm_gib', 0):g} GiB of HBM per {chip.get('chip')} chip"
            lines.append(f"does NOT fit {hbm}: " + "; ".join(describe(s) for s in self.unfit)
                         if self.unfit else f"every step fits {hbm}")
        return "\n".join(lines)


def describe(shape: StepShape) -> str:
    """``classification(3) batch 32 x 256`` (+ choices, + the multi-task head)."""
    choices = f" x {shape.num_choices} choices" if shape.num_choices > 1 else ""
    head = f" (head {shape.head} of {len(shape.heads)})" if shape.heads else ""
    packed = f" packed (<= {shape.segments} a row)" if shape.segments else ""
    return (f"{shape.kind}({shape.num_labels}) batch {shape.batch_size} x {shape.length}"
            f"{choices}{head}{packed}")


def info_text(info: dict[str, Any]) -> str:
    """How a step was checked: lowered, or compiled with its per-chip figures."""
    if "bytes_per_chip" not in info:
        return f"lowered in {info['seconds']:.1f} s"
    verdict = "fits" if info["fits"] else "does NOT fit"
    when = f" (recorded in {info['recorded']})" if info.get("recorded") else ""
    if info.get("compile_error"):
        return (f"does NOT fit {info['hbm_gib']:g} GiB: the TPU compiler asked for "
                f"{info['bytes_per_chip'] / aot.GIB:.2f} GiB of temporaries per chip "
                f"({info['compile_error']}), compiled in {info['seconds']:.0f} s{when}")
    flops = f"{info['hlo_flops_per_chip']:.3e} HLO FLOPs per chip"
    if info.get("scanned_layers"):
        flops = "HLO FLOPs not counted (layers scanned: XLA counts a loop body once)"
    return (f"{info['bytes_per_chip'] / aot.GIB:.2f} GiB per chip ({verdict} "
            f"{info['hbm_gib']:g}), {flops}, compiled in {info['seconds']:.0f} s{when}")


def recipe_line(job: PhaseJob) -> str:
    """A job's settings without its config and seed (identical across a phase's cells)."""
    return job.recipe()


def family_notes(mixture: str) -> list[str]:
    """The per-family shares of a mixture that matches another's (all9.multilingual)."""
    spec = tasks.get_mixture(mixture)
    if not spec.families:
        return []
    shares = family_shares(mixture, lambda _: DRY_RUN_SIZE)
    text = ", ".join(f"{family.split('.')[1]} {share:.3f}" for family, share in shares)
    return [f"{mixture}: each task family at its share in {spec.match} (with {DRY_RUN_SIZE} "
            f"examples per task here; the run uses the real sizes): {text}"]


def _labels(labels: int | None, name: str, notes: list[str]) -> int:
    if labels:
        return labels
    notes.append(f"{name}: label set comes from the data; lowered with {PLACEHOLDER_LABELS} "
                 f"labels")
    return PLACEHOLDER_LABELS


def _choices(task: str) -> int:
    """A task's number of choices (1: not multiple choice; a user's seqio Task: 1)."""
    spec = tasks.TASKS.get(task)
    return (spec.num_choices or 1) if spec else 1


def job_shapes(job: PhaseJob, notes: list[str]) -> list[StepShape]:
    """The train steps one job runs (one per task length or head)."""
    s = job.settings
    if job.kind != "multitask":
        labels = _labels(job.num_labels, job.source, notes)
        # phase 0 (MLM) trains its mixture at the phase's one length
        lengths = job.lengths or ((job.source, s.max_length),)
        packed = s.classification_packing and job.kind == "classification"  # phase 2 only
        return list(dict.fromkeys(StepShape(
            job.kind, labels, s.batch_size, length, _choices(t), packed=packed,
            segments=(s.max_segments or max(1, length // 16)) if packed else 0)
            for t, length in lengths))
    heads = tuple((h, k, _labels(n, h, notes)) for h, k, n in job.heads)
    kinds = {h: (k, n) for h, k, n in heads}
    task_heads = dict(job.task_heads)
    notes.append(f"phase 1 {job.config} ({job.source}): multi-task, {len(heads)} heads "
                 f"{sorted(kinds)}")
    return list(dict.fromkeys(StepShape(
        kinds[task_heads[t]][0], kinds[task_heads[t]][1], s.batch_size, length,
        _choices(t), head=task_heads[t], heads=heads)
        for t, length in job.lengths))


def check_shape(grid: Grid, shape: StepShape, partitioner: partitioning.Partitioner) -> None:
    """A ``ValueError`` for a step that cannot run: a length past the model's positions, a
    batch the mesh's data axes do not divide."""
    check_length(grid.model_config, shape.length)
    partitioner.check_batch_size(shape.batch_size)


def lower_step(grid: Grid, shape: StepShape, partitioner: partitioning.Partitioner,
               topology: str | None = None, record: CompiledSteps | None = None
               ) -> dict[str, Any]:
    """Lower one train step on abstract inputs; its parameter count and loss shape (and, for a
    ``topology``, the TPU compile's per-chip figures: ``aot.compile_chip_figures``, taken from
    ``record`` when it holds this lowered step, else compiled and added to it)."""
    start = time.perf_counter()
    check_shape(grid, shape, partitioner)
    tx, schedule = trainer_lib.make_optimizer(total_steps=1000)
    if shape.heads:  # the all-heads state, this head's step (as train.train(heads=...))
        model = XLMRMultiTask(grid.model_config, shape.heads, use_pooler=grid.use_pooler)
        state = trainer_lib.Trainer(model, trainer_lib.task_loss(shape.kind), tx, schedule,
                                    partitioner).abstract_state(
            (shape.batch_size, shape.length))
        model = model.clone(task=shape.head)
    else:
        model = train_lib.build_model(shape.kind, grid.model_config,
                                      num_labels=shape.num_labels, use_pooler=grid.use_pooler)
    trainer = trainer_lib.Trainer(model, trainer_lib.task_loss(shape.kind), tx, schedule,
                                  partitioner)
    if not shape.heads:
        state = trainer.abstract_state(shape.input_shape)
    batch = shape.batch(partitioner)
    lowered = trainer.partitioned_train_step(state, batch).lower(state, batch)
    new_state, step_metrics = lowered.out_info
    if jax.tree.structure(new_state.params) != jax.tree.structure(state.params):
        raise AssertionError(f"{shape}: the lowered step changes the parameter tree")
    info = {"params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
            "loss_shape": tuple(step_metrics["loss"].shape), "topology": topology}
    if topology is None:
        info["seconds"] = time.perf_counter() - start
        return info
    key = None if record is None else step_key(lowered, topology=topology,
                                               mesh=partitioner.mesh)
    if record is not None and (earlier := record.get(key)) is not None:
        return {**info, **earlier}
    info.update(aot.compile_chip_figures(lowered, topology,
                                         scanned_layers=grid.model_config.scan_layers))
    info["seconds"] = time.perf_counter() - start
    if record is not None:
        record.put(key, describe(shape), info)
    return info


def _touched(grid: Grid, jobs: list[PhaseJob]) -> list[str]:
    names = [t for job in jobs for t, _ in job.lengths]
    names += [t.name for target in (*grid.targets, *grid.retrieval)
              for t in tasks.tasks_for(target)]
    return list(dict.fromkeys(names))


def dry_run(grid: Grid, partitioner: partitioning.Partitioner | None = None,
            lowered: dict[StepShape, dict[str, Any]] | None = None,
            topology: str | None = None,
            compiled_steps: str | os.PathLike[str] | None = None) -> DryRunResult:
    """Plan ``grid`` as the run does and lower each distinct train step once; ``lowered``
    (shape -> info) carries steps already lowered for another grid on the same model and mesh.
    ``compiled_steps`` (with ``topology``): a ``CompiledSteps`` record file; a step whose
    lowered module, mesh and versions are recorded there is not compiled again, and each new
    compile is appended, so a cut-short dry run resumes where it stopped."""
    if compiled_steps is not None and topology is None:
        raise ValueError("dry run: compiled_steps records TPU compiles; it needs a topology")
    record = None if compiled_steps is None else CompiledSteps(compiled_steps)
    if topology is not None:
        if partitioner is not None:
            raise ValueError("dry run: give a partitioner or a topology, not both (the "
                             "topology's mesh comes from partitioning.create_mesh)")
        partitioner = partitioning.Partitioner(aot.topology_mesh(topology))
    partitioner = partitioner or partitioning.Partitioner()
    lowered_steps = {} if lowered is None else lowered
    jobs = plan_lib.plan(grid)
    notes: list[str] = []
    mixtures = {}
    for mixture in dict.fromkeys(j.source for j in jobs if j.phase != "phase2"):
        if grid.is_seqio(mixture):
            notes.append(f"{mixture}: a seqio name (seqio_modules); its rates are seqio's, "
                         f"read when it trains")
            continue
        rates = tasks.mixture_rates(mixture, lambda _: DRY_RUN_SIZE)
        if not np.isclose(sum(rates.values()), 1.0):
            raise AssertionError(f"mixture {mixture}: rates sum to {sum(rates.values())}")
        mixtures[mixture] = rates
        notes += family_notes(mixture)
    used_by: dict[StepShape, set[str]] = {}
    for job in jobs:
        users = [f"phase2 {t}" for t in job.targets] or [f"{job.phase} {job.config}"]
        for shape in job_shapes(job, notes):
            used_by.setdefault(shape, set()).update(users)
    # A TPU compile of the paper's model takes minutes: single-task steps (every phase's kinds
    # and lengths) before the multi-task heads, the most tokens per step first, so a cut-short
    # run has covered each kind and the steps most likely not to fit.
    order = sorted(used_by, key=lambda s: (bool(s.heads), -math.prod(s.input_shape))) \
        if topology else list(used_by)
    def named(shape: StepShape, e: ValueError) -> ValueError:
        return ValueError(f"dry run: {describe(shape)}, used by "
                          f"{', '.join(sorted(used_by[shape]))}: {e}")

    for shape in order:  # every shape checked before the first (minutes-long) compile
        try:
            check_shape(grid, shape, partitioner)
        except ValueError as e:
            raise named(shape, e) from e
    for i, shape in enumerate(order):
        if lowered_steps.get(shape, {}).get("topology", topology) != topology:
            del lowered_steps[shape]  # lowered for another target: compile it for this one
        if shape in lowered_steps:
            continue
        try:
            lowered_steps[shape] = lower_step(grid, shape, partitioner, topology, record)
        except ValueError as e:
            raise named(shape, e) from e
        if topology is not None:  # minutes per step: progress on stderr, whatever the logging
            print(f"dry run [{i + 1}/{len(order)}] {describe(shape)}: "
                  f"{info_text(lowered_steps[shape])}", file=sys.stderr, flush=True)
    steps = {shape: {**lowered_steps[shape], "used_by": users}
             for shape, users in used_by.items()}
    return DryRunResult(_touched(grid, jobs), mixtures, steps, list(dict.fromkeys(notes)),
                        list(dict.fromkeys(recipe_line(j) for j in jobs)), topology)
