"""The report's numbers from a run directory's rows and example stats (no rendering)."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from xstilts.evals import metrics, stats
from xstilts.evals.xtreme_score import LANGUAGES, TASK2LANGS
from xstilts.results import STATS_FILENAME, location, read_rows

TIER_ORDER = ("high", "medium", "low", "unseen", "unknown")
# hi (20.2 GiB) and tr (20.9 GiB) sit just above the 20 GiB high/medium cut of CC-100.
DEFAULT_TIER_BOUNDARY = {"hi": "medium", "tr": "medium"}
# Test sets whose languages are translations of the same examples: one example resample for
# every language (google-research/xtreme README: XNLI, PAWS-X and XQuAD are parallel).
PARALLEL_TASKS = frozenset({"xnli", "pawsx", "xquad"})
Key = tuple[str, str, str, str, int]  # (config, task, language, split, seed)


# ----------------------------------------------------------------------------------- loading
def read_example_stats(run_dir: Path) -> dict[Key, np.ndarray]:
    """``phase2/<config>/<train task>/seed<k>/example_stats.npz`` -> {key: stats [n, k]}."""
    out: dict[Key, np.ndarray] = {}
    for path in sorted(location(run_dir).glob(f"phase2/*/*/seed*/{STATS_FILENAME}")):
        config, seed = path.parents[2].name, path.parent.name.removeprefix("seed")
        if not seed.isdigit():
            raise ValueError(f"{path}: expected a seed<k> directory, got {path.parent.name!r}")
        with np.load(io.BytesIO(path.read_bytes())) as data:
            for name in data.files:
                parts = name.split("|")
                if len(parts) != 3:
                    raise ValueError(f"{path}: key {name!r}: expected task|language|split")
                key = (config, *parts, int(seed))
                if key in out:
                    raise ValueError(f"{path}: {name} of seed {seed} also in another cell")
                out[key] = np.asarray(data[name], dtype=np.float64)
    return out


def load(run_dir: str | os.PathLike
         ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[Key, np.ndarray]]:
    """(rows, experiment.json, example stats) of a finished run directory."""
    run_dir = location(run_dir)
    results, meta_path = run_dir / "results.jsonl", run_dir / "experiment.json"
    for path in (results, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {run_dir} a finished experiment run "
                                    f"(python -m xstilts.experiment)?")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return read_rows(results), meta, read_example_stats(run_dir)


def read_budgets(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every phase-1 run's ``budget.json`` (steps, batch, examples seen per language)."""
    out = []
    for path in sorted(location(run_dir).glob("phase1/*/seed*/budget.json")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
    return out


DATA_MANIFEST = "data_manifest.json"  # xstilts.data.manifest's file in the run directory
OURS_SOURCE = "translate-train-ours"  # a task of our translations (python -m xstilts.translate)


def read_data_records(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/data_manifest.json`` (none where the run wrote no manifest)."""
    path = location(run_dir) / DATA_MANIFEST
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8")).get("records")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a data manifest ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: no list of records")
    return records


def ours_tasks(records: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Tasks the run read from translations of ours -> the models that wrote them
    (``model (sha256 <12 hex>)``, from each file's record), tasks sorted."""
    out: dict[str, set[str]] = {}
    for r in records:
        if r.get("source") == OURS_SOURCE:
            out.setdefault(r["task"], set()).update(
                f"{f['model']} (sha256 {f['model_sha256'][:12]})"
                for f in r.get("files", ()) if "model" in f)
    return {task: sorted(models) for task, models in sorted(out.items())}


def budget_table(budgets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per config: mean steps and examples per language over its phase-1 runs."""
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for b in budgets:
        by_config.setdefault(b["config"], []).append(b)
    table = []
    for config, runs in by_config.items():
        languages = sorted({lang for r in runs for lang in r["examples_per_language"]})
        table.append({
            "config": config, "runs": len(runs), "steps": fmean(r["steps"] for r in runs),
            "batch_size": runs[0]["batch_size"], "budget": runs[0]["budget"],
            "examples": {lang: fmean(r["examples_per_language"].get(lang, 0) for r in runs)
                         for lang in languages},
            "tokens": fmean(sum(r.get("tokens_per_language_estimate", {}).values())
                            for r in runs)})
    return table


# ---------------------------------------------------------------------------- the run's data
@dataclasses.dataclass(frozen=True)
class RunData:
    """Primary numbers and example stats by (config, task, language, split, seed); read-only
    once built (``run_data``): the seed index is computed once."""

    scores: dict[Key, float]
    example_stats: dict[Key, np.ndarray]
    meta: Mapping[str, Any]
    task_metric: dict[str, str]  # task -> metric name (evals.metrics.METRICS)

    @property
    def tasks(self) -> list[str]:
        """Every target and retrieval task of the grid (a task without rows is "missing")."""
        return list(dict.fromkeys([*self.meta.get("targets", []),
                                   *self.meta.get("retrieval", [])]))

    @property
    def configs(self) -> list[str]:
        return [c for c in self.meta["configs"] if any(k[0] == c for k in self.scores)]

    def languages(self, task: str, split: str = "test") -> list[str]:
        """The languages a task is scored on: on test XTREME's list (else every language in
        the rows); on dev those with a dev split in the data (UD has no dev set for some
        languages), i.e. that any config scored."""
        present = {lang for (_, t, lang, sp) in self.cell_seeds if (t, sp) == (task, split)}
        if split == "test" and task in TASK2LANGS:
            return list(TASK2LANGS[task])
        order = TASK2LANGS.get(task, ())
        return sorted(present, key=lambda lang: (lang not in order,
                                                 order.index(lang) if lang in order else 0,
                                                 lang))

    @functools.cached_property
    def cell_seeds(self) -> dict[tuple[str, str, str, str], set[int]]:
        """(config, task, language, split) -> the seeds that scored it."""
        out: dict[tuple[str, str, str, str], set[int]] = {}
        for key in self.scores:
            out.setdefault(key[:4], set()).add(key[4])
        return out

    def seeds(self, config: str, task: str | None = None, split: str = "test") -> list[int]:
        return sorted({k[4] for k in self.scores if k[0] == config and k[3] == split
                       and (task is None or k[1] == task)})

    def has_split(self, task: str, split: str) -> bool:
        return any(k[1] == task and k[3] == split for k in self.scores)

    def tier(self, language: str, boundary: Mapping[str, str] | None = None) -> str:
        if boundary and language in boundary:
            return boundary[language]
        tiers = self.meta.get("tiers") or {}
        if language in tiers:
            return tiers[language]
        return LANGUAGES[language].tier if language in LANGUAGES else "unknown"

    @property
    def shared_intermediate(self) -> bool:
        """Phase-2 seeds continue one intermediate run per config (not independent runs)."""
        return not self.meta.get("intermediate_per_seed", False)


def _task_metric(meta: Mapping[str, Any], task: str) -> str:
    """The task's metric name; runs before ``task_metric`` existed give its primary key."""
    if task in (meta.get("task_metric") or {}):
        return meta["task_metric"][task]
    key = (meta.get("primary_metric") or {}).get(task, "accuracy")
    if key == "em_f1":
        return "mlqa_em_f1" if task == "mlqa" else "squad_em_f1"
    if key == "f1":
        return "bucc_f1" if "bucc" in task else "f1_seqeval"
    return "accuracy"


def run_data(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any],
             example_stats: Mapping[Key, np.ndarray] | None = None) -> RunData:
    """One primary number per (config, task, language, split, seed) from the tidy rows."""
    by_key: dict[Key, dict[str, float]] = {}
    for r in rows:
        key = (r["config"], r["task"], r["language"], r["split"], int(r["seed"]))
        by_key.setdefault(key, {})[r["metric"]] = float(r["value"])
    task_metric = {task: _task_metric(meta, task) for task in {k[1] for k in by_key}}
    scores = {}
    for key, values in by_key.items():
        try:
            scores[key] = metrics.primary_value(task_metric[key[1]], values)
        except KeyError:
            continue  # rows of other metrics only (e.g. BUCC's oracle F1 under another name)
    return RunData(scores, dict(example_stats or {}), meta, task_metric)


# -------------------------------------------------------------------------------- summaries
@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean ± sample std over seeds, or why there is no number."""

    mean: float | None = None
    std: float | None = None
    seeds: int = 0
    note: str = ""  # "missing", "incomplete (k/n languages)", ...

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        mean, std = stats.mean_std(values)
        return cls(mean, std, len(values))


def task_value(data: RunData, config: str, task: str, split: str, seed: int,
               languages: Iterable[str] | None = None) -> float | str:
    """Mean over ``languages`` (default: all the task's) of one seed, or why not: "missing"
    (no language) or "incomplete (k/n languages)"."""
    wanted = list(data.languages(task, split) if languages is None else languages)
    values = [data.scores.get((config, task, lang, split, seed)) for lang in wanted]
    present = [v for v in values if v is not None]
    if not present:
        return "missing"
    if len(present) < len(wanted):
        return f"incomplete ({len(present)}/{len(wanted)} languages)"
    return fmean(present)


def _task_seeds(data: RunData, config: str, task: str, split: str) -> dict[int, float] | str:
    """Seed -> task value of the seeds that scored the task, or why there is none."""
    values: dict[int, float] = {}
    for seed in data.seeds(config, task, split):
        value = task_value(data, config, task, split, seed)
        if isinstance(value, str):
            return value
        values[seed] = value
    return values or "missing"


def xtreme_table(data: RunData, configs: Sequence[str], tasks: Sequence[str], split: str
                 ) -> dict[str, dict[str, Summary]]:
    """config -> {task | "score": Summary over seeds}; the score is the mean over ``tasks``
    and is "incomplete" when any task is missing or incomplete."""
    table = {}
    for config in configs:
        seeds = data.seeds(config, None, split)
        row: dict[str, Summary] = {}
        per_task = {task: _task_seeds(data, config, task, split) for task in tasks}
        for task, values in per_task.items():
            row[task] = Summary(note=values) if isinstance(values, str) else \
                Summary.of(list(values.values()))
        broken = [t for t, v in per_task.items() if isinstance(v, str)]
        if broken or not seeds:
            row["score"] = Summary(note=f"incomplete ({', '.join(broken)} not scored)")
        else:
            # A task scored on fewer seeds (retrieval from a shared phase 1) enters every
            # seed's score with its mean over its seeds.
            row["score"] = Summary.of([fmean(per_task[t].get(s, row[t].mean) for t in tasks)
                                       for s in seeds])
        table[config] = row
    return table


@dataclasses.dataclass(frozen=True)
class Selection:
    """The paper's "best intermediate task per target": chosen on dev, reported on test."""

    task: str
    config: str | None
    dev: Summary
    test: Summary
    note: str = ""


def select_on_dev(data: RunData, candidates: Sequence[str], tasks: Sequence[str]
                  ) -> list[Selection]:
    """Per target task, the candidate config with the best mean dev score (target-language
    dev, mean over seeds) and that config's test score; test never takes part in the choice."""
    dev = xtreme_table(data, candidates, tasks, "dev")
    test = xtreme_table(data, candidates, tasks, "test")
    out = []
    for task in tasks:
        if not data.has_split(task, "dev"):
            out.append(Selection(task, None, Summary(note="no dev split"), Summary(),
                                 "not selectable (no dev split)"))
            continue
        scored = [(dev[c][task].mean, c) for c in candidates if dev[c][task].mean is not None]
        if not scored:
            out.append(Selection(task, None, Summary(note="missing"), Summary(), "no dev score"))
            continue
        best = max(scored, key=lambda x: x[0])[1]  # ties: the first candidate in config order
        out.append(Selection(task, best, dev[best][task], test[best][task]))
    return out


# ------------------------------------------------------------------------------ comparisons
@dataclasses.dataclass(frozen=True)
class Row:
    """One paired comparison row: b − a on a set of (task, language) cells."""

    pair: tuple[str, str]
    level: str  # "all", "tier", "tier x task", "tier x seen", "language", "boundary"
    tier: str
    task: str
    group: str  # "seen" / "unseen" for the covariate rows, else ""
    languages: tuple[str, ...]
    a: Summary
    b: Summary
    interval: stats.Interval | None  # None: a cell is missing in an arm
    note: str = ""
    family: str = "secondary"  # "primary", "secondary" (Holm), "sensitivity" (descriptive)
    p_holm: float | None = None
    cells: tuple[tuple[str, str], ...] = ()
    weights: tuple[float, ...] = ()

    @property
    def hypothesis(self) -> tuple:
        """Rows with the same pair, cells and weights test the same difference."""
        return self.pair, self.cells, tuple(round(w / sum(self.weights), 12)
                                            for w in self.weights)


def cell_weights(cells: Sequence[tuple[str, str]], by: str) -> list[float]:
    """``by="language"``: every language counts once (its cells share 1 / #languages), so a
    task scoring many of the tier's languages weighs no more than one scoring a few;
    ``by="task"``: every task counts once (XTREME's mean over tasks of means over languages)."""
    index = 1 if by == "language" else 0
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell[index]] = counts.get(cell[index], 0) + 1
    return [1.0 / counts[cell[index]] for cell in cells]


class Comparer:
    """Paired intervals for one run; per-cell resampled scores are computed once and reused."""

    def __init__(self, data: RunData, *, resamples: int = stats.RESAMPLES, seed: int = 0):
        self.data, self.resamples, self.seed = data, resamples, seed
        self._arms: dict[tuple, stats.Arm] = {}

    def _runs(self, config: str, task: str, language: str, seeds: Sequence[int]) -> list:
        stats_keys = [(config, task, language, "test", s) for s in seeds]
        if all(k in self.data.example_stats for k in stats_keys):
            return [self.data.example_stats[k] for k in stats_keys]
        return [self.data.scores[k] for k in stats_keys]

    def arm(self, config: str, task: str, language: str, seeds: tuple[int, ...]) -> stats.Arm:
        """One config's arm of a cell; computed with every other config that scored the cell
        on the same seeds (one set of example resamples for all)."""
        key = (config, task, language, seeds)
        if key not in self._arms:
            configs = [c for c in self.data.meta["configs"]
                       if set(seeds) <= self.data.cell_seeds.get((c, task, language, "test"),
                                                                 set())]
            resample_key = task if task in PARALLEL_TASKS else f"{task}|{language}"
            computed = stats.arms(self.data.task_metric[task],
                                  {c: self._runs(c, task, language, seeds) for c in configs},
                                  key=resample_key, resamples=self.resamples, seed=self.seed)
            self._arms |= {(c, task, language, seeds): a for c, a in computed.items()}
        return self._arms[key]

    def _common(self, a: str, b: str, cell: tuple[str, str]) -> tuple[int, ...]:
        have = [self.data.cell_seeds.get((c, *cell, "test"), set()) for c in (a, b)]
        return tuple(sorted(have[0] & have[1]))

    def paired_seeds(self, a: str, b: str, cells: Sequence[tuple[str, str]]
                     ) -> list[tuple[int, ...]] | None:
        """Per cell, the seeds both arms scored (None: a cell lacks them). Independent runs
        pair on the seeds common to every cell; phase-2 seeds of one shared intermediate run
        are averaged per cell, so each cell keeps its own (retrieval: the phase-1 seed)."""
        per_cell = [self._common(a, b, cell) for cell in cells]
        if not per_cell or not all(per_cell):
            return None
        if self.data.shared_intermediate:
            return per_cell
        common = tuple(sorted(set.intersection(*(set(s) for s in per_cell))))
        return [common] * len(cells) if common else None

    def summary(self, config: str, cells: Sequence[tuple[str, str]], weights: Sequence[float],
                seeds: Sequence[tuple[int, ...]]) -> Summary:
        """Weighted mean over cells per seed (a cell scored on fewer seeds enters the others
        with its mean), mean ± sample std over seeds."""
        total = sum(weights)
        values = [{s: self.data.scores[(config, *cell, "test", s)] for s in cell_seeds}
                  for cell, cell_seeds in zip(cells, seeds, strict=True)]
        every = sorted(set().union(*seeds))
        return Summary.of([sum(w * v.get(s, fmean(v.values()))
                               for w, v in zip(weights, values, strict=True)) / total
                           for s in every])

    def interval(self, a: str, b: str, cells: Sequence[tuple[str, str]],
                 weights: Sequence[float]) -> tuple[stats.Interval | None, Summary, Summary, str]:
        """(interval, a's summary, b's summary, note) of the weighted mean over ``cells``."""
        seeds = self.paired_seeds(a, b, cells)
        if seeds is None:
            missing = [f"{c}/{t}/{lang}" for t, lang in cells for c in (a, b)
                       if (c, t, lang, "test") not in self.data.cell_seeds]
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more"
                                              if len(missing) > 3 else "")
            return None, Summary(note="incomplete"), Summary(note="incomplete"), \
                f"incomplete: no score for {shown or 'a common seed'}"
        pairs = [(self.arm(a, t, lang, s), self.arm(b, t, lang, s))
                 for (t, lang), s in zip(cells, seeds, strict=True)]
        note = ""
        if self.data.shared_intermediate:
            pairs = [(_collapse(x), _collapse(y)) for x, y in pairs]
            note = "one intermediate run shared by the seeds"
        interval = stats.paired_interval(pairs, weights)
        return interval, self.summary(a, cells, weights, seeds), \
            self.summary(b, cells, weights, seeds), note


