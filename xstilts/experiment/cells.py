"""What each cell of a grid is: its effective settings, their fingerprint, and what a rerun with
other settings does (``on_change``).

A cell is one unit of work with a result in the run directory: the tokenizer, phase 0, a phase-1
config and seed, its retrieval scores, a phase-2 cell (fine-tuning + zero-shot scores), the
chance rows. Its settings are everything that can change its result: the phase settings (not the
checkpoint frequency), seed, lengths, heads, the model config, the tokenizer, the initial weights,
the sha256 of every data file it reads, and, nested under ``init`` (``encoder`` for retrieval),
the settings of the cell whose checkpoint it starts from, so a change upstream reaches every cell
downstream. A cell records them in its directory when it starts (``cell_settings.json``).

A later run compares each recorded cell with the grid before any work: ``on_change="stop"`` (the
default) stops with the differences, setting by setting, and the cells each affects;
``"rerun"`` removes the changed cells (downstream ones differ too, so they go with them) and
computes them again; ``"keep"`` uses the finished ones as they are (their recorded settings stay
the truth, the report marks them, and cells downstream of them are planned from those) and
restarts unfinished ones, whose partial checkpoints cannot be kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xstilts import fingerprint as fp
from xstilts.checkpoints import is_url
from xstilts.data import manifest, tasks
from xstilts.data.spec import data_directory
from xstilts.experiment import plan as plan_lib
from xstilts.experiment.grid import ON_CHANGE, SYNTHETIC_BUCC, Grid
from xstilts.experiment.plan import PhaseJob
from xstilts.experiment.rundir import SPM_FILENAME, run_dir_path, write_json
from xstilts.multihost import agreed, barrier, is_chief

log = logging.getLogger("xstilts.experiment")
RECORD = "cell_settings.json"
# Phase settings that cannot change a result: a checkpoint is also saved at every evaluation, so
# the kept-best step and an exact resume do not depend on the save frequency.
NO_EFFECT = ("save_every_steps",)
LATER_DEFAULTS = {"classification_packing": False, "max_segments": None}  # Phase fields added
# after runs existed: left out of a cell's settings at their default (its fingerprint unchanged)
SHOWN = 12  # cell names listed per group of changes


class SettingsChanged(RuntimeError):
    """A rerun found cells computed with other settings (``on_change="stop"``)."""


def message(error: SettingsChanged) -> str:
    """The stop message without the call site gin appends to an error raised inside it."""
    return str(error).split("\n  In call to configurable")[0]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work of the grid and where its result and settings live (run-relative)."""

    name: str  # e.g. "phase2/baseline/synthetic.pos.en/seed0", "phase1/x/seed0/retrieval"
    phase: str  # "tokenizer" | "phase0" | "phase1" | "retrieval" | "phase2" | "chance"
    done: str  # exists once the cell is finished
    record: str  # its settings file
    outputs: tuple[str, ...]  # removed before it is computed again
    upstream: str | None = None  # the cell whose checkpoint it starts from


def fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``settings`` (``xstilts.fingerprint.digest``)."""
    return fp.digest(settings)


def canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (``xstilts.fingerprint.canonical``)."""
    return json.loads(json.dumps(fp.canonical(value), sort_keys=True))


def settings_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]
                  ) -> list[tuple[str, Any, Any]]:
    """``[(setting, old, new)]`` of every flattened setting that differs
    (``xstilts.fingerprint.settings_diff``; ``old`` None: the cell recorded none, a run from
    before fingerprints)."""
    if old is None:
        return [("settings", "(not recorded)", "(this run's)")]
    return fp.settings_diff(old, new)


def diff_lines(diff: Sequence[tuple[str, Any, Any]]) -> list[str]:
    return [f"{key}: {_show(old)} -> {_show(new)}" for key, old, new in diff]


def _show(value: Any) -> str:
    marker = isinstance(value, str) and (value.startswith("(") or value == fp.MISSING)
    return value if marker else json.dumps(value)


# ------------------------------------------------------------------------------ what cells read
def _digest(paths: Iterable[Path]) -> str:
    return hashlib.sha256("".join(manifest.sha256_file(p) for p in paths).encode()).hexdigest()


