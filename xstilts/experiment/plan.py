"""The phase jobs of a grid: what each phase trains, from what, with which settings.

Pure: the run (``driver``) and the dry run (``dry_run``) read the same jobs. Numbers that need
data (steps from epochs, an open label set such as CCG's) are resolved when a job runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from xstilts import benchmark
from xstilts.data import tasks
from xstilts.data.mixtures import DERIVED_FROM_TARGET
from xstilts.experiment.grid import INTERMEDIATE_BATCH_SIZE, PRETRAIN_MAX_LENGTH, Grid, Phase

PAPER_LEARNING_RATE = 1e-5  # jiant d_write_configs.sh, every target
QA_BATCH_SIZE = 16  # jiant's XTREME recipe for span QA (4 x 4), for targets outside XTREME


@dataclasses.dataclass(frozen=True)
class PhaseJob:
    """One training run of the grid (a phase-1 config and seed, a phase-2 cell, ...)."""

    phase: str  # "phase0" | "phase1" | "phase2"
    config: str  # intermediate config ("pretrain" for phase 0)
    seed: int
    source: str  # the mixture (phases 0, 1) or English train task (phase 2) trained on
    kind: str  # train.train task type; "multitask": one head per head group
    num_labels: int | None  # None: read from the train split (an open label set)
    settings: Phase  # batch_size and max_length resolved
    model_dir: str  # relative to the run directory
    init_from: str | None  # checkpoint dir (relative) whose encoder it starts from
    lengths: tuple[tuple[str, int], ...] = ()  # each task's max length (multi-head)
    heads: tuple[tuple[str, str, int | None], ...] = ()  # (head, kind, labels) (multi-head)
    task_heads: tuple[tuple[str, str], ...] = ()  # (task, head) (multi-head)
    targets: tuple[str, ...] = ()  # phase 2: the target datasets scored
    epochs: float | None = None  # the recipe's, when the settings give neither steps nor epochs
    # Phase 1: the mixture (and each task's length) whose epochs set the steps: its own, or,
    # with the equal-steps budget, the English-only config's it is compared with.
    budget_source: str | None = None
    budget_lengths: tuple[tuple[str, int], ...] = ()
    selection: str | None = None  # phase 2: the metric (TaskSpec.metric) chosen on English dev
    deviations: tuple[str, ...] = ()  # settings that differ from the paper's recipe
    seqio: bool = False  # phase 1: ``source`` is a seqio Task/Mixture name (SeqioBatches)

    @property
    def equal_budget(self) -> bool:
        """Whether the steps come from another (the English-only) config's data."""
        return self.budget_source is not None and self.budget_source != self.source

    def num_steps(self, num_features: float) -> int:
        """Steps of this job: the settings' steps, else epochs (the recipe's if unset)."""
        s = self.settings
        epochs = s.epochs if s.epochs is not None else self.epochs
        return dataclasses.replace(s, epochs=epochs).num_steps(
            num_features, f"{self.phase} {self.config} {self.source}")

    @property
    def size_text(self) -> str:
        """How long the job trains, in words (the dry run's and budget.json's)."""
        s = self.settings
        if s.steps is not None:
            return f"{s.steps} steps"
        epochs = s.epochs if s.epochs is not None else self.epochs
        if self.equal_budget:
            return f"the steps of {epochs} epochs of {self.budget_source} (equal-steps budget)"
        return f"{epochs} epochs"

    @property
    def checkpoints(self) -> str:
        return f"{self.model_dir}/checkpoints"

    @property
    def length(self) -> int:
        return int(self.settings.max_length)

    def recipe(self) -> str:
        """The job's settings without its config and seed (the same for a phase's cells)."""
        s = self.settings
        targets = f" -> {', '.join(self.targets)}" if self.targets else ""
        line = (f"{self.phase} {self.source}{targets}: {self.size_text}, batch {s.batch_size}, "
                f"length {s.max_length}, lr {s.learning_rate:g}")
        if self.phase == "phase2":
            line += (f", select on English dev by {self.selection} every "
                     f"{s.eval_every_steps} steps" if s.eval_every_steps
                     else ", no selection (last step)")
            line += f", patience {s.patience}" if s.patience else ""
        if self.deviations:
            line += f"; DEVIATES from the paper: {'; '.join(self.deviations)}"
        return line

    def describe(self) -> str:
        return f"{self.config} seed {self.seed}: {self.recipe()}"


# ---------------------------------------------------------------------------------- task facts
def task_kind(spec: tasks.TaskSpec) -> tuple[str, int]:
    """(train.train task type, number of labels) of a task (0 labels: an open label set)."""
    if spec.kind in ("classification", "tagging"):
        return spec.kind, len(spec.labels or ())
    if spec.kind in ("qa", "multiple_choice", "mlm"):
        return spec.kind, 2
    raise ValueError(f"task {spec.name}: kind {spec.kind!r} cannot be trained")