def _collapse(arm: stats.Arm) -> stats.Arm:
    """The mean over runs as one run (phase-2 seeds sharing one intermediate run)."""
    draws = None if arm.draws is None else arm.draws.mean(axis=1, keepdims=True)
    return stats.Arm(np.array([arm.full.mean()]), draws)


def comparison_rows(data: RunData, comparer: Comparer, a: str, b: str, *,
                    low_resource: Sequence[str] = (),
                    boundary: Mapping[str, str] | None = None) -> list[Row]:
    """Every row of one comparison: all languages, tiers pooled and per task, seen vs unseen
    per tier, single low-resource languages, and the tier-boundary sensitivity rows."""
    tasks = data.tasks
    every = [(t, lang) for t in tasks for lang in data.languages(t)]
    seen = set(data.meta.get("seen_languages", {}).get(a, [])) | \
        set(data.meta.get("seen_languages", {}).get(b, []))
    rows = [_row(comparer, a, b, "all", "", "", "", every, by="task")]
    tiers = [t for t in TIER_ORDER if any(data.tier(lang) == t for _, lang in every)]
    for tier in tiers:
        cells = [c for c in every if data.tier(c[1]) == tier]
        rows.append(_row(comparer, a, b, "tier", tier, "", "", cells, by="language"))
        for task in tasks:
            task_cells = [c for c in cells if c[0] == task]
            if task_cells:
                rows.append(_row(comparer, a, b, "tier x task", tier, task, "", task_cells,
                                 by="language"))
        if "seen_languages" in data.meta:
            for group, members in (("seen", [c for c in cells if c[1] in seen]),
                                   ("unseen", [c for c in cells if c[1] not in seen])):
                if members:
                    rows.append(_row(comparer, a, b, "tier x seen", tier, "", group, members,
                                     by="language"))
    for lang in low_resource:
        cells = [c for c in every if c[1] == lang]
        if cells:
            rows.append(_row(comparer, a, b, "language", data.tier(lang), "", "", cells,
                             by="task"))
    moved = {lang: t for lang, t in (boundary or {}).items()
             if any(c[1] == lang for c in every)}
    if moved:
        for tier in TIER_ORDER:
            cells = [c for c in every if data.tier(c[1], moved) == tier]
            if cells:
                rows.append(dataclasses.replace(
                    _row(comparer, a, b, "boundary", tier, "", "", cells, by="language"),
                    family="sensitivity"))
    return rows