def data_hashes(grid: Grid, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{"task:split": sha256 over its files' sha256}`` of the data a cell reads (a missing
    file is the reader's ``FileNotFoundError``, naming every path looked for)."""
    root = data_directory(grid.data_dir)
    return {f"{name}:{split}": _digest(tasks.get_task(name).path(split, root))
            for name, split in sorted(set(pairs))}


def weights_settings(pretrained: str | None) -> dict[str, Any] | None:
    """The initial weights: a local directory's files by sha256, a hub id by name."""
    if pretrained is None:
        return None
    folder = Path(pretrained)
    if not folder.is_dir():
        return {"hub_id": pretrained}
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin")
                   and p.is_file())
    return {"path": str(folder), **{p.name: manifest.sha256_file(p) for p in files}}


def job_settings(job: PhaseJob) -> dict[str, Any]:
    """The phase settings of a job that can change its result."""
    phase = {k: v for k, v in dataclasses.asdict(job.settings).items() if k not in NO_EFFECT
             and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
    out = {"phase": job.phase, "source": job.source, "seed": job.seed, "kind": job.kind,
           "num_labels": job.num_labels, **phase, "lengths": dict(job.lengths),
           "recipe_epochs": job.epochs}
    if job.heads:
        out |= {"heads": [list(h) for h in job.heads], "task_heads": dict(job.task_heads)}
    if job.targets:
        out |= {"targets": list(job.targets), "selection": job.selection}
    if job.phase == "phase1":
        out |= {"budget_source": job.budget_source, "budget_lengths": dict(job.budget_lengths),
                "seqio": job.seqio}
    return out


def job_reads(grid: Grid, job: PhaseJob) -> list[tuple[str, str]]:
    """(task, split) pairs a job reads; a seqio name's files are its DataSources' (none here)."""
    if job.phase in ("phase0", "phase1"):
        mixtures = {job.source, job.budget_source or job.source}
        return [(t, "train") for m in mixtures if not grid.is_seqio(m)
                for t in tasks.mixture_tasks(m)]
    spec = tasks.get_task(job.source)
    pairs = [(job.source, "train")]
    if "dev" in spec.splits and job.settings.eval_every_steps > 0:
        pairs.append((job.source, "dev"))
    return pairs + [(s.name, split) for target in job.targets for s in tasks.tasks_for(target)
                    for split in ("dev", "test") if split in s.splits]


def retrieval_reads(names: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for name in names:
        if name == SYNTHETIC_BUCC:
            pairs += [("synthetic.mlm.en", "train")]
            name = "synthetic.parallel"
        for spec in tasks.tasks_for(name):
            pairs += [(spec.name, s) for s in ("dev", "test")
                      if s in spec.splits and (s == "test" or spec.metric == "bucc_f1")]
    return pairs


# ------------------------------------------------------------------------------------ the cells
def grid_cells(grid: Grid, jobs: Sequence[PhaseJob], retrieval: Mapping[str, Any]
               ) -> tuple[list[Cell], dict[str, Callable[[Callable], dict[str, Any]]]]:
    """Every cell of the grid in dependency order, and per cell a function that builds its
    settings from a lookup of its upstream cell's effective settings. ``retrieval``: the
    resolved retrieval layer, lengths and centring."""
    cells: list[Cell] = []
    build: dict[str, Callable[[Callable], dict[str, Any]]] = {}
    model = dataclasses.asdict(grid.model_config)
    weights = weights_settings(grid.pretrained)

    def add(cell: Cell, fn: Callable[[Callable], dict[str, Any]]) -> None:
        cells.append(cell)
        build[cell.name] = lambda lookup: canonical(fn(lookup))

    trains_tokenizer = grid.tokenizer_dir is None and grid.spm_vocab_size is not None
    if trains_tokenizer:
        add(Cell("tokenizer", "tokenizer", f"tokenizer/{SPM_FILENAME}", f"tokenizer/{RECORD}",
                 ("tokenizer",)),
            lambda _: {"spm_vocab_size": grid.spm_vocab_size, "mixture": grid.pretrain_mixture,
                       "data": data_hashes(grid, [(t, "train") for t in tasks.mixture_tasks(
                           grid.pretrain_mixture)])})

    def tokenizer(lookup: Callable) -> dict[str, Any]:
        if trains_tokenizer:
            return lookup("tokenizer")
        folder = run_dir_path(grid.tokenizer_dir) if grid.tokenizer_dir else \
            run_dir_path(grid.run_dir) / "tokenizer"
        path = folder / SPM_FILENAME
        if not path.is_file():
            return {"sha256": "(missing)"}
        return {"sha256": manifest.sha256_file(path) if not is_url(os.fspath(path)) else
                hashlib.sha256(path.read_bytes()).hexdigest()}

    def job_cell(job: PhaseJob, upstream: str | None) -> None:
        done = f"{job.model_dir}/{'results.jsonl' if job.phase == 'phase2' else 'DONE'}"
        add(Cell(job.model_dir, job.phase, done, f"{job.model_dir}/{RECORD}", (job.model_dir,),
                 upstream),
            lambda lookup: {**job_settings(job), "use_pooler": grid.use_pooler, "model": model,
                            "tokenizer": tokenizer(lookup),
                            "weights": None if upstream else weights,
                            "data": data_hashes(grid, job_reads(grid, job)),
                            "init": lookup(upstream) if upstream else None})

    by_dir = {}
    for job in jobs:
        if job.phase == "phase0":
            job_cell(job, None)
        else:
            job_cell(job, by_dir.get(job.init_from and job.init_from.rsplit("/", 1)[0]))
        by_dir[job.model_dir] = job.model_dir
    phase1 = {(j.config, j.seed): j for j in jobs if j.phase == "phase1"}
    pretrain = next((j for j in jobs if j.phase == "phase0"), None)
    for config in grid.intermediate:  # (an empty retrieval list writes empty rows)
        for seed in plan_lib.phase1_seeds(grid):
            job = phase1.get((config, seed)) or pretrain
            name = f"phase1/{config}/seed{seed}/retrieval"
            up = job.model_dir if job else None
            add(Cell(name, "retrieval", f"{name}.jsonl", f"{name}_settings.json",
                     (f"{name}.jsonl",), up),
                lambda lookup, up=up: {
                    "tasks": list(grid.retrieval), **retrieval, "model": model,
                    "tokenizer": tokenizer(lookup), "weights": None if up else weights,
                    "data": data_hashes(grid, retrieval_reads(grid.retrieval)),
                    "encoder": lookup(up) if up else None})
    add(Cell("chance", "chance", "chance.jsonl", "chance_settings.json", ("chance.jsonl",)),
        lambda _: {"targets": list(grid.targets), "retrieval": list(grid.retrieval),
                   "data": data_hashes(grid, [(s.name, split) for t in grid.targets
                                              for s in tasks.tasks_for(t)
                                              for split in ("test",)]
                                       + [(s.train_task, "train") for t in grid.targets
                                          for s in tasks.tasks_for(t)]
                                       + retrieval_reads(grid.retrieval))})
    return _ordered(cells), build


def _ordered(cells: list[Cell]) -> list[Cell]:
    """Upstream cells before the cells that start from them (chance and tokenizer first)."""
    rank = {"tokenizer": 0, "chance": 1, "phase0": 2, "phase1": 3, "retrieval": 4, "phase2": 5}
    return sorted(cells, key=lambda c: rank[c.phase])


# ---------------------------------------------------------------------------------- the ledger
@dataclasses.dataclass
class Ledger:
    """The cells of one run, checked against what the run directory recorded."""

    run_dir: Path
    cells: list[Cell]
    settings: dict[str, dict[str, Any]]  # effective: recorded for kept cells, else planned
    kept: dict[str, list[str]]  # kept cell -> its differences from this run's settings
    started: list[str] = dataclasses.field(default_factory=list)  # cells computed by this run

    @classmethod
    def check(cls, grid: Grid, jobs: Sequence[PhaseJob], retrieval: Mapping[str, Any],
              on_change: str) -> Ledger:
        """Compare every recorded cell with this run's settings before any work; stop
        (``SettingsChanged``), remove the changed cells (``rerun``) or keep them (``keep``)."""
        if on_change not in ON_CHANGE:
            raise ValueError(f"on_change {on_change!r}: expected one of {ON_CHANGE}")
        run_dir = run_dir_path(grid.run_dir)
        cells, build = grid_cells(grid, jobs, retrieval)
        effective: dict[str, dict[str, Any]] = {}
        changed: list[tuple[Cell, list[tuple[str, Any, Any]], bool]] = []
        kept: dict[str, list[str]] = {}
        for cell in cells:
            planned = build[cell.name](effective.__getitem__)
            effective[cell.name] = planned
            record = _read(run_dir / cell.record)
            finished = agreed((run_dir / cell.done).is_file())
            if record is None and not finished:
                continue  # never started (or started before it could record: nothing done)
            old = None if record is None else record["settings"]
            if old == planned:
                continue
            if finished and record is not None and fingerprint(planned) in record.get(
                    "accepted", ()):
                kept[cell.name] = diff_lines(settings_diff(old, planned))
                effective[cell.name] = old if old is not None else planned
                continue
            diff = settings_diff(old, planned)
            changed.append((cell, diff, finished))
            if on_change == "keep" and finished:
                kept[cell.name] = diff_lines(diff)
                if old is not None:
                    effective[cell.name] = old
                _accept(run_dir, cell, record, planned)
        if changed and on_change == "stop":
            raise SettingsChanged(describe_changes(run_dir, changed))
        remove = [c for c, _, finished in changed if on_change == "rerun" or not finished]
        if remove:
            _remove(run_dir, remove)
            log.warning("on_change=%s: removed %d cell(s) computed with other settings: %s",
                        on_change, len(remove), ", ".join(c.name for c in remove))
        if kept:
            log.warning("on_change=keep: %d finished cell(s) kept with the settings they were "
                        "computed with: %s", len(kept), ", ".join(kept))
        return cls(run_dir, cells, effective, kept)

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.cells)

    def begin(self, name: str) -> bool:
        """Record the settings of a cell about to be computed (chief); False if it is
        finished (nothing to do)."""
        cell = self.cell(name)
        if agreed((self.run_dir / cell.done).is_file()):
            return False
        settings = self.settings[name]
        if is_chief() and _read(self.run_dir / cell.record) is None:
            write_json(self.run_dir / cell.record, {"cell": name, "fingerprint": fingerprint(
                settings), "settings": settings})
        self.started.append(name)
        return True

    def describe(self) -> list[dict[str, Any]]:
        """Per cell (experiment.json, the report): name, phase, fingerprint, its own settings
        (upstream ones are the upstream cell's), and the differences it was kept with (or the
        kept cell it starts from)."""
        out, marked = [], dict(self.kept)
        for cell in self.cells:
            settings = self.settings[cell.name] or {}
            own = {k: v for k, v in settings.items() if k not in ("init", "encoder")}
            if cell.name not in marked and cell.upstream in marked:
                marked[cell.name] = [f"starts from {cell.upstream}, kept with other settings"]
            out.append({"cell": cell.name, "phase": cell.phase, "from": cell.upstream,
                        "fingerprint": fingerprint(settings), "settings": own,
                        "kept": marked.get(cell.name)})
        return out

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for name in self.started:
            phase = self.cell(name).phase
            counts[phase] = counts.get(phase, 0) + 1
        done = ", ".join(f"{n} {p}" for p, n in counts.items()) or "none"
        return (f"cells computed by this run: {len(self.started)} ({done}); reused: "
                f"{len(self.cells) - len(self.started)} of {len(self.cells)}"
                + (f", {len(self.kept)} of them kept with other settings" if self.kept else ""))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise ValueError(f"{path}: not a cell settings file ({error}); remove it to treat the "
                         f"cell as unrecorded") from error


def _accept(run_dir: Path, cell: Cell, record: dict[str, Any] | None,
            planned: Mapping[str, Any]) -> None:
    """Remember that this run's settings were accepted for a kept cell (no stop next time)."""
    if not is_chief():
        return
    record = dict(record or {"cell": cell.name, "fingerprint": None, "settings": None})
    record["accepted"] = sorted({*record.get("accepted", ()), fingerprint(planned)})
    write_json(run_dir / cell.record, record)


def _remove(run_dir: Path, cells: Sequence[Cell]) -> None:
    if is_chief():
        for cell in cells:
            for output in (*cell.outputs, cell.record):
                path = run_dir / output
                if path.is_dir():
                    path.rmtree()
                elif path.exists():
                    path.unlink()
    barrier("on_change removal")


def describe_changes(run_dir: Path, changed: Sequence[tuple[Cell, list, bool]]) -> str:
    """The stop message: each group of differences and the cells it affects."""
    groups: dict[tuple[str, ...], list[tuple[Cell, bool]]] = {}
    for cell, diff, finished in changed:
        groups.setdefault(tuple(diff_lines(diff)), []).append((cell, finished))
    finished = sum(f for _, _, f in changed)
    lines = [f"{run_dir} holds {len(changed)} cell(s) computed with other settings than this "
             f"run's ({finished} finished, {len(changed) - finished} partial); nothing was run."]
    for diff, members in groups.items():
        names = [c.name + ("" if f else " (partial)") for c, f in members]
        shown = ", ".join(names[:SHOWN]) + (f", and {len(names) - SHOWN} more"
                                            if len(names) > SHOWN else "")
        lines += ["", f"{len(members)} {members[0][0].phase} cell(s): {shown}",
                  *(f"    {line}" for line in diff)]
    lines += ["", "Run again with --on_change=rerun to compute these cells again (everything "
              "downstream of a changed cell is in the list), or --on_change=keep to use the "
              "finished ones as they are (the report marks them; partial ones restart)."]
    return "\n".join(lines)
