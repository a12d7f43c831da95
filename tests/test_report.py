"""The report on hand-made run directories: XTREME tables on test and dev, selection on dev,
tier rows (language-weighted), the seen-in-intermediate covariate, the tier-boundary check,
intervals and Holm, missing tasks, and the files ``python -m xstilts.report`` writes."""

from __future__ import annotations

import csv
import io
import json
from statistics import fmean

import numpy as np
import pytest

from xstilts import report
from xstilts import report_tables as rt
from xstilts.evals import metrics, stats, xtreme_score


def _row(config, task, lang, value, seed, metric="accuracy", split="test"):
    return {"config": config, "task": task, "language": lang, "split": split, "metric": metric,
            "value": value, "seed": seed, "step": 10}


def _write(run_dir, rows, meta, example_stats=None):
    """A run directory as the driver writes it (results.jsonl, experiment.json, npz)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "experiment.json").write_text(json.dumps(meta))
    cells: dict = {}
    for (config, task, lang, split, seed), array in (example_stats or {}).items():
        train_task = f"{task.split('.')[-1]}_train"
        cells.setdefault((config, train_task, seed), {})[f"{task}|{lang}|{split}"] = array
    for (config, train_task, seed), arrays in cells.items():
        path = run_dir / "phase2" / config / train_task / f"seed{seed}" / "example_stats.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)


# -- a hand table: tiers and the XTREME table -----------------------------------------------
TIERS = {"en": "high", "xa": "medium", "xc": "low", "xd": "low"}


def _hand_rows():
    """Two configs, two tasks, four languages, two seeds; values chosen by hand."""
    values = {  # (config, task, lang) -> (seed 0, seed 1)
        ("en", "t1", "en"): (80, 82), ("en", "t1", "xa"): (60, 62), ("en", "t1", "xc"): (40, 44),
        ("en", "t1", "xd"): (30, 30), ("en", "t2", "en"): (70, 70), ("en", "t2", "xa"): (50, 54),
        ("en", "t2", "xc"): (20, 20),  # t2 has no xd
        ("ml", "t1", "en"): (80, 80), ("ml", "t1", "xa"): (64, 66), ("ml", "t1", "xc"): (50, 50),
        ("ml", "t1", "xd"): (40, 36), ("ml", "t2", "en"): (70, 72), ("ml", "t2", "xa"): (52, 54),
        ("ml", "t2", "xc"): (26, 30),
    }  # fmt: skip
    return [_row(c, t, lang, v[s], s) for (c, t, lang), v in values.items() for s in (0, 1)]


def _hand_meta(**extra):
    return {"configs": ["base", "en", "ml"], "baseline": "base", "english_config": "en",
            "multilingual_config": "ml", "targets": ["t1", "t2"], "retrieval": [],
            "low_resource": ["xc", "xd"], "tiers": TIERS, "primary_metric": {},
            "intermediate_per_seed": True, **extra}


def test_tier_rows_weight_languages_not_tasks():
    data = rt.run_data(_hand_rows(), _hand_meta())
    rows = rt.comparison_rows(data, rt.Comparer(data, resamples=50), "en", "ml")
    low = next(r for r in rows if r.level == "tier" and r.tier == "low")
    # Each language once: xc = mean(t1, t2), xd = t1 only. en seed 0: (mean(40, 20) + 30) / 2
    # = 30, seed 1: (mean(44, 20) + 30) / 2 = 31 (the task-weighted mean would be 27.5, 28.5).
    assert (low.a.mean, low.a.std) == pytest.approx((30.5, np.std([30, 31], ddof=1)))
    # ml: seed 0 (mean(50, 26) + 40) / 2 = 39, seed 1 (mean(50, 30) + 36) / 2 = 38
    assert low.b.mean == pytest.approx(38.5)
    assert low.interval.estimate == pytest.approx(8.0)
    assert low.languages == ("xc", "xd")
    # Run-level scores only (no example stats): SE = sample std of the two seed
    # differences (9, 7) / sqrt(2), t with 1 df.
    assert low.interval.se == pytest.approx(np.std([9, 7], ddof=1) / np.sqrt(2))
    assert low.interval.runs == 2 and low.interval.df == 1
    per_task = {r.task: r for r in rows if r.level == "tier x task" and r.tier == "low"}
    assert per_task["t2"].interval.estimate == pytest.approx(8.0)  # xc: (26-20, 30-20)
    assert per_task["t1"].interval.estimate == pytest.approx(fmean([10, 6, 10, 6]))
    everything = next(r for r in rows if r.level == "all")
    # XTREME weighting: mean over tasks of the mean over languages
    t1 = fmean([0, 4, 10, 10] + [-2, 4, 6, 6])  # seeds 0 and 1 of en, xa, xc, xd
    t2 = fmean([0, 2, 6] + [2, 0, 10])
    assert everything.interval.estimate == pytest.approx((t1 + t2) / 2)


def test_tier_rows_match_xtreme_tier_averages_on_one_seed():
    """With one task, CC-100 tiers and one seed, a tier row is xtreme_score's tier average."""
    langs = {"de": 71.0, "sw": 55.0, "ur": 60.0, "en": 88.0, "hi": 64.0}
    rows = [_row(c, "nli", lang, v + (c == "b"), 0) for c in "ab" for lang, v in langs.items()]
    meta = {"configs": ["a", "b"], "targets": ["nli"], "primary_comparison": ["a", "b"]}
    data = rt.run_data(rows, meta)
    tiers = {r.tier: r for r in rt.comparison_rows(data, rt.Comparer(data), "a", "b")
             if r.level == "tier"}
    theirs = xtreme_score.tier_averages({"nli": {lang: {"accuracy": v}
                                                 for lang, v in langs.items()}})
    assert set(tiers) == set(theirs)
    for tier, summary in theirs.items():
        assert tiers[tier].a.mean == pytest.approx(summary["mean"])
        assert tiers[tier].interval.estimate == pytest.approx(1.0)
        assert not tiers[tier].interval.supported  # one seed: n/a