def mixture_kind(mixture: str) -> tuple[str, int, int] | None:
    """(task type, number of labels, max length) shared by every task of a single-head mixture;
    None when the mixture mixes task kinds or label sets (multi-head: ``mixture_heads``)."""
    names = tasks.mixture_tasks(mixture)
    kinds = {(task_kind(tasks.get_task(t)), tasks.get_task(t).labels) for t in names}
    if len(kinds) != 1:
        return None
    (kind, labels), _ = next(iter(kinds))
    return kind, labels, max(tasks.get_task(t).max_length for t in names)


def mixture_heads(mixture: str) -> tuple[dict[str, tuple[str, int | None]], dict[str, str]]:
    """The heads of a multi-head mixture, ``{head: (task type, labels or None = from data)}``,
    and each task's head: tasks naming the same ``head`` (else the same dataset) share one."""
    heads: dict[str, tuple[str, int | None]] = {}
    task_heads: dict[str, str] = {}
    for name in tasks.mixture_tasks(mixture):
        spec = tasks.get_task(name)
        head = spec.metadata["head"]
        kind, labels = task_kind(spec)
        kind_labels = (kind, labels or None)
        if heads.setdefault(head, kind_labels) != kind_labels:
            raise ValueError(f"mixture {mixture}: task {name} is {kind}({labels}) but shares "
                             f"head {head!r} with a {heads[head][0]}({heads[head][1]}) task")
        task_heads[name] = head
    return heads, task_heads


def seqio_facts(grid: Grid, name: str) -> tuple[Any, list[Any]]:
    """(``train.DataModel``, leaf seqio Tasks) of a seqio intermediate name, after importing
    ``grid.seqio_modules`` (which register it). Needs the data extra; only seqio names call it."""
    import importlib

    for module in grid.seqio_modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(f"seqio_modules: {error} (expected an importable module "
                                      f"that registers seqio Tasks/Mixtures)") from error
    import seqio

    from xstilts import train as train_lib

    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        raise ValueError(f"intermediate mixture {name!r}: neither one of the registry's "
                         f"(xstilts.data.tasks) nor a seqio Task/Mixture registered by "
                         f"seqio_modules {list(grid.seqio_modules)}")
    model = train_lib.seqio_data_model(name, data_dir=grid.data_dir)
    provider = seqio.get_mixture_or_task(name)
    return model, [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)


def _project_leaves(grid: Grid, name: str) -> list[tasks.TaskSpec]:
    return [tasks.TASKS[t.name] for t in seqio_facts(grid, name)[1] if t.name in tasks.TASKS]


def seqio_languages(grid: Grid, name: str | None) -> list[str]:
    """Languages a seqio intermediate name trains on, as far as its project tasks tell (a user's
    Task declares none)."""
    return sorted({spec.language for spec in _project_leaves(grid, name)}) if name else []


def seqio_targets(grid: Grid, name: str | None) -> list[str]:
    """The grid's targets whose own data a seqio name's project tasks are (not zero-shot)."""
    if not name:
        return []
    datasets = {DERIVED_FROM_TARGET.get(s.dataset, s.dataset)
                for s in _project_leaves(grid, name)}
    return sorted(datasets & set(grid.targets))


def train_tasks(grid: Grid) -> dict[str, list[str]]:
    """English train task -> the target datasets evaluated from its fine-tune."""
    out: dict[str, list[str]] = {}
    for target in grid.targets:
        train_task = tasks.tasks_for(target)[0].train_task
        if not train_task:
            raise ValueError(f"target {target}: its tasks name no train_task")
        out.setdefault(train_task, []).append(target)
    return out


# ---------------------------------------------------------------------------------- recipes
def paper_recipe(target: str) -> dict[str, Any] | None:
    """The paper's fine-tuning recipe of an XTREME target (``benchmark``), else None."""
    if target not in benchmark.EPOCHS:
        return None
    return {"epochs": benchmark.EPOCHS[target], "batch_size": benchmark.BATCH_SIZE[target],
            "max_length": benchmark.MAX_LENGTH[target]}


def target_recipe(train_task: str, targets: Sequence[str]) -> dict[str, Any]:
    """The fine-tuning recipe of ``train_task``'s targets (all must agree): epochs, batch and
    length from ``benchmark`` for XTREME targets, else the task table's."""
    recipes = []
    for target in targets:
        spec = tasks.tasks_for(target)[0]
        paper = paper_recipe(target)
        recipes.append(paper if paper else {
            "epochs": spec.epochs, "max_length": tasks.get_task(train_task).max_length,
            "batch_size": QA_BATCH_SIZE if spec.kind == "qa" else INTERMEDIATE_BATCH_SIZE})
    if any(r != recipes[0] for r in recipes):
        raise ValueError(f"targets {list(targets)} of {train_task} have different recipes "
                         f"{recipes}: give them separate train tasks or finetune_overrides")
    return recipes[0]


