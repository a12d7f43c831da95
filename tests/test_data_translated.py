"""Tasks and mixtures of our translations (issue 17 item 5): a corpus written by the real
translator (tiny random NLLB) is the ``mnli.yo`` task, official and ours stay apart, the
low-resource mixture's rates and describe's languages, and the paper-scale lowres gin file."""

from __future__ import annotations

import json
import shutil

import gin
import pytest

from tests.conftest import require_sample
from tests.nmt_reference import make_hf_nmt
from tests.translate_stand_in import UpperCase as _UpperCase
from xstilts import experiment, gin_utils
from xstilts.data import describe as D
from xstilts.data import mixtures as M
from xstilts.data import readers as r
from xstilts.data import sources
from xstilts.data import tasks as T
from xstilts.evals import xtreme_score
from xstilts.experiment.dry_run import family_notes, recipe_line
from xstilts.experiment.grid import make_grid
from xstilts.experiment.plan import budget_configs, plan

transformers = pytest.importorskip("transformers")
LOWRES = "intermediate.mnli.multilingual.lowres"
OURS_LOW = ("af", "eu", "jv", "mr", "my", "te", "tl", "yo")  # sw: XTREME's release


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """The real translator on a random NLLB-layout checkpoint (tests/test_translate.py's)."""
    from xstilts.decoding import DecodeSettings
    from xstilts.translate import Translator

    folder = tmp_path_factory.mktemp("nllb")
    tok = transformers.NllbTokenizer(vocab_file=str(require_sample("spm") / "test_model.model"))
    tok.save_pretrained(folder)
    make_hf_nmt("nllb", seed=2, eos_boost=0.3, vocab_size=len(tok)).save_pretrained(folder)
    return Translator(str(folder), DecodeSettings(num_beams=1, max_length=6))


def _glue_mnli(path, n: int) -> list[tuple[str, str, str]]:
    """A GLUE-layout MNLI train file of ``n`` pairs (Tatoeba sentences); its (a, b, label)."""
    lines = (require_sample("tatoeba/v1") / "tatoeba.deu-eng.eng").read_text().splitlines()
    labels = ("entailment", "neutral", "contradiction")
    rows = [(lines[2 * i], lines[2 * i + 1], labels[i % 3]) for i in range(n)]
    path.parent.mkdir(parents=True)
    path.write_text("index\tsentence1\tsentence2\tgold_label\n" + "".join(
        f"{i}\t{a}\t{b}\t{label}\n" for i, (a, b, label) in enumerate(rows)), encoding="utf-8")
    return rows


def _translate(translator, languages, data, out, max_examples=None):
    from xstilts.translate import translate_task

    return translate_task("mnli", languages, str(data), str(out), translator, model_name="tiny",
                          max_examples=max_examples, progress=False)


@pytest.fixture(scope="module")
def corpus(translator, tmp_path_factory):
    """D with mnli.en (7 pairs), our yo translation at the translator's default output, ours of
    sw beside the release (translate-train-ours/), and the other low-resource languages."""
    data = tmp_path_factory.mktemp("data")
    english = _glue_mnli(data / "mnli/train.tsv", 7)
    (yo,) = _translate(translator, ["yo"], data, data)
    (sw,) = _translate(translator, ["sw"], data, data)
    assert sw == data / "translate-train-ours/xnli/translate-train/en-sw-translated.tsv"
    sizes = {"yo": 7}
    for n, lang in enumerate(OURS_LOW[:-1], 1):  # a different size per language: 1..7
        _translate(translator, [lang], data, data, max_examples=n)
        sizes[lang] = n
    return {"data": data, "english": english, "yo": yo, "sw": sw, "sizes": sizes}


def test_translator_output_is_the_mnli_yo_task(corpus):
    data, english = corpus["data"], corpus["english"]
    spec = T.get_task("mnli.yo")
    assert (spec.source, spec.dataset, spec.metadata["head"]) == (
        "translate-train-ours", "mnli_ours", "nli")
    assert sources.resolve(spec, "train", data) == [corpus["yo"], corpus["yo"].with_name(
        corpus["yo"].name + ".manifest.json")]
    rows = list(sources.read(spec, "train", data))
    assert [(e["text_a_en"], e["text_b_en"], e["label"]) for e in rows] == english
    assert all(e["text_a"] and e["text_b"] for e in rows)
    assert [e["text_a"] for e in rows] == [
        e["text_a"] for e in r.read_translate_train_tsv(corpus["yo"])]
    assert T.get_task("mnli.yo").num_examples("train", data) == 7


