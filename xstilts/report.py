"""The experiment report: ``python -m xstilts.report RUN_DIR`` (markdown, CSV and PNG plots).

Reads ``RUN_DIR/results.jsonl`` (the tidy table of ``xstilts.experiment``) and
``RUN_DIR/experiment.json`` and writes ``RUN_DIR/report/``:

* ``report.md``: the XTREME-style table (rows = intermediate configurations, columns = tasks
  and the score, mean ± std over seeds) with the chance level of each task; the answer to the
  research question (English-only versus multilingual intermediate training per resource tier:
  mean ± std over seeds and the paired bootstrap 95% interval of the difference), with the
  low-resource languages singled out; and a check that every non-English score beats chance.
* ``xtreme_table.csv``, ``tiers.csv``, ``deltas.csv``: the same numbers, machine-readable.
* ``deltas.png``: heatmap of per-language deltas against the baseline (one panel per config);
  ``tiers.png``: English-only vs multilingual per tier with the bootstrap intervals.

Aggregation follows XTREME (``xstilts.evals.xtreme_score``): a language's number is the task's
primary metric ((EM + F1) / 2 for QA, F1 for tagging and BUCC, else accuracy), a task score is
the unweighted mean over its languages, the score the mean over tasks; a tier's score is the
mean over tasks of each task's mean over its languages in the tier (``tier_averages``).
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

CHANCE = "chance"
Key = tuple[str, str, str, int]  # (config, task, language, seed)


# ----------------------------------------------------------------------------------- loading
def load(run_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from xstilts.experiment import read_rows

    run_dir = Path(run_dir)
    results, meta_path = run_dir / "results.jsonl", run_dir / "experiment.json"
    for path in (results, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {run_dir} a finished experiment run "
                                    f"(python -m xstilts.experiment)?")
    return read_rows(results), json.loads(meta_path.read_text(encoding="utf-8"))


def language_scores(rows: Sequence[Mapping[str, Any]], primary: Mapping[str, str]
                    ) -> dict[Key, float]:
    """One number per (config, task, language, seed): the task's primary metric on test."""
    by_key: dict[Key, dict[str, float]] = {}
    for r in rows:
        if r["split"] != "test":
            continue
        key = (r["config"], r["task"], r["language"], int(r["seed"]))
        by_key.setdefault(key, {})[r["metric"]] = float(r["value"])
    out = {}
    for key, values in by_key.items():
        metric = primary.get(key[1], "accuracy")
        if metric == "em_f1":
            if "exact_match" in values and "f1" in values:
                out[key] = (values["exact_match"] + values["f1"]) / 2
        elif metric in values:
            out[key] = values[metric]
    return out


def tier_of(language: str, tiers: Mapping[str, str]) -> str:
    if language in tiers:
        return tiers[language]
    from xstilts.evals import xtreme_score

    try:
        return xtreme_score.language(language).tier
    except ValueError:
        return "unknown"


# ------------------------------------------------------------------------------- aggregation
def task_means(scores: Mapping[Key, float], config: str, seed: int,
               languages: set[str] | None = None) -> dict[str, float]:
    """Task -> mean over its languages (optionally only ``languages``) for one config and seed."""
    per_task: dict[str, list[float]] = {}
    for (c, task, lang, s), value in scores.items():
        if c == config and s == seed and (languages is None or lang in languages):
            per_task.setdefault(task, []).append(value)
    return {task: fmean(values) for task, values in per_task.items()}


def seeds_of(scores: Mapping[Key, float], config: str) -> list[int]:
    return sorted({s for (c, _, _, s) in scores if c == config})


def xtreme_table(scores: Mapping[Key, float], configs: Sequence[str], tasks: Sequence[str]
                 ) -> dict[str, dict[str, tuple[float, float]]]:
    """config -> {task | "score": (mean, std) over seeds}; a seed's score: its task mean."""
    table = {}
    for config in configs:
        per_seed = {s: task_means(scores, config, s) for s in seeds_of(scores, config)}
        row: dict[str, tuple[float, float]] = {}
        for task in tasks:
            values = [m[task] for m in per_seed.values() if task in m]
            if values:
                row[task] = (fmean(values), float(np.std(values)))
        # A task scored on fewer seeds (retrieval comes from phase 1, trained once unless
        # intermediate_per_seed) enters every seed's score with its mean over its seeds.
        seed_scores = [fmean(m[t] if t in m else row[t][0] for t in tasks)
                       for m in per_seed.values()] if all(t in row for t in tasks) else []
        if seed_scores:
            row["score"] = (fmean(seed_scores), float(np.std(seed_scores)))
        table[config] = row
    return table


