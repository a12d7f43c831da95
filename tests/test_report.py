"""The report's statistics on hand-made tables: bootstrap intervals, tier aggregation, XTREME
table, chance check, and the files ``python -m xstilts.report`` writes."""

from __future__ import annotations

import itertools
import json
from statistics import fmean

import numpy as np
import pytest

from xstilts import report
from xstilts.evals import xtreme_score
from xstilts.experiment import write_rows


def _row(config, task, lang, value, seed, metric="accuracy"):
    return {"config": config, "task": task, "language": lang, "split": "test", "metric": metric,
            "value": value, "seed": seed, "step": 10}


# -- paired bootstrap ---------------------------------------------------------------------
def test_bootstrap_matches_exact_enumeration():
    """With 4 units, all 4^4 resamples are equally likely: the exact percentile interval is
    computable by brute force, and 40,000 Monte-Carlo resamples must land next to it."""
    diffs = np.array([0.0, 1.0, 2.0, 10.0])
    means = np.array([diffs[list(p)].mean() for p in itertools.product(range(4), repeat=4)])
    exact_low, exact_high = np.percentile(means, [2.5, 97.5])
    estimate, low, high = report.paired_bootstrap(diffs, resamples=40_000, seed=1)
    assert estimate == pytest.approx(3.25)
    assert low == pytest.approx(exact_low, abs=0.25)
    assert high == pytest.approx(exact_high, abs=0.25)
    assert low < estimate < high


def test_bootstrap_agrees_with_scipy_paired_percentile():
    from scipy import stats

    rng = np.random.default_rng(0)
    a = rng.normal(50, 10, 30)
    b = a + rng.normal(1.5, 2.0, 30)
    ours = report.paired_bootstrap(b - a, resamples=20_000, seed=0)
    theirs = stats.bootstrap((b, a), lambda x, y: np.mean(x - y), paired=True,
                             vectorized=False, n_resamples=20_000, method="percentile",
                             random_state=0).confidence_interval
    assert ours[1] == pytest.approx(theirs.low, abs=0.12)
    assert ours[2] == pytest.approx(theirs.high, abs=0.12)


def test_bootstrap_pairing_and_strata():
    # b = a + 1 on every unit: however noisy a is, the paired interval is exactly [1, 1].
    a = np.array([10.0, 90.0, 40.0, 70.0])
    assert report.paired_bootstrap((a + 1) - a) == (1.0, 1.0, 1.0)
    # Strata: the statistic is the mean of the stratum means (3.0), not the pooled mean (1.8).
    estimate, low, high = report.paired_bootstrap({"t1": np.ones(4), "t2": np.array([5.0])})
    assert (estimate, low, high) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="no paired differences"):
        report.paired_bootstrap({})
    with pytest.raises(ValueError, match="confidence"):
        report.paired_bootstrap(np.ones(3), confidence=1.5)


# -- aggregation ----------------------------------------------------------------------------
TIERS = {"en": "high", "xa": "medium", "xc": "low", "xd": "low"}


def _hand_table():
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


def test_tier_scores_by_hand():
    scores = report.language_scores(_hand_table(), {})
    en = report.tier_scores(scores, "en", TIERS)
    # low, seed 0: t1 mean(40, 30) = 35, t2 mean(20) = 20 -> 27.5; seed 1: t1 37, t2 20 -> 28.5
    assert en["low"] == pytest.approx([27.5, 28.5])
    assert en["medium"] == pytest.approx([55.0, 58.0])
    assert en["high"] == pytest.approx([75.0, 76.0])
    ml = report.tier_scores(scores, "ml", TIERS)
    assert ml["low"] == pytest.approx([(45 + 26) / 2, (43 + 30) / 2])
    # Paired differences per task in the low tier, (language, seed) units in sorted order.
    diffs = report.paired_differences(scores, "en", "ml", {"xc", "xd"})
    assert diffs["t1"].tolist() == [10, 6, 10, 6]  # xc s0, xc s1, xd s0, xd s1
    assert diffs["t2"].tolist() == [6, 10]
    estimate, _, _ = report.paired_bootstrap(diffs)
    # = mean over seeds of (ml tier score - en tier score)
    assert estimate == pytest.approx(np.mean(ml["low"]) - np.mean(en["low"]))
    # A task scored on seed 0 only (retrieval from phase 1) enters seed 1 with the same value.
    scores[("en", "ret", "xc", 0)] = 9.0
    assert report.tier_scores(scores, "en", TIERS)["low"] == pytest.approx(
        [(35 + 20 + 9) / 3, (37 + 20 + 9) / 3])