def test_xtreme_table_qa_primary_and_sample_std():
    rows = [_row("a", "xq", "en", 60, 0, "exact_match"), _row("a", "xq", "en", 80, 0, "f1"),
            _row("a", "xq", "de", 40, 0, "exact_match"), _row("a", "xq", "de", 60, 0, "f1"),
            _row("a", "xq", "en", 70, 1, "exact_match"), _row("a", "xq", "en", 90, 1, "f1"),
            _row("a", "xq", "de", 50, 1, "exact_match"), _row("a", "xq", "de", 70, 1, "f1"),
            _row("a", "cls", "en", 90, 0), _row("a", "cls", "en", 80, 1)]
    meta = {"configs": ["a"], "targets": ["xq", "cls"],
            "task_metric": {"xq": "squad_em_f1", "cls": "accuracy"}}
    data = rt.run_data(rows, meta)
    table = rt.xtreme_table(data, ["a"], ["xq", "cls"], "test")["a"]
    # seed 0: xq = mean((60+80)/2, (40+60)/2) = 60; seed 1: 70 -> 65 ± sample std 7.07
    assert (table["xq"].mean, table["xq"].std) == pytest.approx((65.0, np.sqrt(50)))
    assert (table["cls"].mean, table["cls"].std) == pytest.approx((85.0, np.sqrt(50)))
    assert (table["score"].mean, table["score"].std) == pytest.approx((75.0, 0.0))
    # The old meta (primary_metric keys only) reads the same.
    old = rt.run_data(rows, {**meta, "task_metric": None, "primary_metric": {"xq": "em_f1"}})
    assert rt.xtreme_table(old, ["a"], ["xq", "cls"], "test")["a"]["score"].mean == 75.0
    # A retrieval task scored on seed 0 only (shared phase 1) enters seed 1 with its mean.
    data = rt.run_data([*rows, _row("a", "ret", "de", 30.0, 0)], meta)
    table = rt.xtreme_table(data, ["a"], ["xq", "cls", "ret"], "test")["a"]
    assert table["ret"].mean == 30.0 and table["ret"].std is None
    assert table["score"].mean == pytest.approx(60.0)