def test_official_and_ours_stay_apart(corpus, tmp_path):
    data = corpus["data"]
    # sw: XTREME's release is the default task; ours is mnli_ours.sw, read from
    # translate-train-ours/ beside the (here absent) release
    assert T.get_task("mnli.sw").source == "translate-train"
    assert len(list(sources.read(T.get_task("mnli_ours.sw"), "train", data))) == 7
    with pytest.raises(FileNotFoundError, match="python -m xstilts.data.prepare"):
        sources.resolve(T.get_task("mnli.sw"), "train", data)
    # an official file (no manifest) is never read as ours; the error names the command
    root = tmp_path / "d"
    (root / "xnli/translate-train").mkdir(parents=True)
    shutil.copy(require_sample("xnli/translate_train_sample") / "en-bg-translated.tsv",
                root / "xnli/translate-train/en-bg-translated.tsv")
    assert len(list(sources.read(T.get_task("mnli.bg"), "train", root))) == 2
    with pytest.raises(FileNotFoundError) as error:
        sources.resolve(T.get_task("mnli_ours.bg"), "train", root)
    assert f"looked for {root}/translate-train-ours/xnli/translate-train/en-bg-translated.tsv" \
        in str(error.value)
    assert f"`python -m xstilts.translate --task mnli --languages bg --data_dir {root}`" \
        in str(error.value)  # which writes bg under translate-train-ours/
    with pytest.raises(FileNotFoundError, match=f"--languages tl --data_dir {root}`"):
        sources.resolve(T.get_task("mnli.tl"), "train", root)