def tier_scores(scores: Mapping[Key, float], config: str, tiers: Mapping[str, str]
                ) -> dict[str, list[float]]:
    """tier -> the tier score of each seed (mean over tasks of the task's mean in the tier)."""
    languages = {lang for (_, _, lang, _) in scores}
    out: dict[str, list[float]] = {}
    for tier in sorted({tier_of(lang, tiers) for lang in languages}):
        members = {lang for lang in languages if tier_of(lang, tiers) == tier}
        per_seed = [task_means(scores, config, seed, members)
                    for seed in seeds_of(scores, config)]
        everywhere: dict[str, list[float]] = {}
        for means in per_seed:
            for task, value in means.items():
                everywhere.setdefault(task, []).append(value)
        # A task scored on fewer seeds enters every seed with its mean (as in xtreme_table).
        filled = [{t: m.get(t, fmean(v)) for t, v in everywhere.items()} for m in per_seed]
        values = [fmean(m.values()) for m in filled if m]
        if values:
            out[tier] = values
    return out


def paired_differences(scores: Mapping[Key, float], a: str, b: str,
                       languages: set[str] | None = None) -> dict[str, np.ndarray]:
    """task -> ``b - a`` for every (language, seed) both configs have (optionally restricted)."""
    out: dict[str, list[float]] = {}
    for (config, task, lang, seed), value in sorted(scores.items()):
        if config != a or (languages is not None and lang not in languages):
            continue
        other = scores.get((b, task, lang, seed))
        if other is not None:
            out.setdefault(task, []).append(other - value)
    return {task: np.asarray(d) for task, d in out.items()}


def paired_bootstrap(differences: Mapping[str, np.ndarray] | np.ndarray, *,
                     resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
                     ) -> tuple[float, float, float]:
    """Estimate and percentile bootstrap interval of a mean of paired differences.

    ``differences`` is one array of per-unit differences (``b - a`` on the same unit), or a
    mapping stratum -> array: then the statistic is the mean over strata of the within-stratum
    means (XTREME's mean over tasks of means over languages) and units are resampled with
    replacement within their stratum, so every resample keeps every task.
    """
    strata = {"": np.asarray(differences)} if not isinstance(differences, Mapping) else \
        {k: np.asarray(v, float) for k, v in differences.items()}
    strata = {k: v for k, v in strata.items() if v.size}
    if not strata:
        raise ValueError("paired_bootstrap: no paired differences")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: expected a number in (0, 1)")
    rng = np.random.default_rng(seed)
    estimate = float(fmean(float(v.mean()) for v in strata.values()))
    stats = np.zeros(resamples)
    for values in strata.values():
        picks = rng.integers(0, values.size, size=(resamples, values.size))
        stats += values[picks].mean(axis=1)
    stats /= len(strata)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return estimate, float(low), float(high)


# ----------------------------------------------------------------------------------- report
def _fmt(mean_std: tuple[float, float] | None) -> str:
    if mean_std is None:
        return "–"
    mean, std = mean_std
    return f"{mean:.1f} ± {std:.1f}"


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


def _atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def compare_pair(scores: Mapping[Key, float], english: str, multi: str,
                 tiers: Mapping[str, str], low: Sequence[str]
                 ) -> tuple[list[str], str, bytes | None, dict[str, tuple[float, float, float]]]:
    """The research question for one (English-only, multilingual) pair: markdown lines, the
    tiers CSV, the tiers plot (None without tiers) and {tier: (Δ, CI low, CI high)}."""
    md = [f"## English-only ({english}) vs multilingual ({multi}) intermediate training", ""]
    tier_rows, csv_rows, plot = [], [], []
    deltas: dict[str, tuple[float, float, float]] = {}
    en_tiers, multi_tiers = tier_scores(scores, english, tiers), tier_scores(scores, multi, tiers)
    all_langs = {k[2] for k in scores}
    order = [t for t in ("high", "medium", "low", "unseen", "unknown")
             if t in en_tiers or t in multi_tiers]
    for tier in order:
        members = {lang for lang in all_langs if tier_of(lang, tiers) == tier}
        diffs = paired_differences(scores, english, multi, members)
        if not diffs:
            continue
        estimate, lo, hi = paired_bootstrap(diffs)
        deltas[tier] = (estimate, lo, hi)
        e, m = en_tiers.get(tier, []), multi_tiers.get(tier, [])
        e_ms = (fmean(e), float(np.std(e))) if e else None
        m_ms = (fmean(m), float(np.std(m))) if m else None
        tier_rows.append([tier, " ".join(sorted(members)), _fmt(e_ms), _fmt(m_ms),
                          f"{estimate:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]",
                          "yes" if lo > 0 or hi < 0 else "no"])
        csv_rows.append(["tier", tier, e_ms[0] if e_ms else "", e_ms[1] if e_ms else "",
                         m_ms[0] if m_ms else "", m_ms[1] if m_ms else "", estimate, lo, hi])
        plot.append((tier, e_ms, m_ms, estimate, lo, hi))
    md += [_md_table(["tier", "languages", f"{english}", f"{multi}", "Δ (multi − en)",
                      "95% CI (paired bootstrap)", "excludes 0"], tier_rows), ""]
    low_rows = []
    for lang in low:
        diffs = paired_differences(scores, english, multi, {lang})
        if not diffs:
            continue
        estimate, lo, hi = paired_bootstrap(diffs)
        only = {k: v for k, v in scores.items() if k[2] == lang}
        e = tier_scores(only, english, {lang: lang})[lang]
        m = tier_scores(only, multi, {lang: lang})[lang]
        low_rows.append([lang, _fmt((fmean(e), float(np.std(e)))),
                         _fmt((fmean(m), float(np.std(m)))), f"{estimate:+.2f}",
                         f"[{lo:+.2f}, {hi:+.2f}]"])
        csv_rows.append(["language", lang, fmean(e), float(np.std(e)), fmean(m),
                         float(np.std(m)), estimate, lo, hi])
    if low_rows:
        md += ["Low-resource languages singled out:", "",
               _md_table(["language", english, multi, "Δ (multi − en)", "95% CI"], low_rows),
               ""]
    md += ["Tier score = mean over tasks of the task's mean over the tier's languages, per "
           "seed (mean ± std over seeds). Δ is multilingual − English-only on the same "
           "(task, language, seed) units; its 95% interval is a percentile bootstrap "
           "(10,000 resamples of the units within each task, paired).", ""]
    csv_text = _csv(["level", "name", "english_mean", "english_std", "multilingual_mean",
                     "multilingual_std", "delta", "ci_low", "ci_high"], csv_rows)
    png = tiers_png(plot, english, multi) if plot else None
    if png is not None:
        md += ["![tiers](tiers.png)", ""]
    return md, csv_text, png, deltas


