"""All nine XTREME tasks on XTREME's own mock predictions and real labels, the score CLI, tiers
and bad input."""

import json
import shutil

import pytest
import seqeval.metrics

from tests.conftest import require_sample
from xstilts.evals import score, xtreme_io, xtreme_score

# google-research/xtreme evaluate_test.py at f0a334a5a91a (TASK2AVG_SCORES): the averages
# XTREME's own evaluate.py gives on mock_test_data. evaluate.py sums languages in its own
# order, so equality is exact, as in XTREME's test (assertEqual).
XTREME_GOLDEN = {
    "pawsx": {"avg_accuracy": 51.42857142857143},
    "xnli": {"avg_accuracy": 30.666666666666668},
    "panx": {"avg_f1": 57.50793650793652, "avg_precision": 54.729166666666664,
             "avg_recall": 62.750000000000014},
    "udpos": {"avg_f1": 70.21746048354693, "avg_precision": 71.02232625883823,
              "avg_recall": 69.54982073976082},
    "bucc2018": {"avg_f1": 55.0, "avg_precision": 55.0, "avg_recall": 55.0},
    "tatoeba": {"avg_accuracy": 53.611111111111114},
    "xquad": {"avg_exact_match": 77.27272727272727, "avg_f1": 79.9586776859504},
    "mlqa": {"avg_exact_match": 57.142857142857146, "avg_f1": 81.76870748299321},
    "tydiqa": {"avg_exact_match": 88.88888888888889, "avg_f1": 97.22222222222223},
}


@pytest.fixture(scope="module")
def mock_dir():
    return require_sample("xtreme_mock")


@pytest.fixture(scope="module")
def report(mock_dir):
    return xtreme_score.evaluate_folders(mock_dir / "predictions", mock_dir / "labels")


def test_all_nine_tasks_match_xtreme_golden_values(report):
    assert set(report["tasks"]) == set(xtreme_score.TASKS)
    for task, golden in XTREME_GOLDEN.items():
        summary = report["tasks"][task]
        # XTREME's averages, to the last bit (a metric may add keys, e.g. QA's em_f1)
        assert {k: summary[k] for k in golden} == golden, task
        assert set(golden) <= {k for k in summary if k.startswith("avg_")}
        assert list(summary["languages"]) == list(xtreme_score.TASK2LANGS[task])
    print()
    print(score.format_report(report))


def _em_f1(scores):
    return {k: scores[k] for k in ("exact_match", "f1")}


def test_per_language_scores_against_independent_computations(report, mock_dir):
    tasks = report["tasks"]
    for task in ("xnli", "pawsx", "tatoeba"):  # accuracy straight from the files
        for lang, scores in tasks[task]["languages"].items():
            gold = (mock_dir / f"labels/{task}/test-{lang}.tsv").read_text().split()
            pred = (mock_dir / f"predictions/{task}/test-{lang}.tsv").read_text().split()
            expected = 100 * sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)
            assert scores["accuracy"] == pytest.approx(expected, abs=1e-12), (task, lang)
    for lang, scores in tasks["panx"]["languages"].items():  # IOB2 tags: seqeval itself
        gold = xtreme_io.read_tags(mock_dir / f"labels/panx/test-{lang}.tsv")
        pred = xtreme_io.read_tags(mock_dir / f"predictions/panx/test-{lang}.tsv")
        assert scores["f1"] == pytest.approx(100 * seqeval.metrics.f1_score(gold, pred)), lang
    for lang, scores in tasks["bucc2018"]["languages"].items():
        gold = set((mock_dir / f"labels/bucc2018/test-{lang}.tsv").read_text().splitlines())
        pred = set((mock_dir / f"predictions/bucc2018/test-{lang}.tsv").read_text().splitlines())
        p, r = len(gold & pred) / len(pred), len(gold & pred) / len(gold)
        assert scores["f1"] == pytest.approx(100 * 2 * p * r / (p + r)), lang
    # Hand-checked QA files:
    # xquad es: "308" exact; "5 veces jugador ... con 136" (21 tokens) vs "136": F1 2/22.
    assert _em_f1(tasks["xquad"]["languages"]["es"]) == {
        "exact_match": 50.0, "f1": pytest.approx((100 + 100 * 2 / 22) / 2)}
    # xquad zh (English-centric script): "308分" vs "308" shares no whitespace token;
    # "136 次擒杀" vs "136 次": 1 of 2 tokens each way, F1 1/2.
    assert _em_f1(tasks["xquad"]["languages"]["zh"]) == {"exact_match": 0.0, "f1": 25.0}
    # mlqa de: "3050 und 3350" vs "3050 und 3350 Meter": P 1, R 3/4, F1 6/7.
    assert _em_f1(tasks["mlqa"]["languages"]["de"]) == {
        "exact_match": 0.0, "f1": pytest.approx(600 / 7)}