def test_a_missing_language_or_task_is_never_averaged_away():
    rows = [_row("a", "xnli", lang, 50.0, 0) for lang in xtreme_score.TASK2LANGS["xnli"]
            if lang != "sw"]
    rows += [_row("a", "tatoeba", lang, 40.0, 0) for lang in xtreme_score.TASK2LANGS["tatoeba"]]
    meta = {"configs": ["a"], "targets": ["xnli"], "retrieval": ["tatoeba", "bucc2018"]}
    data = rt.run_data(rows, meta)
    table = rt.xtreme_table(data, ["a"], data.tasks, "test")["a"]
    assert table["xnli"].mean is None and table["xnli"].note == "incomplete (14/15 languages)"
    assert table["bucc2018"].note == "missing"
    assert table["tatoeba"].mean == 40.0
    assert table["score"].mean is None
    assert table["score"].note == "incomplete (xnli, bucc2018 not scored)"
    text = report.build_report(rows, meta)[0]
    assert "| a | incomplete (14/15 languages) | 40.0 | missing | incomplete" in text
    assert "- a/bucc2018: missing (no test score; the driver writes no BUCC row when its " \
        "test gold is absent)" in text
    assert "- a/xnli: no test score for sw" in text


def test_dev_languages_are_those_with_a_dev_split():
    # UD has no dev set for kk: no config has a kk dev row, so udpos dev is complete over the
    # rest; a config missing a dev language that others have is incomplete.
    langs = xtreme_score.TASK2LANGS["udpos"]
    rows = [_row(c, "udpos", lang, 70.0 + (c == "b"), 0, "f1", split)
            for c in "ab" for lang in langs for split in ("dev", "test")
            if not (split == "dev" and lang == "kk") and not (c == "b" and lang == "de" and
                                                               split == "dev")]
    data = rt.run_data(rows, {"configs": ["a", "b"], "targets": ["udpos"],
                              "task_metric": {"udpos": "f1_seqeval"}})
    assert "kk" not in data.languages("udpos", "dev") and "kk" in data.languages("udpos")
    assert data.languages("udpos", "dev")[:3] == ["af", "ar", "bg"]  # XTREME's order
    dev = rt.xtreme_table(data, ["a", "b"], ["udpos"], "dev")
    assert dev["a"]["udpos"].mean == 70.0
    assert dev["b"]["udpos"].note == f"incomplete ({len(langs) - 2}/{len(langs) - 1} languages)"
    assert rt.xtreme_table(data, ["b"], ["udpos"], "test")["b"]["udpos"].mean == 71.0


def test_best_intermediate_is_chosen_on_dev_and_scored_on_test():
    rows = []
    for config, dev, test in (("c1", 70.0, 60.0), ("c2", 65.0, 66.0)):  # c2 is best on test
        for seed in (0, 1):
            rows += [_row(config, "t", lang, dev + seed, seed, split="dev") for lang in "xy"]
            rows += [_row(config, "t", lang, test + 2 * seed, seed) for lang in "xy"]
    rows += [_row("base", "t", lang, 99.0, 0, split=split) for lang in "xy"
             for split in ("dev", "test")]  # the baseline is not a candidate
    meta = {"configs": ["base", "c1", "c2"], "baseline": "base", "targets": ["t"]}
    data = rt.run_data(rows, meta)
    (choice,) = rt.select_on_dev(data, ["c1", "c2"], ["t"])
    assert choice.config == "c1"
    assert (choice.dev.mean, choice.test.mean) == (70.5, 61.0)
    assert choice.test.std == pytest.approx(np.sqrt(2))
    text, csvs, _ = report.build_report(rows, meta)
    assert "| t | c1 | 70.5 ± 0.7 | 61.0 ± 1.4 |  |" in text
    assert "| **score** |  |  | 61.0 |  |" in text
    assert "target-language dev, never used to select checkpoints" in text
    assert "c1,t,70.5000,0.7071,2,\n" in csvs["xtreme_table_dev.csv"]
    assert csvs["selection.csv"].splitlines()[1].startswith("t,c1,70.5000,0.7071,61.0000")


# -- a run directory with example stats ---------------------------------------------------
LANGS = {"synthetic.nli": ("en", "hi", "tr", "ur", "sw"), "synthetic.pos": ("en", "tr", "sw"),
         "synthetic.bucc": ("hi", "sw")}
GAIN = {"base": -0.3, "en": 0.0, "ml": 0.25}  # logit shift: ml better, most in seen languages
SEEN = {"base": [], "en": ["en"], "ml": ["en", "hi", "sw"]}