def test_tier_scores_match_xtreme_tier_averages_on_real_languages():
    """With no tier table, CC-100 tiers apply and the numbers are xtreme_score's."""
    langs = {"de": 71.0, "sw": 55.0, "ur": 60.0, "en": 88.0, "hi": 64.0}
    rows = [_row("c", "xnli", lang, v, 0) for lang, v in langs.items()]
    rows += [_row("c", "pawsx", lang, v - 5, 0) for lang, v in langs.items() if lang in
             ("de", "en")]
    ours = report.tier_scores(report.language_scores(rows, {}), "c", {})
    detailed = {"xnli": {lang: {"accuracy": v} for lang, v in langs.items()},
                "pawsx": {lang: {"accuracy": langs[lang] - 5} for lang in ("de", "en")}}
    theirs = xtreme_score.tier_averages(detailed)
    assert set(ours) == set(theirs)
    for tier, summary in theirs.items():
        assert ours[tier] == pytest.approx([summary["mean"]])


def test_xtreme_table_and_qa_primary_metric():
    rows = [_row("a", "xq", "en", 60, 0, "exact_match"), _row("a", "xq", "en", 80, 0, "f1"),
            _row("a", "xq", "de", 40, 0, "exact_match"), _row("a", "xq", "de", 60, 0, "f1"),
            _row("a", "xq", "en", 70, 1, "exact_match"), _row("a", "xq", "en", 90, 1, "f1"),
            _row("a", "xq", "de", 50, 1, "exact_match"), _row("a", "xq", "de", 70, 1, "f1"),
            _row("a", "cls", "en", 90, 0), _row("a", "cls", "en", 80, 1)]
    scores = report.language_scores(rows, {"xq": "em_f1"})
    table = report.xtreme_table(scores, ["a"], ["xq", "cls"])
    # seed 0: xq = mean((60+80)/2, (40+60)/2) = 60; seed 1: 70 -> 65 ± 5
    assert table["a"]["xq"] == pytest.approx((65.0, 5.0))
    assert table["a"]["cls"] == pytest.approx((85.0, 5.0))
    assert table["a"]["score"] == pytest.approx(((75 + 75) / 2, 0.0))
    # A task with fewer seeds (retrieval from phase 1) enters each seed with its own mean.
    scores[("a", "ret", "de", 0)] = 30.0
    table = report.xtreme_table(scores, ["a"], ["xq", "cls", "ret"])
    assert table["a"]["ret"] == (30.0, 0.0)
    # seed 0: (60 + 90 + 30) / 3 = 60, seed 1: (70 + 80 + 30) / 3 = 60
    assert table["a"]["score"] == pytest.approx((60.0, 0.0))
    scores[("a", "cls", "en", 1)] = 86.0  # seed 1 -> (70 + 86 + 30) / 3 = 62
    assert report.xtreme_table(scores, ["a"], ["xq", "cls", "ret"])["a"]["score"] == \
        pytest.approx((fmean([60.0, 62.0]), 1.0))


# -- the whole report ---------------------------------------------------------------------
def _meta():
    return {"configs": ["base", "en", "ml"], "baseline": "base", "english_config": "en",
            "multilingual_config": "ml", "targets": ["t1", "t2"], "retrieval": [],
            "low_resource": ["xc", "xd"], "tiers": TIERS, "primary_metric": {}}


