"""Dry run of an experiment grid: every Task and Mixture built, every train step lowered.

No data is read, nothing is downloaded and no parameter is allocated: Tasks and Mixtures come
from the registry (mixture rates with one made-up size per task), models and optimizer states
are ``jax.eval_shape``d onto the partitioner's mesh (fake CPU devices in tests), and each
distinct train step (task kind, labels, batch, length) is lowered ahead of time with
``jit(...).lower`` on abstract, sharded inputs, which checks shapes, shardings and the loss for
the paper-scale model without running it. A phase-1 mixture of task kinds (``all9``, ``+mlm``)
lowers each head's step of the multi-task model (the shared state holds every head).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from xstilts import partitioning
from xstilts import train as train_lib
from xstilts import trainer as trainer_lib
from xstilts.data import tasks
from xstilts.experiment import Grid, Phase, task_kind
from xstilts.trainer import StepShape

PLACEHOLDER_LABELS = 2  # tasks whose label set is read from the data (CCG supertags)


@dataclasses.dataclass
class DryRunResult:
    tasks: list[str]
    mixtures: dict[str, dict[str, float]]
    steps: dict[StepShape, dict[str, Any]]  # shape -> {"used_by", "params", "seconds", ...}
    notes: list[str]

    def summary(self) -> str:
        lines = [f"dry run: {len(self.tasks)} tasks, {len(self.mixtures)} mixtures, "
                 f"{len(self.steps)} train steps lowered"]
        for shape, info in self.steps.items():
            lines.append(f"  {shape.kind}({shape.num_labels}) batch {shape.batch_size} x "
                         f"{shape.length}{f' x {shape.num_choices} choices' if shape.num_choices > 1 else ''}"  # noqa: E501
                         f"{f' (head {shape.head} of {len(shape.heads)})' if shape.heads else ''}: "
                         f"{info['params']:,} params, loss {info['loss_shape']}, lowered in "
                         f"{info['seconds']:.1f} s; used by {', '.join(sorted(info['used_by']))}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _phase_shapes(grid: Grid) -> tuple[list[tuple[str, StepShape]], list[str], list[str]]:
    """(who uses it, shape) for every phase of the grid, the tasks touched, and notes."""
    used: list[tuple[str, StepShape]] = []
    names: list[str] = []
    notes: list[str] = []

    def spec_shape(spec: tasks.TaskSpec, phase: Phase) -> StepShape:
        if spec.kind in ("classification", "tagging") and not spec.labels:
            notes.append(f"{spec.name}: label set comes from the data; lowered with "
                         f"{PLACEHOLDER_LABELS} labels")
            kind, labels = spec.kind, PLACEHOLDER_LABELS
        else:
            kind, labels = task_kind(spec)
        return StepShape(kind, labels, phase.batch_size, phase.max_length or spec.max_length,
                         spec.num_choices or 1)

    if grid.pretrain is not None:
        mlm = tasks.mixture_tasks(grid.pretrain_mixture)
        names += mlm
        used.append(("phase0", StepShape("mlm", 2, grid.pretrain.batch_size,
                                         grid.pretrain.max_length or 128)))
    for config, mixture in grid.intermediate.items():
        if mixture is None:
            continue
        members = tasks.mixture_tasks(mixture)
        names += members
        shapes = [spec_shape(tasks.get_task(name), grid.intermediate_phase) for name in members]
        if len({(s.kind, s.num_labels) for s in shapes}) == 1:
            used += [(f"phase1 {config}", shape) for shape in shapes]
            continue
        # Multi-head (experiment.mixture_heads): one head per head group, each task at its own
        # length capped by the phase's.
        cap = grid.intermediate_phase.max_length
        heads: dict[str, tuple[str, int]] = {}
        for name, shape in zip(members, shapes, strict=True):
            heads.setdefault(tasks.get_task(name).metadata["head"], (shape.kind, shape.num_labels))
        spec_heads = tuple((h, k, n) for h, (k, n) in heads.items())
        for name, shape in zip(members, shapes, strict=True):
            spec = tasks.get_task(name)
            used.append((f"phase1 {config}", dataclasses.replace(
                shape, length=min(spec.max_length, cap) if cap else spec.max_length,
                head=spec.metadata["head"], heads=spec_heads)))
        notes.append(f"phase 1 {config} ({mixture}): multi-task, {len(heads)} heads "
                     f"{sorted(heads)}")
    for target in grid.targets:
        target_tasks = tasks.tasks_for(target)
        names += [t.name for t in target_tasks]
        train_task = target_tasks[0].train_task
        names.append(train_task)
        finetune = Phase.of({**dataclasses.asdict(grid.finetune),
                             **grid.finetune_overrides.get(train_task, {})}, train_task)
        used.append((f"phase2 {target}", spec_shape(tasks.get_task(train_task), finetune)))
    for name in grid.retrieval:
        names += [t.name for t in tasks.tasks_for(name)]
    return used, list(dict.fromkeys(names)), notes


def dry_run(grid: Grid, partitioner: partitioning.Partitioner | None = None,
            lowered: dict[StepShape, dict[str, Any]] | None = None) -> DryRunResult:
    """Build every Task and Mixture of ``grid`` and lower each distinct train step once;
    ``lowered`` (shape -> info) carries steps already lowered for another grid on the same
    model and mesh."""
    partitioner = partitioner or partitioning.Partitioner()
    lowered_steps = {} if lowered is None else lowered
    used, names, notes = _phase_shapes(grid)
    for name in names:
        tasks.get_task(name)  # KeyError naming the task if it is not registered
    mixtures = {}
    for mixture in [m for m in grid.intermediate.values() if m] + (
            [grid.pretrain_mixture] if grid.pretrain_mixture else []):
        rates = tasks.mixture_rates(mixture, lambda _: 1000)
        if not np.isclose(sum(rates.values()), 1.0):
            raise AssertionError(f"mixture {mixture}: rates sum to {sum(rates.values())}")
        mixtures[mixture] = rates
    steps: dict[StepShape, dict[str, Any]] = {}
    for who, shape in used:
        if shape in steps:
            steps[shape]["used_by"].add(who)
            continue
        if shape in lowered_steps:
            steps[shape] = {**lowered_steps[shape], "used_by": {who}}
            continue
        start = time.perf_counter()
        partitioner.check_batch_size(shape.batch_size)
        tx, schedule = trainer_lib.make_optimizer(total_steps=1000)
        lead = (shape.batch_size, shape.num_choices, shape.length) \
            if shape.kind == "multiple_choice" else (shape.batch_size, shape.length)
        if shape.heads:  # the all-heads state, this head's step (as train.train(heads=...))
            from xstilts.models.heads import XLMRMultiTask

            model = XLMRMultiTask(grid.model_config, shape.heads, use_pooler=False)
            state = trainer_lib.Trainer(model, trainer_lib.task_loss(shape.kind), tx, schedule,
                                        partitioner).abstract_state(lead[:1] + lead[-1:])
            model = model.clone(task=shape.head)
        else:
            model = train_lib.build_model(shape.kind, grid.model_config,
                                          num_labels=shape.num_labels, use_pooler=False)
        trainer = trainer_lib.Trainer(model, trainer_lib.task_loss(shape.kind), tx, schedule,
                                      partitioner)
        if not shape.heads:
            state = trainer.abstract_state(lead)
        batch = shape.batch(partitioner)
        lowered = trainer.partitioned_train_step(state, batch).lower(state, batch)
        new_state, step_metrics = lowered.out_info
        if jax.tree.structure(new_state.params) != jax.tree.structure(state.params):
            raise AssertionError(f"{who}: the lowered step changes the parameter tree")
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
        steps[shape] = {"used_by": {who}, "params": params,
                        "loss_shape": tuple(step_metrics["loss"].shape),
                        "seconds": time.perf_counter() - start}
        lowered_steps[shape] = steps[shape]
    return DryRunResult(names, mixtures, steps, list(dict.fromkeys(notes)))