def build_report(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
                 ) -> tuple[str, dict[str, str], dict[str, bytes]]:
    """(markdown, {csv name: text}, {png name: bytes})."""
    primary = meta.get("primary_metric", {})
    scores = language_scores(rows, primary)
    configs = [c for c in meta["configs"] if any(k[0] == c for k in scores)]
    tasks = [t for t in [*meta.get("targets", []), *meta.get("retrieval", [])]
             if any(k[1] == t for k in scores)]
    baseline = meta.get("baseline")
    tiers = meta.get("tiers") or {}
    english, multi = meta.get("english_config"), meta.get("multilingual_config")
    low = list(meta.get("low_resource") or [])
    md: list[str] = ["# X-STILTs experiment report", ""]
    csvs: dict[str, str] = {}
    pngs: dict[str, bytes] = {}

    # XTREME table ---------------------------------------------------------------------------
    table = xtreme_table(scores, configs, tasks)
    chance = xtreme_table(scores, [CHANCE], tasks).get(CHANCE, {})
    header = ["config", *tasks, "score"]
    md_rows = [[c, *(_fmt(table[c].get(t)) for t in [*tasks, "score"])] for c in configs]
    if chance:
        chance_score = fmean(chance[t][0] for t in tasks) if all(t in chance for t in tasks) \
            else None
        md_rows.append([f"*{CHANCE}*", *(f"*{chance[t][0]:.1f}*" if t in chance else "–"
                                         for t in tasks),
                        f"*{chance_score:.1f}*" if chance_score is not None else "–"])
    seeds = sorted({k[3] for k in scores if k[0] != CHANCE})
    metric_names = ", ".join(f"{t}: {primary.get(t, 'accuracy')}" for t in tasks)
    md += ["## XTREME-style table (zero-shot test, mean ± std over seeds "
           f"{', '.join(map(str, seeds))})", "",
           _md_table(header, md_rows), "",
           f"Metrics (x100): {metric_names} (em_f1 = (EM + F1) / 2). Each task score is the "
           f"unweighted mean over its languages; score = mean over tasks. The *{CHANCE}* row "
           f"is the chance level: a predictor that ignores its input (majority English-train "
           f"label or tag, a random context word for QA, 1/N for Tatoeba-style retrieval, no "
           f"pairs for BUCC-style mining).{_retrieval_recipe(meta)}", ""]
    csvs["xtreme_table.csv"] = _csv(
        ["config", "task", "mean", "std"],
        [[c, t, f"{table[c][t][0]:.4f}", f"{table[c][t][1]:.4f}"]
         for c in configs for t in [*tasks, "score"] if t in table[c]]
        + [[CHANCE, t, f"{chance[t][0]:.4f}", "0"] for t in tasks if t in chance])

    # per-language deltas --------------------------------------------------------------------
    delta_rows = []
    languages = sorted({k[2] for k in scores}, key=lambda x: (x != "en", x))
    heat: dict[str, np.ndarray] = {}
    if baseline in configs:
        for config in configs:
            if config == baseline:
                continue
            grid = np.full((len(tasks), len(languages)), np.nan)
            for i, task in enumerate(tasks):
                for j, lang in enumerate(languages):
                    diffs = paired_differences(scores, baseline, config, {lang}).get(task)
                    if diffs is not None and diffs.size:
                        grid[i, j] = float(diffs.mean())
                        delta_rows.append([config, task, lang, f"{grid[i, j]:.4f}",
                                           str(diffs.size)])
            heat[config] = grid
        csvs["deltas.csv"] = _csv(["config", "task", "language", "delta_vs_baseline", "n"],
                                  delta_rows)
        if heat:
            pngs["deltas.png"] = heatmap_png(heat, tasks, languages, baseline)
            md += ["## Per-language deltas against the baseline", "",
                   f"![deltas](deltas.png) (mean over seeds of config − {baseline}, same seed; "
                   f"numbers in deltas.csv)", ""]

    # the research question -------------------------------------------------------------------
    pairs = [(english, multi), *(tuple(pair) for pair in meta.get("more_comparisons") or ())]
    pairs = [pair for pair in dict.fromkeys(pairs) if pair[0] in configs and pair[1] in configs]
    summary = []
    for number, (english, multi) in enumerate(pairs):
        section, csv_text, png, tier_deltas = compare_pair(scores, english, multi, tiers, low)
        stem = "tiers" if number == 0 else f"tiers_{english}_vs_{multi}"
        md += [line.replace("](tiers.png)", f"]({stem}.png)") for line in section]
        csvs[f"{stem}.csv"] = csv_text
        if png is not None:
            pngs[f"{stem}.png"] = png
        summary.append((english, multi, tier_deltas))
    if len(summary) > 1:
        order = [t for t in ("high", "medium", "low", "unseen", "unknown")
                 if any(t in deltas for *_, deltas in summary)]
        md += ["## Every English-only vs multilingual pair", "",
               _md_table(["English-only", "multilingual", *(f"Δ {t} [95% CI]" for t in order)],
                         [[e, m, *(f"{d[t][0]:+.2f} [{d[t][1]:+.2f}, {d[t][2]:+.2f}]"
                                   if t in d else "–" for t in order)]
                          for e, m, d in summary]), ""]

    # chance check ---------------------------------------------------------------------------
    if chance:
        failures, checked = [], 0
        for config in configs:
            for task in tasks:
                for lang in languages:
                    if lang == "en":
                        continue
                    ours = [v for (c, t, la, _), v in scores.items()
                            if c == config and t == task and la == lang]
                    base = [v for (c, t, la, _), v in scores.items()
                            if c == CHANCE and t == task and la == lang]
                    if ours and base:
                        checked += 1
                        if fmean(ours) <= fmean(base):
                            failures.append(f"{config}/{task}/{lang} "
                                            f"({fmean(ours):.1f} <= {fmean(base):.1f})")
        verdict = ("every one beats chance" if not failures else
                   f"{len(failures)} do not: " + "; ".join(failures))
        md += ["## Chance check", "",
               f"Non-English (config, task, language) means over seeds checked against the "
               f"chance level: {checked}; {verdict}.", ""]
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
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = [p[0] for p in plot]
    x = np.arange(len(names))
    for offset, index, label in ((-0.2, 1, english), (0.2, 2, multi)):
        means = [p[index][0] if p[index] else np.nan for p in plot]
        stds = [p[index][1] if p[index] else 0 for p in plot]
        left.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=label)
    left.set_xticks(x, names)
    left.set_ylabel("tier score (mean ± std over seeds)")
    left.legend(fontsize=8)
    estimates = np.array([p[3] for p in plot])
    errors = np.array([[p[3] - p[4] for p in plot], [p[5] - p[3] for p in plot]])
    right.errorbar(x, estimates, yerr=errors, fmt="o", capsize=4)
    right.axhline(0, color="grey", linewidth=0.8)
    right.set_xticks(x, names)
    right.set_ylabel(f"{multi} − {english} (95% CI)")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


# ------------------------------------------------------------------------------------- entry
def write_report(run_dir: str | os.PathLike) -> str:
    """Write ``run_dir/report/`` and return the markdown (in a multi-process run every process
    returns it, only the chief, process 0, writes the files)."""
    rows, meta = load(run_dir)
    text, csvs, pngs = build_report(rows, meta)
    if "jax" in sys.modules and sys.modules["jax"].process_index() != 0:
        return text
    out = Path(run_dir) / "report"
    for name, data in {**csvs, **pngs}.items():
        _atomic(out / name, data)
    _atomic(out / "report.md", text + "\n")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xstilts.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="an experiment run directory (holds results.jsonl)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(write_report(args.run_dir))
    print(f"\nwritten to {Path(args.run_dir) / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