def _deviations(settings: Phase, recipe: Mapping[str, Any], targets: Sequence[str]
                ) -> tuple[str, ...]:
    """Settings of an XTREME target's fine-tune that differ from the paper's recipe."""
    if not all(paper_recipe(t) for t in targets):
        return ()
    paper = {**recipe, "learning_rate": PAPER_LEARNING_RATE}
    out = []
    for key, value in paper.items():
        ours = getattr(settings, key)
        if key == "epochs" and settings.steps is not None:
            out.append(f"steps {settings.steps} instead of {value} epochs")
        elif ours is not None and ours != value:
            out.append(f"{key} {ours} instead of the paper's {value}")
    return tuple(out)


def finetune_settings(grid: Grid, train_task: str, targets: Sequence[str]
                      ) -> tuple[Phase, float | None, tuple[str, ...]]:
    """Phase-2 settings of one train task: ``grid.finetune``, then ``finetune_overrides`` by
    train task and by target, with batch and length from the recipe where left open; plus the
    recipe's epochs and the deviations from the paper's recipe."""
    recipe = target_recipe(train_task, targets)
    settings = grid.finetune
    for key in (train_task, *targets):
        settings = settings.merged(grid.finetune_overrides.get(key, {}),
                                   f"finetune_overrides[{key!r}]")
    settings = dataclasses.replace(
        settings, batch_size=settings.batch_size or recipe["batch_size"],
        max_length=settings.max_length or recipe["max_length"])
    return settings, recipe["epochs"], _deviations(settings, recipe, targets)


# ---------------------------------------------------------------------------------- the jobs
def plan_pretrain(grid: Grid) -> list[PhaseJob]:
    """Phase 0: MLM on ``pretrain_mixture`` (none without ``pretrain``)."""
    if grid.pretrain is None:
        return []
    settings = dataclasses.replace(
        grid.pretrain, steps=grid.pretrain.steps or 1,
        batch_size=grid.pretrain.batch_size or INTERMEDIATE_BATCH_SIZE,
        max_length=grid.pretrain.max_length or PRETRAIN_MAX_LENGTH)
    return [PhaseJob("phase0", "pretrain", 0, grid.pretrain_mixture, "mlm", 2, settings,
                     "phase0", None)]


def _encoder_source(grid: Grid) -> str | None:
    return plan_pretrain(grid)[0].checkpoints if grid.pretrain is not None else None


def phase1_seeds(grid: Grid) -> list[int]:
    return sorted({grid.phase1_seed(s) for s in grid.seeds})


def plan_intermediate(grid: Grid) -> list[PhaseJob]:
    """Phase 1: every intermediate config (not the baseline) once per phase-1 seed."""
    jobs = []
    for config, mixture in grid.intermediate.items():
        if mixture is None:
            continue
        for seed in phase1_seeds(grid):
            jobs.append(intermediate_job(grid, config, mixture, seed))
    return jobs


def budget_configs(grid: Grid) -> dict[str, str]:
    """Multilingual config -> the English-only config whose steps it trains for (equal-steps
    budget); empty with ``intermediate_budget="epochs"``."""
    if grid.intermediate_budget != "equal_steps":
        return {}
    out: dict[str, str] = {}
    for english, multilingual in grid.comparisons():
        if out.setdefault(multilingual, english) != english:
            raise ValueError(f"config {multilingual} is compared with both {out[multilingual]} "
                             f"and {english}: its equal-steps budget is ambiguous (set "
                             f"intermediate_budget='epochs' or compare it once)")
        if grid.intermediate[english] is None or grid.intermediate[multilingual] is None:
            raise ValueError(f"comparison ({english}, {multilingual}): both must train phase 1")
    return out


def _task_lengths(mixture: str, cap: int | None) -> tuple[tuple[str, int], ...]:
    """Each task's max length: one head, the phase's (else the longest task's) for all; mixed
    kinds, each task's own, capped by the phase's."""
    single = mixture_kind(mixture)
    names = tasks.mixture_tasks(mixture)
    if single is not None:
        return tuple((t, cap or single[2]) for t in names)
    return tuple((t, min(tasks.get_task(t).max_length, cap or math.inf)) for t in names)