def _row(comparer: Comparer, a: str, b: str, level: str, tier: str, task: str, group: str,
         cells: Sequence[tuple[str, str]], by: str) -> Row:
    weights = cell_weights(cells, by)
    interval, sa, sb, note = comparer.interval(a, b, cells, weights)
    languages = tuple(sorted({lang for _, lang in cells}))
    return Row((a, b), level, tier, task, group, languages, sa, sb, interval, note,
               cells=tuple(cells), weights=tuple(weights))


def primary_row(rows: Sequence[Row], pair: Sequence[str], tier: str = "low") -> int | None:
    """Index of the pre-specified primary row: the primary pair's pooled ``tier`` row (the
    research question is about low-resource languages), else its all-languages row."""
    pair = tuple(pair)
    for level, wanted in (("tier", tier), ("all", "")):
        for i, row in enumerate(rows):
            if row.pair == pair and row.level == level and row.tier == wanted:
                return i
    return None


def adjust(rows: Sequence[Row], primary: int | None) -> list[Row]:
    """Mark the primary row (and rows repeating its hypothesis); Holm-adjust the p-values of
    the other non-sensitivity rows, each distinct hypothesis counted once in the family."""
    head = rows[primary].hypothesis if primary is not None else None
    marked = [dataclasses.replace(r, family="primary")
              if r.family == "secondary" and r.hypothesis == head else r for r in rows]
    family: dict[tuple, float] = {}
    for r in marked:
        if r.family == "secondary" and r.interval is not None and r.interval.p is not None:
            family.setdefault(r.hypothesis, r.interval.p)
    adjusted = dict(zip(family, stats.holm(list(family.values())), strict=True))
    return [dataclasses.replace(r, p_holm=adjusted[r.hypothesis])
            if r.family == "secondary" and r.hypothesis in adjusted else r for r in marked]


def family_size(rows: Sequence[Row]) -> int:
    """The number of distinct hypotheses Holm adjusted over."""
    return len({r.hypothesis for r in rows if r.p_holm is not None})