def _stats_for(rng, task, shift, n):
    p = 1 / (1 + np.exp(-(0.3 + shift + rng.normal(0, 0.5, n))))
    if task == "synthetic.nli":
        return (rng.random(n) < p).astype(np.float64)[:, None]
    gold = rng.integers(1, 4, n).astype(np.float64)
    correct = rng.binomial(gold.astype(int), p).astype(np.float64)
    predicted = np.maximum(correct, gold - rng.integers(0, 2, n))
    return np.stack([correct, predicted, gold], axis=1)


def _run(tmp_path, *, per_seed=True, drop=(), seeds=(0, 1, 2)):
    """(rows, meta, example stats) written to ``tmp_path``; ``drop``: (config, task) pairs
    without any row (a task whose gold is missing)."""
    rng = np.random.default_rng(0)
    rows, example_stats = [], {}
    for config in GAIN:
        for seed in seeds:
            run_shift = rng.normal(0, 0.05)
            for task, langs in LANGS.items():
                if (config, task) in drop:
                    continue
                for lang in langs:
                    shift = GAIN[config] * (1 if lang in SEEN[config] else 0.5) + run_shift
                    if task == "synthetic.bucc":
                        rows.append(_row(config, task, lang, 50 + 20 * shift, seed, "f1"))
                        continue
                    metric = "accuracy" if task == "synthetic.nli" else "f1_seqeval"
                    for split, n in (("dev", 80), ("test", 120)):
                        s = _stats_for(rng, task, shift, n)
                        example_stats[(config, task, lang, split, seed)] = s
                        rows += [_row(config, task, lang, v, seed, k, split)
                                 for k, v in metrics.reduce_stats(metric, s).items()]
    chance = {("synthetic.nli", "sw"): 99.0}  # nobody beats it: the check must say so
    rows += [_row("chance", t, lang, chance.get((t, lang), 0.0), 0,
                  "accuracy" if t == "synthetic.nli" else "f1")
             for t, langs in LANGS.items() for lang in langs]
    meta = {"configs": list(GAIN), "baseline": "base", "english_config": "en",
            "multilingual_config": "ml", "primary_comparison": ["en", "ml"],
            "more_comparisons": [["base", "ml"], ["en", "ml"]],
            "targets": ["synthetic.nli", "synthetic.pos"], "retrieval": ["synthetic.bucc"],
            "seeds": list(seeds), "low_resource": ["sw"], "tiers": {},
            "task_metric": {"synthetic.nli": "accuracy", "synthetic.pos": "f1_seqeval",
                            "synthetic.bucc": "bucc_f1"},
            "seen_languages": SEEN, "intermediate_per_seed": per_seed,
            "selection": "english_dev", "retrieval_layer": 2}
    _write(tmp_path, rows, meta, example_stats)
    return rows, meta, example_stats


