"""The experiment report: ``python -m xstilts.report RUN_DIR`` (markdown, CSV and PNG plots).

Reads ``RUN_DIR/results.jsonl`` (the tidy table: config, task, language, split, metric, value,
seed, step; split "dev" = target-language dev, "test"), ``RUN_DIR/experiment.json`` and the
per-example statistics ``RUN_DIR/phase2/<config>/<train task>/seed<k>/example_stats.npz``
(keys ``task|language|split``), and writes ``RUN_DIR/report/``:

* ``report.md``: the XTREME-style table on test and on target-language dev (mean ± sample std
  over seeds, with the chance level); the best intermediate config per target chosen on dev and
  scored on test; per comparison (English-only vs multilingual intermediate training) the
  difference over all languages, per resource tier pooled and per task, split by whether the
  language is in the intermediate data, for single low-resource languages and with the tiers'
  boundary moved; hierarchical paired bootstrap intervals, the primary row unadjusted and every
  other row with a Holm-adjusted p-value; and a check that every non-English score beats chance.
* ``xtreme_table.csv``, ``xtreme_table_dev.csv``, ``selection.csv``, ``comparisons.csv``,
  ``tiers.csv`` (one per comparison), ``deltas.csv``: the same numbers, machine-readable.
* a line naming the tasks read from translations of ours (``RUN_DIR/data_manifest.json``'s
  ``source: translate-train-ours``) and the model that wrote them, where there are any.
* ``deltas.png``: per-language deltas against the baseline; ``tiers.png``: English-only vs
  multilingual per tier with the intervals.

Numbers come from ``xstilts.report_tables``; the statistics from ``xstilts.evals.stats``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from xstilts import report_tables as rt
from xstilts.evals import metrics
from xstilts.report_tables import Row, RunData, Summary
from xstilts.results import CHANCE, is_url, location

TIER_WEIGHTING = ("each language counts once: its number is the mean over the tasks that "
                  "score it, and the tier's number the mean over its languages")


# ---------------------------------------------------------------------------------- format
def _fmt(summary: Summary | None, digits: int = 1) -> str:
    if summary is None or summary.mean is None:
        return summary.note if summary is not None and summary.note else "–"
    if summary.std is None:
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` whole: locally through a renamed temporary file, on a URL as one object
    write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_url(path):
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def _retrieval_recipe(meta: Mapping[str, Any]) -> str:
    """One sentence on how retrieval embeddings were made (empty without retrieval tasks)."""
    if not meta.get("retrieval") or meta.get("retrieval_layer") is None:
        return ""
    text = (f" Retrieval embeds a sentence as the mean-pooled hidden state "
            f"{meta['retrieval_layer']} (0 = embeddings) of the encoder after phase 1 (for the "
            f"baseline: after phase 0, or the pretrained checkpoint)")
    if meta.get("retrieval_center"):
        text += (", centred per language (each language's mean embedding subtracted, "
                 "Libovický et al., 2020; XTREME does not centre)")
    return text + "."


# ---------------------------------------------------------------------------- XTREME tables
def _table_section(data: RunData, configs: Sequence[str], tasks: Sequence[str], split: str
                   ) -> tuple[list[str], str]:
    """Markdown lines and CSV of the XTREME table on ``split``."""
    table = rt.xtreme_table(data, configs, tasks, split)
    not_zero_shot = data.meta.get("not_zero_shot") or {}
    rows = [[c, *(_fmt(table[c][t]) + ("†" if t in not_zero_shot.get(c, ()) else "")
                  for t in [*tasks, "score"])] for c in configs]
    if split == "test" and any(k[0] == CHANCE for k in data.scores):
        chance = rt.xtreme_table(data, [CHANCE], tasks, "test")[CHANCE]
        rows.append([f"*{CHANCE}*", *(f"*{chance[t].mean:.1f}*" if chance[t].mean is not None
                                      else "–" for t in [*tasks, "score"])])
    seeds = sorted({k[4] for k in data.scores if k[0] != CHANCE and k[3] == split})
    title = ("zero-shot test" if split == "test" else
             "target-language dev, never used to select checkpoints")
    md = [f"## XTREME-style table ({title}; mean ± sample std over seeds "
          f"{', '.join(map(str, seeds))})", "", _md_table(["config", *tasks, "score"], rows), ""]
    if not_zero_shot:
        md += ["† not zero-shot: the config's intermediate mixture trains on that target's own "
               "data (" + "; ".join(f"{c}: {', '.join(t)}" for c, t in not_zero_shot.items())
               + ").", ""]
    csv_rows = [[c, t, _num(table[c][t].mean), _num(table[c][t].std), table[c][t].seeds,
                 table[c][t].note] for c in configs for t in [*tasks, "score"]]
    return md, _csv(["config", "task", "mean", "std", "seeds", "note"], csv_rows)


def _metric_note(data: RunData, tasks: Sequence[str]) -> str:
    names = ", ".join(f"{t}: {metrics.primary(data.task_metric[t])}" for t in tasks
                      if t in data.task_metric)
    return (f"Metrics (x100): {names} (em_f1 = (EM + F1) / 2). Each task score is the "
            f"unweighted mean over its languages and the score the mean over tasks; a task "
            f"lacking a language is shown incomplete and the score with it, never averaged "
            f"over fewer tasks. Std is the sample std (ddof = 1) over seeds (none with one "
            f"seed). The *{CHANCE}* row is a predictor that ignores its input (majority "
            f"English-train label or tag, a random context word for QA, 1/N for Tatoeba-style "
            f"retrieval, no pairs for BUCC-style mining).{_retrieval_recipe(data.meta)}")


def _selection_section(data: RunData, configs: Sequence[str]) -> tuple[list[str], str]:
    candidates = [c for c in configs if c not in (data.meta.get("baseline"), CHANCE)]
    targets = [t for t in data.tasks if t in data.meta.get("targets", [])]
    if not candidates or not any(data.has_split(t, "dev") for t in targets):
        return [], ""
    chosen = rt.select_on_dev(data, candidates, data.tasks)
    rows = [[s.task, s.config or "–", _fmt(s.dev), _fmt(s.test), s.note] for s in chosen]
    complete = [s for s in chosen if s.test.mean is not None]
    if len(complete) == len(chosen):
        rows.append(["**score**", "", "", f"{fmean(s.test.mean for s in chosen):.1f}", ""])
    else:
        rows.append(["**score**", "", "", f"incomplete ({len(complete)}/{len(chosen)} tasks)",
                     ""])
    md = ["## Best intermediate config per target, chosen on dev, scored on test", "",
          _md_table(["target", "chosen on dev", "dev", "test", "note"], rows), "",
          f"For each target the config among {', '.join(candidates)} with the highest mean "
          f"target-language dev score (mean over seeds) is chosen; its test score is reported. "
          f"Test plays no part in the choice.", ""]
    csv_text = _csv(["task", "config", "dev_mean", "dev_std", "test_mean", "test_std", "note"],
                    [[s.task, s.config or "", _num(s.dev.mean), _num(s.dev.std),
                      _num(s.test.mean), _num(s.test.std), s.note] for s in chosen])
    return md, csv_text


def _deltas_section(data: RunData, configs: Sequence[str], tasks: Sequence[str]
                    ) -> tuple[list[str], dict[str, str], dict[str, bytes]]:
    baseline = data.meta.get("baseline")
    if baseline not in configs:
        return [], {}, {}
    languages = sorted({k[2] for k in data.scores}, key=lambda x: (x != "en", x))
    delta_rows, heat = [], {}
    for config in (c for c in configs if c != baseline):
        grid = np.full((len(tasks), len(languages)), np.nan)
        for i, task in enumerate(tasks):
            for j, lang in enumerate(languages):
                diffs = [data.scores[(config, task, lang, "test", s)] -
                         data.scores[(baseline, task, lang, "test", s)]
                         for s in data.seeds(config, task)
                         if (baseline, task, lang, "test", s) in data.scores
                         and (config, task, lang, "test", s) in data.scores]
                if diffs:
                    grid[i, j] = fmean(diffs)
                    delta_rows.append([config, task, lang, f"{grid[i, j]:.4f}", str(len(diffs))])
        heat[config] = grid
    csvs = {"deltas.csv": _csv(["config", "task", "language", "delta_vs_baseline", "n"],
                               delta_rows)}
    if not heat:
        return [], csvs, {}
    md = ["## Per-language deltas against the baseline", "",
          f"![deltas](deltas.png) (test; mean over seeds of config − {baseline}, same seed; "
          f"numbers in deltas.csv)", ""]
    return md, csvs, {"deltas.png": heatmap_png(heat, tasks, languages, baseline)}


# ------------------------------------------------------------------------------ comparisons
def comparison_pairs(meta: Mapping[str, Any], configs: Sequence[str]
                     ) -> list[tuple[str, str]]:
    """The primary pair first (``primary_comparison``, else english/multilingual_config),
    then ``more_comparisons``; duplicates and pairs with an unknown config left out."""
    primary = meta.get("primary_comparison") or [meta.get("english_config"),
                                                 meta.get("multilingual_config")]
    pairs = [tuple(primary), *(tuple(p) for p in meta.get("more_comparisons") or ())]
    return [p for p in dict.fromkeys(pairs)
            if len(p) == 2 and p[0] in configs and p[1] in configs]


def _delta(row: Row) -> str:
    return f"{row.interval.estimate:+.2f}" if row.interval is not None else "–"


def _ci(row: Row) -> str:
    if row.interval is None:
        return row.note or "incomplete"
    text = row.interval.text()
    return text if row.interval.supported or not row.note else f"{text}: {row.note}"


def _interval_cells(row: Row) -> list[str]:
    p = row.interval.p if row.interval is not None else None
    adjusted = {"primary": "(primary)", "sensitivity": "(sensitivity)"}.get(row.family,
                                                                           _p(row.p_holm))
    return [_fmt(row.a), _fmt(row.b), _delta(row), _ci(row), _p(p), adjusted]


def _rows_table(rows: Sequence[Row], first: str, name, pair: tuple[str, str]) -> str:
    a, b = pair
    return _md_table([first, "languages", a, b, f"Δ ({b} − {a})", "95% CI", "p", "p (Holm)"],
                     [[name(r), " ".join(r.languages), *_interval_cells(r)] for r in rows])


def _pair_section(pair: tuple[str, str], rows: Sequence[Row], number: int
                  ) -> tuple[list[str], str, bytes | None]:
    a, b = pair
    stem = "tiers" if number == 0 else f"tiers_{a}_vs_{b}"
    mine = [r for r in rows if r.pair == pair]

    def of(level: str) -> list[Row]:
        return [r for r in mine if r.level == level]

    md = [f"## English-only ({a}) vs multilingual ({b}) intermediate training", "",
          _rows_table(of("all") + of("tier"), "tier",
                      lambda r: "**all**" if r.level == "all" else r.tier, pair), ""]
    if of("tier x task"):
        md += ["Per task within each tier:", "",
               _rows_table(of("tier x task"), "tier / task", lambda r: f"{r.tier} / {r.task}",
                           pair), ""]
    if of("tier x seen"):
        md += [f"Language in the intermediate data of {a} or {b} (seen) or not (unseen), per "
               f"tier:", "",
               _rows_table(of("tier x seen"), "tier / covariate",
                           lambda r: f"{r.tier} / {r.group}", pair), ""]
    if of("language"):
        md += ["Low-resource languages singled out:", "",
               _rows_table(of("language"), "language", lambda r: r.languages[0], pair), ""]
    if of("boundary"):
        md += ["Tier-boundary sensitivity (tiers recomputed with the languages on the cut "
               "moved; not part of the tested family):", "",
               _rows_table(of("boundary"), "tier", lambda r: r.tier, pair), ""]
    plot = [(r.tier, r.a, r.b, r.interval) for r in of("tier")]
    png = tiers_png(plot, a, b) if plot else None
    if png is not None:
        md += [f"![tiers]({stem}.png)", ""]
    csv_rows = [[r.level, r.tier, r.task, r.group, " ".join(r.languages), _num(r.a.mean),
                 _num(r.a.std), _num(r.b.mean), _num(r.b.std),
                 *_interval_numbers(r)] for r in mine]
    return md, _csv(_COMPARISON_HEADER[2:], csv_rows), png


_COMPARISON_HEADER = ["english", "multilingual", "level", "tier", "task", "covariate",
                      "languages", "english_mean", "english_std", "multilingual_mean",
                      "multilingual_std", "delta", "ci_low", "ci_high", "se", "runs", "p",
                      "p_holm", "family", "note"]


def _interval_numbers(r: Row) -> list[Any]:
    i = r.interval
    if i is None:
        return ["", "", "", "", "", "", "", r.family, r.note]
    return [_num(i.estimate), _num(i.low), _num(i.high), _num(i.se), i.runs, _num(i.p),
            _num(r.p_holm), r.family, r.note]


def _method_note(data: RunData, primary: Row | None, family: int) -> list[str]:
    runs = ("one intermediate run per config shared by every phase-2 seed, so there is one "
            "independent unit per arm and no interval (n/a): the run-to-run variance of "
            "intermediate training cannot be estimated" if data.shared_intermediate else
            "intermediate training repeated per seed, so seed k of one arm is paired with seed "
            "k of the other")
    lines = [
        "Δ is the second config minus the first on the same (task, language, seed) cells. "
        f"Units: {runs}. The 95% interval is a hierarchical paired bootstrap: runs crossed with "
        "the test examples of each language (the same example resamples in both arms and every "
        "run, one resample for all languages of a parallel test set), each metric recomputed "
        "from per-example statistics; SE² = s²/K over the K paired runs (the run-level "
        "bootstrap variance with the K/(K−1) correction) + the variance of example resampling "
        "shared by the runs; interval Δ ± t(K−1) SE, p two-sided from the same t; an interval "
        f"needs at least 2 paired runs. Tier rows: {TIER_WEIGHTING}; the all-languages row is "
        "XTREME's mean over tasks of means over languages. Retrieval rows have no example "
        "statistics (run level only).",
    ]
    if primary is not None:
        what = f"pooled {primary.tier} tier" if primary.tier else "all languages"
        lines.append(f"Primary (pre-specified, unadjusted): {primary.pair[1]} − "
                     f"{primary.pair[0]}, {what} (rows repeating it are marked primary too). Holm "
                     f"family: the {family} other distinct differences with a p-value, every "
                     f"comparison together (a row repeating another's cells and weights counts "
                     f"once); tier-boundary rows are a sensitivity check outside it.")
    return lines


def comparisons(data: RunData, configs: Sequence[str], *, resamples: int
                ) -> tuple[list[str], dict[str, str], dict[str, bytes]]:
    pairs = comparison_pairs(data.meta, configs)
    if not pairs:
        return [], {}, {}
    comparer = rt.Comparer(data, resamples=resamples)
    boundary = data.meta.get("tier_boundary") or rt.DEFAULT_TIER_BOUNDARY
    rows: list[Row] = []
    for a, b in pairs:
        rows += rt.comparison_rows(data, comparer, a, b,
                                   low_resource=data.meta.get("low_resource") or (),
                                   boundary=boundary)
    primary = rt.primary_row(rows, pairs[0], data.meta.get("primary_tier", "low"))
    rows = rt.adjust(rows, primary)
    head = rows[primary] if primary is not None else None
    family = rt.family_size(rows)
    md: list[str] = []
    if head is not None:
        what = f"pooled {head.tier} tier" if head.tier else "all languages"
        md += ["## Primary result", "",
               f"{head.pair[1]} − {head.pair[0]}, {what}: Δ = {_delta(head)}, 95% CI "
               f"{_ci(head)}, p = {_p(head.interval.p if head.interval else None)} "
               f"(unadjusted; {_fmt(head.b)} vs {_fmt(head.a)}).", ""]
    csvs, pngs = {}, {}
    for number, pair in enumerate(pairs):
        section, csv_text, png = _pair_section(pair, rows, number)
        stem = "tiers" if number == 0 else f"tiers_{pair[0]}_vs_{pair[1]}"
        md += section
        csvs[f"{stem}.csv"] = csv_text
        if png is not None:
            pngs[f"{stem}.png"] = png
    if len(pairs) > 1:
        md += _summary_section(rows, pairs)
    md += [line for note in _method_note(data, head, family) for line in (note, "")]
    csvs["comparisons.csv"] = _csv(_COMPARISON_HEADER, [
        [*r.pair, r.level, r.tier, r.task, r.group, " ".join(r.languages), _num(r.a.mean),
         _num(r.a.std), _num(r.b.mean), _num(r.b.std), *_interval_numbers(r)] for r in rows])
    return md, csvs, pngs


def _summary_section(rows: Sequence[Row], pairs: Sequence[tuple[str, str]]) -> list[str]:
    tiers = [t for t in rt.TIER_ORDER if any(r.level == "tier" and r.tier == t for r in rows)]
    table = []
    for pair in pairs:
        by_tier = {r.tier: r for r in rows if r.pair == pair and r.level == "tier"}
        table.append([*pair, *(f"{_delta(by_tier[t])} {_ci(by_tier[t])}" if t in by_tier
                               else "–" for t in tiers)])
    return ["## Every English-only vs multilingual pair", "",
            _md_table(["English-only", "multilingual", *(f"Δ {t} [95% CI]" for t in tiers)],
                      table), ""]


# ------------------------------------------------------------------------- chance, missing
def _chance_section(data: RunData, configs: Sequence[str], tasks: Sequence[str]) -> list[str]:
    if not any(k[0] == CHANCE for k in data.scores):
        return []
    failures, checked = [], 0
    for config in configs:
        for task in tasks:
            for lang in data.languages(task):
                if lang == "en":
                    continue
                ours = [data.scores[(config, task, lang, "test", s)]
                        for s in sorted(data.cell_seeds.get((config, task, lang, "test"), ()))]
                base = [data.scores[(CHANCE, task, lang, "test", s)]
                        for s in sorted(data.cell_seeds.get((CHANCE, task, lang, "test"), ()))]
                if ours and base:
                    checked += 1
                    if fmean(ours) <= fmean(base):
                        failures.append(f"{config}/{task}/{lang} "
                                        f"({fmean(ours):.1f} <= {fmean(base):.1f})")
    verdict = ("every one beats chance" if not failures else
               f"{len(failures)} do not: " + "; ".join(failures))
    return ["## Chance check", "",
            f"Non-English (config, task, language) test means over seeds checked against the "
            f"chance level: {checked}; {verdict}.", ""]


def _missing_section(data: RunData, configs: Sequence[str], tasks: Sequence[str]) -> list[str]:
    lines = []
    for task in tasks:
        for config in configs:
            absent = [lang for lang in data.languages(task)
                      if (config, task, lang, "test") not in data.cell_seeds]
            if len(absent) == len(data.languages(task)) or not data.languages(task):
                why = "; the driver writes no BUCC row when its test gold is absent" \
                    if "bucc" in task else ""
                lines.append(f"- {config}/{task}: missing (no test score{why})")
            elif absent:
                lines.append(f"- {config}/{task}: no test score for {', '.join(absent)}")
    if not lines:
        return []
    return ["## Missing scores", "", "Tasks and languages without a test score (shown as "
            "missing or incomplete in the tables, never dropped from an average):", "", *lines,
            ""]


# ----------------------------------------------------------------------------------- build
def budget_section(budgets: Sequence[Mapping[str, Any]]) -> tuple[list[str], str]:
    """Markdown and CSV of what each intermediate config trained on (from budget.json)."""
    table = rt.budget_table(budgets)
    if not table:
        return [], ""
    md = ["## Intermediate-training budget per arm", "",
          "| config | runs | steps | batch | tokens (est.) | examples seen per language | budget |",
          "|---|---|---|---|---|---|---|"]
    rows = []
    for t in table:
        seen = ", ".join(f"{lang} {n:,.0f}" for lang, n in t["examples"].items())
        md.append(f"| {t['config']} | {t['runs']} | {t['steps']:,.0f} | {t['batch_size']} | "
                  f"{t['tokens']:,.0f} | {seen} | {t['budget']} |")
        rows += [[t["config"], lang, t["steps"], t["batch_size"], n]
                 for lang, n in t["examples"].items()]
    md += ["", "Examples seen = steps drawn for each task x batch (one task per step), mean "
           "over the config's phase-1 runs; tokens (est.) = examples seen x each task's mean "
           "real tokens per feature. With the equal-steps budget a multilingual config "
           "trains for the steps of the English-only config it is compared with.", ""]
    return md, _csv(["config", "language", "steps", "batch_size", "examples"], rows)


def ours_section(ours: Mapping[str, Sequence[str]]) -> list[str]:
    """One line naming the tasks read from translations of ours (``rt.ours_tasks``)."""
    if not ours:
        return []
    models = sorted({m for found in ours.values() for m in found})
    return [f"Translations of ours (`python -m xstilts.translate`, not an official release) "
            f"were read for: {', '.join(ours)}; model: {'; '.join(models) or 'not recorded'} "
            f"(every file's source: `data_manifest.json`).", ""]


HIDDEN_SETTINGS = ("model", "tokenizer", "weights", "data", "phase")  # long or shown elsewhere


def _setting(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|")


def settings_section(meta: Mapping[str, Any]) -> list[str]:
    """Every cell's own settings and fingerprint (``experiment.json``'s ``cells``), with the
    differences of cells kept from an earlier run (``--on_change=keep``)."""
    cells = meta.get("cells") or []
    if not cells:
        return []
    model = meta.get("model") or {}
    shown = ", ".join(f"{k} {model[k]}" for k in ("hidden_size", "num_hidden_layers",
                                                  "num_attention_heads", "vocab_size")
                      if k in model)
    md = ["## Cell settings", "",
          f"Every cell this report summarises, with its own settings and the sha256 "
          f"fingerprint of all its settings (model: {shown or 'see experiment.json'}; the "
          f"model config, tokenizer, initial weights and the sha256 of every data file read "
          f"are in `experiment.json` and each cell's `cell_settings.json`). `from`: the cell "
          f"whose checkpoint it starts from, whose settings are part of its fingerprint.", ""]
    kept = [c for c in cells if c.get("kept")]
    if kept:
        md += [f"**{len(kept)} cell(s) were kept from an earlier run with other settings** "
               f"(`--on_change=keep`): their rows are what those settings gave; the "
               f"differences from the last run's settings are listed.", ""]
    md += ["| cell | from | fingerprint | settings | note |", "|---|---|---|---|---|"]
    for c in cells:
        own = ", ".join(f"{k} {_setting(v)}" for k, v in sorted(c["settings"].items())
                        if k not in HIDDEN_SETTINGS and v is not None)
        note = "kept: " + "; ".join(c["kept"]) if c.get("kept") else ""
        md.append(f"| {c['cell']} | {c.get('from') or ''} | {c['fingerprint'][:12]} | "
                  f"{own} | {_setting(note)} |")
    return [*md, ""]


def build_report(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any],
                 example_stats: Mapping[rt.Key, np.ndarray] | None = None, *,
                 resamples: int = 2000, budgets: Sequence[Mapping[str, Any]] = (),
                 data_records: Sequence[Mapping[str, Any]] = ()
                 ) -> tuple[str, dict[str, str], dict[str, bytes]]:
    """(markdown, {csv name: text}, {png name: bytes}); ``data_records``: the run's
    ``data_manifest.json`` records (the tasks of our translations are named)."""
    data = rt.run_data(rows, meta, example_stats)
    configs, tasks = data.configs, data.tasks
    md: list[str] = ["# X-STILTs experiment report", ""]
    selection = meta.get("selection")
    if selection:
        where = {"english_dev": "the English train task's dev set"}.get(
            selection, selection.replace("_", " "))
        md += [f"Checkpoints selected on {where} by each task's official "
               f"metric; target-language dev and test are scored, never used to select.", ""]
    test_md, test_csv = _table_section(data, configs, tasks, "test")
    md += [*test_md, _metric_note(data, tasks), ""]
    csvs: dict[str, str] = {"xtreme_table.csv": test_csv}
    pngs: dict[str, bytes] = {}
    dev_tasks = [t for t in tasks if data.has_split(t, "dev")]
    if dev_tasks:
        dev_md, csvs["xtreme_table_dev.csv"] = _table_section(data, configs, dev_tasks, "dev")
        no_dev = [t for t in tasks if t not in dev_tasks]
        md += [*dev_md, f"Tasks without a dev split (not in this table): "
               f"{', '.join(no_dev) or 'none'}; its score is the mean over the tasks shown.", ""]
    selection_md, selection_csv = _selection_section(data, configs)
    if selection_md:
        md += selection_md
        csvs["selection.csv"] = selection_csv
    delta_md, delta_csvs, delta_pngs = _deltas_section(data, configs, tasks)
    md += delta_md
    csvs |= delta_csvs
    pngs |= delta_pngs
    budget_md, budget_csv = budget_section(budgets)
    if budget_md:
        md += budget_md
        csvs["budget.csv"] = budget_csv
    md += ours_section(rt.ours_tasks(data_records))
    compare_md, compare_csvs, compare_pngs = comparisons(data, configs, resamples=resamples)
    md += compare_md
    csvs |= compare_csvs
    pngs |= compare_pngs
    md += _chance_section(data, configs, tasks)
    md += _missing_section(data, configs, tasks)
    md += settings_section(meta)
    return "\n".join(md), csvs, pngs


# ------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def heatmap_png(heat: Mapping[str, np.ndarray], tasks: Sequence[str],
                languages: Sequence[str], baseline: str) -> bytes:
    plt = _pyplot()
    finite = [np.abs(g[np.isfinite(g)]).max() for g in heat.values() if np.isfinite(g).any()]
    limit = max(max(finite, default=1.0), 1e-6)
    fig, axes = plt.subplots(1, len(heat), figsize=(2.5 + 0.8 * len(languages) * len(heat),
                                                    1.2 + 0.55 * len(tasks)), squeeze=False,
                             sharey=True)
    image = None
    for ax, (config, grid) in zip(axes[0], heat.items(), strict=True):
        image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(languages)), languages)
        if ax is axes[0][0]:
            ax.set_yticks(range(len(tasks)), tasks)
        ax.set_title(f"{config} − {baseline}", fontsize=10)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:+.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="Δ score (points)")
    data = _png(fig)
    plt.close(fig)
    return data


def tiers_png(plot: Sequence[tuple], english: str, multi: str) -> bytes:
    """Left: tier scores (mean ± sample std over seeds); right: Δ with its interval (a point
    without bars where the runs do not support an interval)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = [p[0] for p in plot]
    x = np.arange(len(names))
    for offset, index, label in ((-0.2, 1, english), (0.2, 2, multi)):
        means = [p[index].mean if p[index].mean is not None else np.nan for p in plot]
        stds = [p[index].std or 0.0 for p in plot]
        left.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=label)
    left.set_xticks(x, names)
    left.set_ylabel("tier score (mean ± sample std)")
    left.legend(fontsize=8)
    for i, (_, _, _, interval) in enumerate(plot):
        if interval is None:
            continue
        errors = [[interval.estimate - interval.low], [interval.high - interval.estimate]] \
            if interval.supported else None
        right.errorbar([i], [interval.estimate], yerr=errors, fmt="o", capsize=4, color="C0")
    right.axhline(0, color="grey", linewidth=0.8)
    right.set_xticks(x, names)
    right.set_ylabel(f"{multi} − {english} (95% CI)")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


# ------------------------------------------------------------------------------------- entry
def write_report(run_dir: str | os.PathLike, *, resamples: int = 2000) -> str:
    """Write ``run_dir/report/`` and return the markdown (in a multi-process run every process
    returns it, only the chief, process 0, writes the files)."""
    rows, meta, example_stats = rt.load(run_dir)
    text, csvs, pngs = build_report(rows, meta, example_stats, resamples=resamples,
                                    budgets=rt.read_budgets(run_dir),
                                    data_records=rt.read_data_records(run_dir))
    if "jax" in sys.modules and sys.modules["jax"].process_index() != 0:
        return text
    out = location(run_dir) / "report"
    for name, data in {**csvs, **pngs}.items():
        _atomic(out / name, data)
    _atomic(out / "report.md", text + "\n")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xstilts.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="an experiment run directory (holds results.jsonl)")
    parser.add_argument("--resamples", type=int, default=2000,
                        help="example resamples of the bootstrap (default 2000)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(write_report(args.run_dir, resamples=args.resamples))
    print(f"\nwritten to {location(args.run_dir) / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