def intermediate_job(grid: Grid, config: str, mixture: str, seed: int) -> PhaseJob:
    job = _intermediate_job(grid, config, mixture, seed)
    english = budget_configs(grid).get(config)
    if english is None:
        return dataclasses.replace(job, budget_source=mixture, budget_lengths=job.lengths)
    source = grid.intermediate[english]
    if grid.is_seqio(source):
        raise ValueError(f"config {config}: the equal-steps budget counts the epochs of "
                         f"{english}'s registered mixture, but {source!r} is a seqio name; set "
                         f"intermediate_budget='epochs' (or steps)")
    return dataclasses.replace(
        job, budget_source=source, epochs=tasks.get_task(tasks.mixture_tasks(source)[0]).epochs,
        budget_lengths=_task_lengths(source, grid.intermediate_phase.max_length))


def _intermediate_job(grid: Grid, config: str, mixture: str, seed: int) -> PhaseJob:
    phase = grid.intermediate_phase
    settings = dataclasses.replace(phase, batch_size=phase.batch_size or INTERMEDIATE_BATCH_SIZE)
    if grid.is_seqio(mixture):
        return _seqio_intermediate_job(grid, config, mixture, seed, settings)
    names = tasks.mixture_tasks(mixture)
    first = tasks.get_task(names[0])
    common = {"phase": "phase1", "config": config, "seed": seed, "source": mixture,
              "model_dir": f"phase1/{config}/seed{seed}", "init_from": _encoder_source(grid),
              "epochs": first.epochs}
    lengths = _task_lengths(mixture, phase.max_length)
    settings = dataclasses.replace(settings, max_length=max(n for _, n in lengths))
    single = mixture_kind(mixture)
    if single is not None:  # one head
        return PhaseJob(**common, kind=single[0], num_labels=task_kind(first)[1] or None,
                        settings=settings, lengths=lengths)
    heads, task_heads = mixture_heads(mixture)  # kinds mixed: each task at its own length
    return PhaseJob(**common, kind="multitask", num_labels=None, settings=settings,
                    lengths=lengths, heads=tuple((h, k, n) for h, (k, n) in heads.items()),
                    task_heads=tuple(task_heads.items()))


def _seqio_intermediate_job(grid: Grid, config: str, name: str, seed: int,
                            settings: Phase) -> PhaseJob:
    """Phase 1 on a seqio Task/Mixture: kind and heads from the seqio tasks
    (``train.seqio_data_model``), one length for all of them (the phase's, else the longest
    project task's), epochs the first project task's (a user's Task declares none)."""
    model, leaves = seqio_facts(grid, name)
    metadata = [getattr(t, "metadata", None) or {} for t in leaves]
    length = settings.max_length or max(
        (m["max_length"] for m in metadata if m.get("max_length")), default=None)
    if length is None:
        raise ValueError(f"intermediate config {config} ({name}): set intermediate_phase "
                         f"max_length (its seqio tasks declare none)")
    epochs = next((m["epochs"] for m in metadata if m.get("epochs")), None)
    common = {"phase": "phase1", "config": config, "seed": seed, "source": name,
              "model_dir": f"phase1/{config}/seed{seed}", "init_from": _encoder_source(grid),
              "epochs": epochs, "settings": dataclasses.replace(settings, max_length=length),
              "lengths": tuple((t.name, int(length)) for t in leaves), "seqio": True}
    if not model.heads:
        return PhaseJob(**common, kind=model.task_type, num_labels=model.num_labels)
    return PhaseJob(**common, kind="multitask", num_labels=None,
                    heads=tuple((h, k, n) for h, (k, n) in model.heads.items()),
                    task_heads=tuple(model.task_heads.items()))


def plan_finetune(grid: Grid) -> list[PhaseJob]:
    """Phase 2: every (config, seed, English train task) cell, from its phase-1 encoder."""
    phase1 = {(j.config, j.seed): j for j in plan_intermediate(grid)}
    jobs = []
    for config in grid.intermediate:
        for seed in grid.seeds:
            source = phase1.get((config, grid.phase1_seed(seed)))
            init = source.checkpoints if source else _encoder_source(grid)
            for train_task, targets in train_tasks(grid).items():
                jobs.append(finetune_job(grid, config, seed, train_task, targets, init))
    return jobs


def finetune_job(grid: Grid, config: str, seed: int, train_task: str, targets: Sequence[str],
                 init_from: str | None) -> PhaseJob:
    spec = tasks.get_task(train_task)
    kind, labels = task_kind(spec)
    settings, epochs, deviations = finetune_settings(grid, train_task, targets)
    return PhaseJob("phase2", config, seed, train_task, kind, labels or None, settings,
                    f"phase2/{config}/{train_task}/seed{seed}", init_from,
                    lengths=((train_task, settings.max_length),), targets=tuple(targets),
                    epochs=epochs, selection=spec.metric, deviations=deviations)


def plan(grid: Grid) -> list[PhaseJob]:
    """Every job of the grid, in the order the driver runs them."""
    return plan_pretrain(grid) + plan_intermediate(grid) + plan_finetune(grid)