def test_report_files_intervals_and_holm(tmp_path):
    rows, meta, example_stats = _run(tmp_path)
    assert report.main([str(tmp_path), "--resamples", "300"]) == 0
    out = tmp_path / "report"
    text = (out / "report.md").read_text()
    # The primary row: en vs ml, pooled low tier = sw on its three tasks, one language.
    data = rt.run_data(rows, meta, rt.read_example_stats(tmp_path))
    assert data.example_stats.keys() == example_stats.keys()
    cells = [(t, "sw") for t in LANGS]
    arms = [(stats.arm(data.task_metric[t], [example_stats[("en", t, "sw", "test", s)]
                                             for s in (0, 1, 2)] if t != "synthetic.bucc" else
                       [data.scores[("en", t, "sw", "test", s)] for s in (0, 1, 2)],
                       key=f"{t}|sw", resamples=300),
             stats.arm(data.task_metric[t], [example_stats[("ml", t, "sw", "test", s)]
                                             for s in (0, 1, 2)] if t != "synthetic.bucc" else
                       [data.scores[("ml", t, "sw", "test", s)] for s in (0, 1, 2)],
                       key=f"{t}|sw", resamples=300)) for t, _ in cells]
    expected = stats.paired_interval(arms)
    by_seed = [fmean(data.scores[("ml", t, "sw", "test", s)] - data.scores[("en", t, "sw",
                                                                               "test", s)]
                     for t, _ in cells) for s in (0, 1, 2)]
    assert expected.estimate == pytest.approx(fmean(by_seed))
    assert expected.runs == 3 and expected.supported and expected.se > 0
    assert (f"ml − en, pooled low tier: Δ = {expected.estimate:+.2f}, 95% CI "
            f"{expected.text()}, p = ") in text
    table = list(csv.DictReader((out / "comparisons.csv").open()))
    primary = [r for r in table if r["family"] == "primary" and r["level"] == "tier"]
    assert len(primary) == 1 and (primary[0]["english"], primary[0]["tier"]) == ("en", "low")
    assert float(primary[0]["ci_low"]) == pytest.approx(expected.low, abs=1e-4)
    # Holm over every other row with a p-value; never below the raw p; sensitivity rows out.
    secondary = [r for r in table if r["family"] == "secondary"]
    assert len(secondary) > 20
    assert all(float(r["p_holm"]) >= float(r["p"]) for r in secondary)
    # Rows repeating the primary difference (sw alone, low / seen) are primary, not in the
    # family; the family counts each distinct difference once, and Holm's smallest adjusted
    # p-value is the family size times the smallest p.
    repeats = [r for r in table if r["english"] == "en" and r["family"] == "primary"]
    assert {(r["level"], r["covariate"]) for r in repeats} == {
        ("tier", ""), ("tier x seen", "seen"), ("language", "")}
    distinct = {(r["english"], r["level"], r["tier"], r["task"], r["covariate"]): float(r["p"])
                for r in secondary}
    size = int(text.split("Holm family: the ")[1].split(" ")[0])
    assert size < len(secondary)
    smallest = min(secondary, key=lambda r: float(r["p"]))
    assert float(smallest["p_holm"]) == pytest.approx(min(1.0, size * float(smallest["p"])),
                                                      abs=size * 1e-4)  # p has 4 decimals
    assert len(distinct) >= size
    assert all(r["p_holm"] == "" for r in table if r["family"] == "sensitivity")
    # The covariate: seen = in en's or ml's intermediate data (en, hi, sw).
    high = {r["covariate"]: r["languages"] for r in table
            if r["level"] == "tier x seen" and r["tier"] == "high" and r["english"] == "en"}
    assert high == {"seen": "en hi", "unseen": "tr"}
    # The tier boundary: hi and tr move from high to medium.
    moved = {r["tier"]: r["languages"] for r in table
             if r["level"] == "boundary" and r["english"] == "en"}
    assert moved == {"high": "en", "medium": "hi tr ur", "low": "sw"}
    assert "Tier-boundary sensitivity" in text and "| high / seen | en hi |" in text
    # XTREME tables on test and dev, mean ± sample std over the three seeds.
    nli = [fmean(data.scores[("ml", "synthetic.nli", lang, "dev", s)]
                 for lang in LANGS["synthetic.nli"]) for s in (0, 1, 2)]
    assert f"{np.mean(nli):.1f} ± {np.std(nli, ddof=1):.1f}" in text.split("(target-language")[1]
    assert "Tasks without a dev split (not in this table): synthetic.bucc" in text
    assert "## Best intermediate config per target, chosen on dev, scored on test" in text
    for name in ("deltas.png", "tiers.png", "tiers_base_vs_ml.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("xtreme_table.csv", "xtreme_table_dev.csv", "selection.csv", "tiers.csv",
                 "tiers_base_vs_ml.csv", "deltas.csv", "comparisons.csv"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*"))
    assert "Retrieval embeds a sentence as the mean-pooled hidden state 2" in text
    assert "## Every English-only vs multilingual pair" in text
    check = text.split("## Chance check")[1]
    assert "checked against the chance level: 24; 3 do not: base/synthetic.nli/sw (" in check
    assert "en/synthetic.nli/sw" in check and "ml/synthetic.nli/sw" in check


def test_shared_intermediate_run_gives_no_interval(tmp_path):
    rows, meta, example_stats = _run(tmp_path, per_seed=False)
    # Retrieval is scored once per config (phase 1 runs once): seed 0 only.
    rows = [r for r in rows if r["task"] != "synthetic.bucc" or r["seed"] == 0]
    text, csvs, _ = report.build_report(rows, meta, example_stats, resamples=50)
    primary = text.split("## Primary result")[1].split("##")[0]
    assert "95% CI n/a (1 run): one intermediate run shared by the seeds" in primary
    assert "the run-to-run variance of intermediate training cannot be estimated" in text
    # The estimate uses every seed of each cell: the mean over sw's three tasks of the
    # difference of seed means (retrieval: its one seed).
    data = rt.run_data(rows, meta)

    def mean(config, task):
        return fmean(v for k, v in data.scores.items() if k[:4] == (config, task, "sw", "test"))

    delta = fmean(mean("ml", t) - mean("en", t) for t in LANGS)
    low = next(r for r in csv.DictReader(io.StringIO(csvs["comparisons.csv"]))
               if r["english"] == "en" and r["level"] == "tier" and r["tier"] == "low")
    assert float(low["delta"]) == pytest.approx(delta, abs=1e-4)
    assert (low["ci_low"], low["runs"]) == ("", "1")


def test_a_missing_retrieval_task_marks_its_rows_incomplete(tmp_path):
    rows, meta, example_stats = _run(tmp_path, drop=[("en", "synthetic.bucc")])
    text, csvs, _ = report.build_report(rows, meta, example_stats, resamples=50)
    assert "- en/synthetic.bucc: missing (no test score; the driver writes no BUCC row" in text
    en_row = next(line for line in text.splitlines() if line.startswith("| en |"))
    assert "missing" in en_row and "incomplete (synthetic.bucc not scored)" in en_row
    table = list(csv.DictReader(io.StringIO(csvs["comparisons.csv"])))
    low = next(r for r in table if r["english"] == "en" and r["level"] == "tier"
               and r["tier"] == "low")
    assert low["delta"] == "" and "en/synthetic.bucc/sw" in low["note"]
    assert low["family"] == "primary"  # the primary row is shown incomplete, not replaced
    medium = next(r for r in table if r["english"] == "en" and r["level"] == "tier"
                  and r["tier"] == "medium")
    assert medium["delta"] != ""  # ur has no retrieval cell


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        report.write_report(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"config": "a"}\n')
    (tmp_path / "experiment.json").write_text(json.dumps(_hand_meta()))
    with pytest.raises(ValueError, match=r"results.jsonl:1: row lacks"):
        report.write_report(tmp_path)
    (tmp_path / "results.jsonl").write_text("")
    bad = tmp_path / "phase2" / "en" / "t" / "seed0" / "example_stats.npz"
    bad.parent.mkdir(parents=True)
    np.savez(bad, **{"t|en": np.ones((2, 1))})
    with pytest.raises(ValueError, match="key 't\\|en': expected task\\|language\\|split"):
        report.write_report(tmp_path)


def test_report_states_the_retrieval_recipe():
    meta = {**_hand_meta(), "retrieval": ["tatoeba"], "retrieval_layer": 14}
    assert report._retrieval_recipe(meta).startswith(  # noqa: SLF001
        " Retrieval embeds a sentence as the mean-pooled hidden state 14 (0 = embeddings)")
    assert "centred" not in report._retrieval_recipe(meta)  # noqa: SLF001
    assert "centred per language" in report._retrieval_recipe(  # noqa: SLF001
        {**meta, "retrieval_center": True})


def test_comparison_pairs_primary_first_without_duplicates():
    meta = {**_hand_meta(), "primary_comparison": ["en", "ml"],
            "more_comparisons": [["en", "base"], ["en", "ml"], ["en", "nope"]]}
    assert report.comparison_pairs(meta, ["base", "en", "ml"]) == [("en", "ml"), ("en", "base")]
    old = {**_hand_meta(), "more_comparisons": [["en", "base"]]}  # no primary_comparison key
    assert report.comparison_pairs(old, ["base", "en", "ml"]) == [("en", "ml"), ("en", "base")]


def test_grid_checks_the_comparison_pairs():
    from xstilts import experiment
    from xstilts.models.xlmr import XLMRConfig

    common = {"run_dir": "/tmp/unused", "model_config": XLMRConfig.tiny(),
              "intermediate": {"baseline": None, "a": "synthetic.intermediate.nli.en"},
              "targets": ["synthetic.pos"]}
    with pytest.raises(ValueError, match="config 'b' is not one of"):
        experiment.make_grid(**common, more_comparisons=[("a", "b")])
    with pytest.raises(ValueError, match="is not an \\(English-only, multilingual\\) pair"):
        experiment.make_grid(**common, more_comparisons=[("a", "baseline", "a")])
    assert experiment.make_grid(**common, more_comparisons=[("a", "baseline")]).more_comparisons