def test_manifest_must_match_the_file(corpus, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(corpus["data"] / "xnli", root / "xnli")
    path = root / "xnli/translate-train/en-yo-translated.tsv"
    manifest = path.with_name(path.name + ".manifest.json")
    record = json.loads(manifest.read_text())
    command = f"python -m xstilts.translate --task mnli --languages yo --data_dir {root}"
    manifest.write_text(json.dumps({**record, "source": "translate-train"}))
    with pytest.raises(ValueError, match=r"source is 'translate-train', expected "
                       r"'translate-train-ours'.*" + command):
        list(sources.read(T.get_task("mnli.yo"), "train", root))
    manifest.write_text(json.dumps(record))
    assert len(list(sources.read(T.get_task("mnli.yo"), "train", root))) == 7
    with open(path, "a", encoding="utf-8") as f:
        f.write("a\tb\tc\td\tneutral\n")
    with pytest.raises(ValueError, match=r"file_sha256 .*the file changed since"):
        list(sources.read(T.get_task("mnli.yo"), "train", root))
    # another language's manifest
    shutil.copy(manifest, root / "xnli/translate-train/en-tl-translated.tsv.manifest.json")
    shutil.copy(path, root / "xnli/translate-train/en-tl-translated.tsv")
    with pytest.raises(ValueError, match="language is 'yo', expected 'tl'"):
        list(sources.read(T.get_task("mnli.tl"), "train", root))


def test_every_xtreme_language_and_translatable_task_is_registered():
    languages = {lang for langs in xtreme_score.TASK2LANGS.values() for lang in langs} - {"en"}
    assert len(languages) == 39
    official = {"mnli": set(T.XNLI_TRANSLATE_TRAIN), "squad_v1": set(T.SQUAD_TRANSLATE_TRAIN),
                "pawsx_tt": {"de", "es", "fr", "ja", "ko", "zh"}}
    for dataset in ("mnli", "squad_v1", "pawsx_tt", "qqp", "anli_r1", "anli_r2", "anli_r3",
                    "hellaswag", "cosmosqa", "commonsenseqa"):
        ours = T.tasks_for(f"{dataset}_ours")
        assert sorted(s.language for s in ours) == sorted(languages), dataset
        for spec in ours:
            release = spec.language in official.get(dataset, ())
            assert spec.name == f"{dataset}{'_ours' * release}.{spec.language}"
            assert spec.source == "translate-train-ours" and spec.role == "intermediate"
            if release:
                assert T.get_task(f"{dataset}.{spec.language}").source == "translate-train"
    assert T.get_task("qqp.tl").splits["train"][1] == (
        "qqp/translate-train/tl/train.tsv|qqp/translate-train/tl/train.tsv.manifest.json")
    assert T.get_task("anli_r2.yo").metadata["head"] == "nli"
    assert T.get_task("commonsenseqa.my").num_choices == 5
    assert M.derived_targets("intermediate.all9.multilingual.lowres") == []
    assert T.get_task("pawsx_tt.yo").dataset == "pawsx_tt_ours"  # opt-in: PAWS-X's own data
    assert M.derived_targets(M.QQP_WITH_PAWSX_TT) == ["pawsx"]


def test_lowres_mixture_rates_on_the_translated_corpus(corpus, tmp_path):
    data, sizes = tmp_path / "d", corpus["sizes"]
    shutil.copytree(corpus["data"], data)
    # sw: a release-layout file (the English pairs as their own "translation")
    (data / "xnli/translate-train/en-sw-translated.tsv").write_text("".join(
        f"{a}\t{b}\t{a}\t{b}\t{label}\n" for a, b, label in corpus["english"][:5]),
        encoding="utf-8")
    sizes = {"mnli.en": 7, "mnli.sw": 5, **{f"mnli.{lang}": n for lang, n in sizes.items()}}
    assert T.mixture_tasks(LOWRES) == ["mnli.en", *(f"mnli.{x}" for x in M.LOW_RESOURCE)]
    counted = {t: T.get_task(t).num_examples("train", data) for t in T.mixture_tasks(LOWRES)}
    assert counted == sizes
    # temperature 3 over the sizes, by hand
    weights = {t: n ** (1 / 3) for t, n in sizes.items()}
    expected = {t: w / sum(weights.values()) for t, w in weights.items()}
    assert T.mixture_rates(LOWRES, counted) == pytest.approx(expected)
    assert T.mixture_epoch_size(LOWRES, counted) == sum(sizes.values())
    described = D.describe(LOWRES, data)
    assert described["languages"] == ["en", *M.LOW_RESOURCE]
    records = {rec["task"]: rec for rec in described["tasks"]}
    assert {t: rec["examples"] for t, rec in records.items()} == sizes
    assert {t: rec["rate"] for t, rec in records.items()} == pytest.approx(expected)
    assert {t: rec["source"] for t, rec in records.items()} == {
        "mnli.en": "native", "mnli.sw": "official",
        **{f"mnli.{x}": "ours" for x in OURS_LOW}}
    assert records["mnli.yo"]["files"][1]["path"] == \
        "xnli/translate-train/en-yo-translated.tsv.manifest.json"
    text = D.table(described)
    assert "languages (10): en af eu jv mr my sw te tl yo" in text
    assert any(line.startswith("mnli.yo") and " ours " in line for line in text.splitlines())


def test_describe_languages_cli(capsys):
    assert D.main(["--languages", LOWRES, "intermediate.all9.multilingual.lowres"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{LOWRES}: 10 languages: en af eu jv mr my sw te tl yo"
    assert "  sw   mnli.sw (official)" in out and "  yo   mnli.yo (ours)" in out
    all9 = out[out.index("intermediate.all9.multilingual.lowres: 10 languages: "
                         "en af eu jv mr my sw te tl yo") + 1:]
    assert all9[0].startswith("  en   mnli.en (native), snli.en (native)")
    assert "squad_v1.tl (ours)" in all9[8] and "ccg" not in all9[8]
    assert D.main(["--languages", "--json", "intermediate.mnli.multilingual"]) == 0
    (reach,) = json.loads(capsys.readouterr().out)
    assert reach["languages"] == ["en", *sorted(T.XNLI_TRANSLATE_TRAIN)]
    assert {t["source"] for t in reach["tasks"][1:]} == {"official"}
    assert D.main(["--languages", "intermediate.nope"]) == 2
    assert "no registered task or mixture named 'intermediate.nope'" in capsys.readouterr().err


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_paper_scale_lowres_gin_resolves(clean_gin):
    gin_utils.parse_gin(["experiments/xstilts_large_lowres.gin"],
                        ["from xstilts import experiment"])
    grid = make_grid(**gin.get_bindings(experiment.run_experiment))
    assert tuple(grid.low_resource) == M.LOW_RESOURCE
    assert grid.model_config.num_hidden_layers == 24  # XLM-R Large
    mixtures = [m for m in grid.intermediate.values() if m]
    assert {j.source for j in plan(grid) if j.phase == "phase1"} == set(mixtures)
    for name in mixtures:
        rates = T.mixture_rates(name, lambda _: 1000)
        assert sum(rates.values()) == pytest.approx(1.0) and set(rates) == set(
            T.mixture_tasks(name))
        for task in rates:
            T.get_task(task)
    for name in ("intermediate.mnli.multilingual.lowres", "intermediate.all9.multilingual.lowres",
                 "intermediate.squad_v1.multilingual.lowres"):
        assert name in mixtures
        assert set(M.LOW_RESOURCE) <= set(D.languages(name)["languages"])
    assert budget_configs(grid)["all9.multilingual.lowres"] == "all9.en"
    assert grid.multilingual_config == "mnli.multilingual.lowres"
    # what the dry run prints of them (python -m xstilts.experiment ... --dry_run also lowers
    # every train step of XLM-R Large: ~40 s here, left to the command)
    jobs = {j.source: j for j in plan(grid) if j.phase == "phase1"}
    assert recipe_line(jobs["intermediate.all9.multilingual.lowres"]).startswith(
        "phase1 intermediate.all9.multilingual.lowres: the steps of 3 epochs of "
        "intermediate.all9.en (equal-steps budget)")
    (note,) = family_notes("intermediate.all9.multilingual.lowres")
    assert "each task family at its share in intermediate.all9.en" in note


def test_seqio_reads_our_task(corpus):
    pytest.importorskip("seqio")
    from xstilts.data.seqio_tasks import ReaderDataSource

    source = ReaderDataSource(T.get_task("mnli.yo"), corpus["data"])
    assert source.num_input_examples("train") == 7
    labels = [e["label"] for e in source.examples("train")]
    assert labels == [label for *_, label in corpus["english"]]


@pytest.mark.parametrize("task, datasets", [
    ("squad_v1", ("squad_v1",)), ("qqp", ("qqp",)), ("anli", ("anli_r1", "anli_r2", "anli_r3")),
    ("hellaswag", ("hellaswag",)), ("cosmosqa", ("cosmosqa",)),
    ("commonsenseqa", ("commonsenseqa",))])
def test_every_translator_layout_is_read_by_its_task(task, datasets, tmp_path):
    """The translator's file of each task (from the shared English samples) is read by the
    registered ``<dataset>.tl``: every English example, in order, translated."""
    from xstilts.translate import translate_task

    data = require_sample("english").parent
    if task == "cosmosqa":  # the shared sample is a dev head: a train file of it in tmp_path
        data = tmp_path / "en"
        (data / "cosmosqa").mkdir(parents=True)
        shutil.copy(require_sample("english/cosmosqa") / "valid.head300.csv",
                    data / "cosmosqa/train.csv")
    paths = translate_task(task, ["tl"], str(data), str(tmp_path), _UpperCase(tmp_path),
                           model_name="upper", allow_samples=True, progress=False)
    assert len(paths) == len(datasets)
    for dataset, path in zip(datasets, paths, strict=True):
        spec = T.get_task(f"{dataset}.tl")
        assert sources.resolve(spec, "train", tmp_path)[0] == path
        ours = list(sources.read(spec, "train", tmp_path))
        english = list(sources.read(T.get_task(f"{dataset}.en"), "train", data,
                                    allow_samples=True))
        assert len(ours) == len(english) > 0, dataset
        assert [e.get("label") for e in ours] == [e.get("label") for e in english]
        if spec.kind == "qa":  # the strict reader checked every span's alignment
            assert [e["answers"][0]["text"] for e in ours] == [
                e["answers"][0]["text"].upper() for e in english]


def test_data_manifest_and_report_name_our_translations(corpus, tmp_path):
    """``data_manifest.json`` gives each file its source (ours: the translator's model and
    hash); the report names the tasks of ours in one line, and none in a run without them."""
    from tests.test_report import _hand_meta, _hand_rows, _write
    from xstilts import report
    from xstilts.data import manifest as DM

    data = corpus["data"]
    (data_bg := tmp_path / "d" / "xnli/translate-train").mkdir(parents=True)
    shutil.copy(require_sample("xnli/translate_train_sample") / "en-bg-translated.tsv", data_bg)
    records = DM.records_for_tasks([("mnli.yo", "train"), ("mnli_ours.sw", "train"),
                                    ("mnli.en", "train")], data)
    records += DM.records_for_tasks([("mnli.bg", "train")], tmp_path / "d")
    files = {r["task"]: r["files"] for r in records}
    yo = json.loads(corpus["yo"].with_name(corpus["yo"].name + ".manifest.json").read_text())
    assert files["mnli.yo"][0] == {**files["mnli.yo"][0], "source": "translate-train-ours",
                                   "path": "xnli/translate-train/en-yo-translated.tsv",
                                   "model": "tiny", "model_sha256": yo["model_sha256"]}
    assert files["mnli.yo"][1]["source"] == "translate-train-ours"
    assert "model" not in files["mnli.yo"][1]  # the translator's manifest itself
    assert files["mnli_ours.sw"][0]["path"] == \
        "translate-train-ours/xnli/translate-train/en-sw-translated.tsv"
    assert [(f["source"], "model" in f) for f in files["mnli.bg"] + files["mnli.en"]] == [
        ("translate-train", False), ("native", False)]
    run = tmp_path / "run"
    _write(run, _hand_rows(), _hand_meta())
    DM.write_manifest(run / "data_manifest.json", records)
    text = report.write_report(run, resamples=20)
    (line,) = [x for x in text.splitlines() if x.startswith("Translations of ours")]
    assert (f"were read for: mnli.yo, mnli_ours.sw; model: tiny (sha256 "
            f"{yo['model_sha256'][:12]})") in line
    assert "mnli.en" not in line and "mnli.bg" not in line
    DM.write_manifest(run / "data_manifest.json", records[2:])  # mnli.en and mnli.bg
    assert "Translations of ours" not in report.write_report(run, resamples=20)
