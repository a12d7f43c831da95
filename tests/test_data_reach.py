"""Low-resource reach (issue 14 item 7): the translated / native intermediate sources of the XTREME
languages, read from their release paths, which low-resource languages each mixture reaches (the
table in docs/mixtures.md), and zero-shot staying zero-shot (item 6)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_ROOT
from xstilts import benchmark
from xstilts.data import mixtures as M
from xstilts.data import readers as r
from xstilts.data import tasks as T
from xstilts.evals import xtreme_score
from xstilts.experiment.driver import contaminated
from xstilts.experiment.grid import Grid

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "release_layouts"
GUIDE = REPO_ROOT / "docs" / "mixtures.md"
LOW = ("af", "eu", "jv", "mr", "my", "sw", "te", "tl")


def _doc_reach_table() -> list[tuple[str, list[str]]]:
    text = GUIDE.read_text()
    block = re.search(r"<!-- reach-table -->\n(.*?)<!-- /reach-table -->", text, flags=re.S)
    assert block, "docs/mixtures.md lacks the reach table markers"
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|$", block.group(1), flags=re.M)
    return [(name, [] if langs.strip() == "none" else langs.strip().split(", "))
            for name, langs in rows]


def test_the_guide_reach_table_is_the_computed_one():
    assert _doc_reach_table() == M.reach_table()


def test_low_tier_is_xtreme_scores():
    low = [code for code, lang in xtreme_score.LANGUAGES.items() if lang.tier == "low"]
    assert tuple(sorted(low)) == LOW


def test_reach_of_the_mixtures():
    assert M.low_resource_reach("mlm.xtreme") == list(LOW)
    assert M.low_resource_reach("intermediate.mnli.multilingual") == ["sw"]
    assert M.low_resource_reach("intermediate.mnli.multilingual.xnli_mt") == ["sw"]
    assert M.low_resource_reach("intermediate.squad_v1.multilingual") == []
    assert M.low_resource_reach(M.SQUAD_WITH_TYDIQA_TT) == ["sw", "te"]
    assert M.low_resource_reach("intermediate.all9.multilingual") == ["sw"]
    assert M.low_resource_reach("intermediate.all9.multilingual+mlm") == list(LOW)
    assert M.low_resource_reach("intermediate.all9.en") == []
    with pytest.raises(KeyError, match="unknown mixture 'intermediate.nope'"):
        M.low_resource_reach("intermediate.nope")


def test_recipe_tasks_flatten_like_the_registry():
    for mixture in M.all_mixtures():
        assert M.recipe_tasks(mixture.name) == T.mixture_tasks(mixture.name), mixture.name


def test_every_xtreme_language_has_mlm_text():
    every = {lang for langs in benchmark.TASK2LANGS.values() for lang in langs}
    assert len(every) == 40 and set(T.languages_of("mlm")) == every
    assert set(T.mixture_tasks("mlm.xtreme")) == {f"mlm.{lang}" for lang in every}
    assert T.get_task("mlm.yo").splits["train"] == ("mlm/yo.txt",)


def test_new_sources_per_language_and_release_path():
    paths = {
        "mnli_mt": ("XNLI-MT-1.0/multinli/multinli.train.{}.tsv", benchmark.TASK2LANGS["xnli"]),
        "tydiqa_tt": ("tydiqa/translate-train/tydiqa.translate.train.en-{}.json",
                      benchmark.TASK2LANGS["tydiqa"]),
        "pawsx_tt": ("pawsx/x-final/{}/translated_train.tsv", benchmark.TASK2LANGS["pawsx"]),
    }
    for dataset, (pattern, languages) in paths.items():
        expected = [lang for lang in languages if lang != "en"]
        assert T.languages_of(dataset) == expected, dataset
        for lang in expected:
            spec = T.get_task(f"{dataset}.{lang}")
            assert spec.splits == {"train": (pattern.format(lang),)}, spec.name
            assert (spec.role, spec.source) == ("intermediate", "translate-train")
    assert T.get_task("mnli_mt.sw").metadata["head"] == "nli"  # shared with MNLI and XNLI
    assert T.get_task("mnli_mt.sw").reader is r.read_xnli_mt_tsv
    assert T.get_task("tydiqa_tt.te").metadata["head"] == "span_qa"
    assert T.get_task("tydiqa_tt.te").tfds_splits == {"train": "translate-train-te"}
    assert T.get_task("pawsx_tt.ko").labels == r.BINARY_LABELS
    assert T.get_task("pawsx_tt.ko").metadata["head"] == "qqp"


def test_new_sources_read_their_release_fixtures():
    mnli_mt = list(T.get_task("mnli_mt.de").examples("train", FIXTURES))
    assert [e["label"] for e in mnli_mt] == ["contradiction", "entailment", "neutral"]
    (tydiqa,) = T.get_task("tydiqa_tt.sw").examples("train", FIXTURES)
    assert tydiqa["answers"] == [{"text": "Mlima Kilimanjaro", "answer_start": 0}]
    pawsx = list(T.get_task("pawsx_tt.de").examples("train", FIXTURES))
    assert [(e["text_a"], e["label"]) for e in pawsx][0] == (
        "Der Zug fährt um acht Uhr nach Bern.", "1")
    with pytest.raises(FileNotFoundError, match=r"tydiqa_tt\.te split 'train'.*en-te\.json"):
        T.get_task("tydiqa_tt.te").path("train", FIXTURES)


def test_zero_shot_stays_zero_shot():
    for name in M.OPT_IN:
        assert M.derived_targets(name), name
    assert M.derived_targets(M.SQUAD_WITH_TYDIQA_TT) == ["tydiqa"]
    assert M.derived_targets(M.QQP_WITH_PAWSX_TT) == ["pawsx"]
    assert M.derived_targets(M.SQUAD_WITH_TYDIQA) == ["tydiqa"]
    for mixture in M.all_mixtures():  # every other mixture keeps every target zero-shot
        if mixture.name not in M.OPT_IN:
            assert M.derived_targets(mixture.name) == [], mixture.name
    # no new dataset is named like a target (the driver matches dataset names)
    assert not {"mnli_mt", "tydiqa_tt", "pawsx_tt"} & set(benchmark.TASKS)


def _contaminated(mixtures: dict[str, str]) -> dict[str, list[str]]:
    grid = Grid(run_dir="unused", model_config=None,
                intermediate={"baseline": None, **mixtures}, targets=tuple(benchmark.TASKS))
    return contaminated(grid)


def test_the_driver_marks_no_default_mixture():
    defaults = {m.name: m.name for m in M.intermediate_mixtures() if m.name not in M.OPT_IN}
    assert _contaminated(defaults) == {}
    assert _contaminated({"t": M.SQUAD_WITH_TYDIQA}) == {"t": ["tydiqa"]}


def test_the_driver_marks_translated_target_data():
    marked = _contaminated({"tt": M.SQUAD_WITH_TYDIQA_TT, "px": M.QQP_WITH_PAWSX_TT})
    assert marked == {"tt": ["tydiqa"], "px": ["pawsx"]}