def test_report_files_and_chance_check(tmp_path):
    rows = _hand_table()
    rows += [_row("base", r["task"], r["language"], r["value"] - 3, r["seed"])
             for r in rows if r["config"] == "en"]
    chance = {"t1": 25.0, "t2": 21.0}  # en/t2/xc scores 20 <= 21: must be reported
    rows += [_row("chance", t, lang, v, 0) for t, v in chance.items()
             for lang in ("en", "xa", "xc", "xd")]
    write_rows(tmp_path / "results.jsonl", rows)
    (tmp_path / "experiment.json").write_text(json.dumps(_meta()))
    assert report.main([str(tmp_path)]) == 0
    out = tmp_path / "report"
    text = (out / "report.md").read_text()
    # en, t1: seed 0 mean(80, 60, 40, 30) = 52.5, seed 1 mean(82, 62, 44, 30) = 54.5;
    # t2: 140/3 and 48; score: 49.58 and 51.25 -> mean ± std over the two seeds
    assert "| en | 53.5 ± 1.0 | 47.3 ± 0.7 | 50.4 ± 0.8 |" in text
    assert "*chance*" in text and "*25.0*" in text
    assert "en/t2/xc (20.0 <= 21.0)" in text and "base/t2/xc (17.0 <= 21.0)" in text
    assert "ml/t2/xc" not in text.split("Chance check")[1]
    for name in ("deltas.png", "tiers.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    deltas = (out / "deltas.csv").read_text().splitlines()
    assert "en,t1,xa,3.0000,2" in deltas  # en - base = +3 on every unit
    tiers = (out / "tiers.csv").read_text().splitlines()
    assert tiers[0].startswith("level,name,english_mean")
    assert any(line.startswith("language,xd,") for line in tiers)
    assert not list(out.glob(".*tmp*"))
    assert "Retrieval embeds" not in text  # no retrieval task: no recipe sentence


def test_report_compares_every_pair_and_sums_them_up(tmp_path):
    rows = _hand_table()
    rows += [_row("base", r["task"], r["language"], r["value"] - 3, r["seed"])
             for r in rows if r["config"] == "en"]
    meta = {**_meta(), "more_comparisons": [["en", "base"], ["en", "ml"], ["en", "nope"]]}
    text, csvs, pngs = report.build_report(rows, meta)
    # The first pair keeps tiers.csv / tiers.png; the repeated pair and the unknown config are
    # dropped; the extra pair gets its own section and files.
    assert text.count("## English-only (en) vs multilingual (ml)") == 1
    assert "## English-only (en) vs multilingual (base)" in text
    assert {"tiers.csv", "tiers_en_vs_base.csv"} <= set(csvs)
    assert {"tiers.png", "tiers_en_vs_base.png"} <= set(pngs)
    assert "![tiers](tiers_en_vs_base.png)" in text
    # base = en - 3 on every unit: Δ is -3 with a zero-width interval in every tier.
    summary = text.split("## Every English-only vs multilingual pair")[1]
    assert "| en | base | -3.00 [-3.00, -3.00] | -3.00 [-3.00, -3.00] | -3.00 [-3.00, -3.00] |" \
        in summary
    # The (en, ml) summary row repeats that pair's tier table.
    tier_table = text.split("vs multilingual (ml) intermediate training")[1].split("Low-")[0]
    cells = {line.split("|")[1].strip(): line.split("|")[5:7] for line in tier_table.splitlines()
             if line.startswith("| high") or line.startswith("| medium") or
             line.startswith("| low")}
    expected = " | ".join(f"{d.strip()} {ci.strip()}" for d, ci in
                          (cells["high"], cells["medium"], cells["low"]))
    assert f"| en | ml | {expected} |" in summary
    # One pair only: no summary section.
    assert "Every English-only" not in report.build_report(rows, _meta())[0]


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


def test_report_states_the_retrieval_recipe():
    meta = {**_meta(), "retrieval": ["tatoeba"], "retrieval_layer": 14}
    assert report._retrieval_recipe(meta).startswith(  # noqa: SLF001
        " Retrieval embeds a sentence as the mean-pooled hidden state 14 (0 = embeddings)")
    assert "centred" not in report._retrieval_recipe(meta)  # noqa: SLF001
    assert "centred per language" in report._retrieval_recipe(  # noqa: SLF001
        {**meta, "retrieval_center": True})


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        report.write_report(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"config": "a"}\n')
    (tmp_path / "experiment.json").write_text(json.dumps(_meta()))
    with pytest.raises(ValueError, match=r"results.jsonl:1: row lacks"):
        report.write_report(tmp_path)