def test_task_group_and_xtreme_scores(report):
    tasks = report["tasks"]
    task_score = {t: tasks[t]["score"] for t in xtreme_score.TASKS}
    for qa in ("xquad", "mlqa", "tydiqa"):
        golden = XTREME_GOLDEN[qa]
        assert task_score[qa] == pytest.approx(
            (golden["avg_exact_match"] + golden["avg_f1"]) / 2)
    assert task_score["panx"] == XTREME_GOLDEN["panx"]["avg_f1"]
    assert task_score["xnli"] == XTREME_GOLDEN["xnli"]["avg_accuracy"]
    assert report["xtreme_score"] == pytest.approx(sum(task_score.values()) / 9)
    assert report["groups"]["qa"] == pytest.approx(
        (task_score["xquad"] + task_score["mlqa"] + task_score["tydiqa"]) / 3)
    assert report["groups"]["retrieval"] == pytest.approx(
        (task_score["bucc2018"] + task_score["tatoeba"]) / 2)


def test_resource_tiers(report):
    langs = xtreme_score.LANGUAGES
    every_xtreme_language = {lang for langs_ in xtreme_score.TASK2LANGS.values()
                             for lang in langs_}
    assert every_xtreme_language <= set(langs)
    counts = {tier: sum(lang.tier == tier for lang in langs.values())
              for tier in xtreme_score.TIERS}
    assert counts == {"high": 23, "medium": 8, "low": 8, "unseen": 1}
    assert langs["en"].tier == "high" and langs["hi"].tier == "high"  # 20.2 GiB
    assert langs["ta"].tier == "medium" and langs["sw"].tier == "low"
    assert langs["yo"].tier == "unseen" and langs["zh"].cc100_gib == pytest.approx(63.5)
    # The low tier's PAN-X average, recomputed from the per-language F1s.
    panx = report["tasks"]["panx"]["languages"]
    low = [panx[lang]["f1"] for lang in panx if langs[lang].tier == "low"]
    assert report["tiers"]["low"]["tasks"]["panx"] == pytest.approx(sum(low) / len(low))
    # QA enters the tiers as (EM + F1) / 2 per language.
    ty = report["tasks"]["tydiqa"]["languages"]
    high = [(ty[lang]["exact_match"] + ty[lang]["f1"]) / 2 for lang in ty
            if langs[lang].tier == "high"]
    assert report["tiers"]["high"]["tasks"]["tydiqa"] == pytest.approx(sum(high) / len(high))
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        xtreme_score.language("xx")


def test_score_cli_table_and_json(mock_dir, capsys):
    args = ["--predictions", str(mock_dir / "predictions"), "--labels", str(mock_dir / "labels")]
    assert score.main(args) == 0
    table = capsys.readouterr().out
    assert "== udpos: score 70.22" in table and "XTREME score" in table
    assert score.main([*args, "--json", "--tasks", "xnli,mlqa"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["tasks"]) == {"xnli", "mlqa"} and data["xtreme_score"] is None
    assert data["tasks"]["xnli"]["avg_accuracy"] == XTREME_GOLDEN["xnli"]["avg_accuracy"]


@pytest.fixture
def copy_of_mock(mock_dir, tmp_path):
    for part in ("predictions", "labels"):
        for task in ("xnli", "mlqa"):
            shutil.copytree(mock_dir / part / task, tmp_path / part / task)
    return tmp_path


def _evaluate(root):
    return xtreme_score.evaluate_folders(root / "predictions", root / "labels")


def test_bad_input_length_mismatch(copy_of_mock):
    pred = copy_of_mock / "predictions/xnli/test-de.tsv"
    pred.write_text("".join(pred.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match=r"xnli/de: .*test-de.tsv.*9 predictions for 10 labels"):
        _evaluate(copy_of_mock)


def test_bad_input_unknown_language(copy_of_mock, capsys):
    shutil.copy(copy_of_mock / "predictions/xnli/test-de.tsv",
                copy_of_mock / "predictions/xnli/test-xx.tsv")
    with pytest.raises(ValueError, match="unknown language 'xx' for task xnli"):
        _evaluate(copy_of_mock)
    assert score.main(["--predictions", str(copy_of_mock / "predictions"),
                       "--labels", str(copy_of_mock / "labels")]) == 2
    assert "unknown language 'xx'" in capsys.readouterr().err


def test_bad_input_empty_missing_and_malformed_files(copy_of_mock):
    (copy_of_mock / "labels/xnli/test-fr.tsv").write_text("")
    with pytest.raises(ValueError, match=r"labels/xnli/test-fr.tsv: empty file"):
        _evaluate(copy_of_mock)
    (copy_of_mock / "labels/xnli/test-fr.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels/xnli/test-fr.tsv: missing"):
        _evaluate(copy_of_mock)
    shutil.rmtree(copy_of_mock / "labels/xnli")
    (copy_of_mock / "predictions/mlqa/test-de.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"test-de.json: invalid JSON"):
        _evaluate(copy_of_mock)
    (copy_of_mock / "predictions/foo").mkdir()
    with pytest.raises(ValueError, match="unknown task 'foo'"):
        _evaluate(copy_of_mock)
