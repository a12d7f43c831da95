"""Task and mixture registry (pure Python), the cached pipeline, and the seqio registration
(its batches and rates: tests/test_data_seqio.py)."""

import pickle

import numpy as np
import pytest

from xstilts.data import pipeline as PL
from xstilts.data import tasks as T
from xstilts.data.feature_converters import ShardInfo


def test_every_xtreme_language_has_a_task():
    for dataset, languages in T.LANGUAGES.items():
        assert sorted(T.languages_of(dataset)) == sorted(languages)
    assert len(T.LANGUAGES["udpos"]) == 33 and len(T.LANGUAGES["panx"]) == 40
    assert len(T.LANGUAGES["tatoeba"]) == 36
    xnli = T.get_task("xnli.sw")
    assert xnli.metadata["train_task"] == "mnli.en" and xnli.metadata["head"] == "nli"
    assert xnli.metadata["epochs"] == 2 and xnli.metadata["max_length"] == 256
    assert T.get_task("xquad.th").metadata["train_task"] == "squad_v1.en"
    assert T.get_task("xquad.th").max_length == 384
    assert T.get_task("udpos.en").epochs == 10 and T.get_task("panx.yo").metric == "f1_seqeval"
    assert "dev" not in T.get_task("udpos.kk").splits  # test-only languages
    assert T.get_task("ccg.en").source == "local-only"


def test_unknown_task_language_and_mixture_errors():
    with pytest.raises(KeyError, match="no language 'xx' for xnli; languages: ar bg de"):
        T.get_task("xnli.xx")
    with pytest.raises(KeyError, match="similar registered tasks: .*'xnli.de'"):
        T.get_task("xnil.de")
    with pytest.raises(KeyError, match="unknown mixture 'intermediate.mnli.fr'"):
        T.get_mixture("intermediate.mnli.fr")
    with pytest.raises(KeyError, match="no split 'train'"):
        T.get_task("xnli.de").path("train")


def test_missing_file_names_the_candidates_and_prepare(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"xnli\.de split 'dev'.*dev-de\.tsv.*xstilts\.data\.prepare"
    ):
        list(T.get_task("xnli.de").examples("dev", tmp_path))


def test_real_samples_through_the_registry(shared_data):
    root = shared_data("xnli").parent
    assert T.get_task("xnli.th").num_examples("dev", root) == 500
    assert T.get_task("mlqa.hi").num_examples("dev", root) == 202
    bucc = T.load_retrieval("bucc2018.zh", "dev", root)
    assert (len(bucc["source"]), len(bucc["target"]), len(bucc["gold"])) == (8624, 13589, 257)
    tatoeba = T.load_retrieval("tatoeba.th", "test", root)
    assert len(tatoeba["source"]) == len(tatoeba["target"]) == len(tatoeba["gold"])


def test_mixture_structure():
    assert T.mixture_tasks("intermediate.mnli.en") == ["mnli.en"]
    multi = T.mixture_tasks("intermediate.mnli.multilingual")
    assert multi[0] == "mnli.en" and len(multi) == 15
    assert set(multi[1:]) == {f"mnli.{lang}" for lang in T.LANGUAGES["xnli"] if lang != "en"}
    squad = T.mixture_tasks("intermediate.squad_v1.multilingual")
    assert "squad_v1.de" in squad and not any(t.startswith("tydiqa") for t in squad)
    # TyDiQA's own train data only in the opt-in mixture (it makes TyDiQA in-language).
    opt_in = T.mixture_tasks("intermediate.squad_v1.multilingual+tydiqa")
    assert "tydiqa.sw" in opt_in and "tydiqa.en" in opt_in and "squad_v1.de" in opt_in
    # TyDiQA-GoldP translate-train is TyDiQA's English train translated: opt-in too
    tt = T.mixture_tasks("intermediate.squad_v1.multilingual+tydiqa_tt")
    assert tt[: len(squad)] == squad and "tydiqa_tt.te" in tt and "tydiqa.en" not in tt
    all9 = T.mixture_tasks("intermediate.all9.multilingual")
    assert not any(t.startswith("tydiqa.") for t in all9)
    assert T.mixture_tasks("intermediate.qqp.multilingual") == ["qqp.en"]  # nothing translated
    anli = T.mixture_tasks("intermediate.anli_plus.en")
    assert anli == ["snli.en", "mnli.en", "anli_r1.en", "anli_r2.en", "anli_r3.en"]
    assert {T.get_task(t).metadata["head"] for t in anli} == {"nli"}  # one shared head
    all9 = T.mixture_tasks("intermediate.all9.en")
    assert len(all9) == 12  # mnli counted once; ANLI+ adds snli + 3 rounds
    assert all(T.get_task(t).language == "en" for t in all9)
    assert set(T.mixture_tasks("intermediate.all9.multilingual")) > set(all9)
    with_mlm = T.mixture_tasks("intermediate.mnli.en+mlm")
    assert with_mlm[0] == "mnli.en" and "mlm.sw" in with_mlm


def test_mixture_rates_proportional_capped_temperature_and_mlm_share():
    sizes = {t: 1000 for t in T.TASKS}
    sizes.update({"mnli.en": 392_702, "snli.en": 549_367, "anli_r1.en": 16_946,
                  "anli_r2.en": 45_460, "anli_r3.en": 100_459})  # fmt: skip
    anli = T.mixture_rates("intermediate.anli_plus.en", sizes)
    total = 392_702 + 549_367 + 16_946 + 45_460 + 100_459
    assert anli["anli_r1.en"] == pytest.approx(16_946 / total)  # proportional (jiant)
    all9 = T.mixture_rates("intermediate.all9.en", sizes)
    cap = T.ALL9_CAP  # every big task capped to the same rate
    assert all9["mnli.en"] == pytest.approx(all9["snli.en"]) == pytest.approx(all9["anli_r3.en"])
    assert all9["anli_r1.en"] / all9["mnli.en"] == pytest.approx(16_946 / cap)
    sizes["tydiqa.sw"] = 10
    multi = T.mixture_rates("intermediate.squad_v1.multilingual+tydiqa", sizes)
    raw = {t: sizes[t] ** (1 / T.MULTILINGUAL_TEMPERATURE) for t in multi}
    assert multi["tydiqa.sw"] == pytest.approx(raw["tydiqa.sw"] / sum(raw.values()))
    mlm = T.mixture_rates("intermediate.mnli.en+mlm", sizes)
    assert sum(mlm.values()) == pytest.approx(1.0)
    assert mlm["mnli.en"] == pytest.approx(1 - T.MLM_SHARE)
    assert sum(p for t, p in mlm.items() if t.startswith("mlm.")) == pytest.approx(T.MLM_SHARE)


def test_pipeline_cache_is_written_atomically(shared_data, tmp_path, monkeypatch):
    from xstilts.tokenization import XLMRTokenizer

    root = shared_data("xnli").parent
    tok = XLMRTokenizer(shared_data("spm/test_model.model"))
    cache = tmp_path / "cache"

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pickle, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        PL.task_features("pawsx.ko", "dev", tok, data_dir=root, cache_dir=cache)
    assert list(cache.iterdir()) == []  # nothing half-written
    monkeypatch.undo()
    first = PL.task_features("pawsx.ko", "dev", tok, data_dir=root, cache_dir=cache)
    (cached,) = cache.iterdir()
    assert cached.suffix == ".pkl" and len(first) == 500
    again = PL.task_features("pawsx.ko", "dev", tok, data_dir=root, cache_dir=cache)
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(first, again, strict=True))
    batcher = PL.task_batcher("pawsx.ko", "dev", tok, batch_size=7, data_dir=root, cache_dir=cache,
                              max_length=256, shard_info=ShardInfo(1, 2))  # fmt: skip
    batch = batcher.batch(0)
    assert batch["input_ids"].shape == (7, 256) and batch["labels"].dtype == np.int32


def test_synthetic_files_feed_the_registry_and_a_mixture(tmp_path, shared_data):
    from xstilts.data.synthetic import SyntheticWorld
    from xstilts.tokenization import XLMRTokenizer

    SyntheticWorld(seed=0).write_files(tmp_path / "synthetic", {"train": 30, "dev": 5, "test": 5})
    tok = XLMRTokenizer(shared_data("spm/test_model.model"))
    name = "synthetic.intermediate.nli.multilingual+mlm"
    mixture = PL.mixture_batcher(name, tok, batch_size=4, data_dir=tmp_path, max_length=64, seed=1)
    seen = {name for name, _ in mixture.iterate(0, 200)}
    assert {"synthetic.nli.xc", "synthetic.mlm.en", "synthetic.mlm.xd"} <= seen
    # Like the real releases, the lowest-resource language has no "translated" NLI train data
    # (and xc a tenth of English's): the multilingual arm never sees xd's NLI.
    assert "synthetic.nli.xd" not in seen
    assert not (tmp_path / "synthetic/nli/train-xd.tsv").exists()
    assert len((tmp_path / "synthetic/nli/train-xc.tsv").read_text().splitlines()) == 3
    name, batch = mixture.batch(5)
    assert batch["input_ids"].shape == (4, 64)


def test_seqio_registration_is_tokenized(shared_data):
    seqio = pytest.importorskip("seqio")
    from xstilts.data import seqio_tasks
    from xstilts.tokenization import XLMRTokenizer

    root = shared_data("xnli").parent
    spm = shared_data("spm/test_model.model")
    tasks, mixtures = seqio_tasks.register_all(root, spm)
    assert "intermediate.all9.multilingual+mlm" in mixtures and "xnli.de" in tasks
    task = seqio.get_mixture_or_task("xnli.de")
    assert task.metadata["train_task"] == "mnli.en"
    first = next(task.get_dataset({"inputs": 256}, split="dev", shuffle=False)
                 .as_numpy_iterator())  # fmt: skip
    tok = XLMRTokenizer(spm)
    assert first["inputs_b"].tolist() == tok.encode_text(
        "Er rief seine Mutter an, sobald er aus dem Schulbus stieg.")
    assert first["targets"] == T.get_task("xnli.de").labels.index("neutral")
    with_mlm = seqio.get_mixture_or_task("intermediate.anli_plus.en+mlm")
    assert {"mnli.en", "mlm.sw"} <= {t.name for t in with_mlm.tasks}
    assert seqio.ShardInfo(1, 2) == seqio.ShardInfo(index=1, num_shards=2)
    batcher = PL.FeatureBatcher([{"input_ids": np.array([0, 2]), "labels": 0}] * 4,
                                "classification", batch_size=1, length=4,
                                shard_info=seqio.ShardInfo(1, 2))  # fmt: skip
    assert batcher.shard == ShardInfo(1, 2)


def test_ccg_open_tag_set_from_train_split(tmp_path, shared_data):
    from xstilts.tokenization import XLMRTokenizer

    (tmp_path / "ccg").mkdir()
    (tmp_path / "ccg/ccg.train").write_text(
        "Pierre Vinken will join .\tN/N N (S[dcl]\\NP)/(S[b]\\NP) S[b]\\NP .\n"
    )
    (tmp_path / "ccg/ccg.dev").write_text("Vinken joins\tN S[dcl]\\NP\n")  # S[dcl]\NP unseen
    spec = T.get_task("ccg.en")
    labels = PL.task_labels(spec, tmp_path)
    assert labels == ("(S[dcl]\\NP)/(S[b]\\NP)", ".", "N", "N/N", "S[b]\\NP", PL.UNKNOWN_TAG)
    tok = XLMRTokenizer(shared_data("spm/test_model.model"))
    (dev,) = PL.task_features("ccg.en", "dev", tok, data_dir=tmp_path, max_length=32)
    tags = [labels[i] for i in dev["labels"][dev["label_mask"] == 1]]
    assert tags == ["N", PL.UNKNOWN_TAG]


def test_mixture_epoch_size_caps_and_lets_mlm_add_steps():
    big = 250_000  # every task above the all9 cap
    all9 = T.mixture_tasks("intermediate.all9.en")
    assert T.mixture_epoch_size("intermediate.all9.en", lambda t: big) == \
        T.ALL9_CAP * len(all9)
    sizes = {t: 1_000 * (i + 1) for i, t in enumerate(all9)}  # all under the cap: plain sum
    assert T.mixture_epoch_size("intermediate.all9.en", sizes) == sum(sizes.values())
    # MLM mixed in takes MLM_SHARE of the draws: the epoch over MNLI is 1 / (1 - 0.2) longer,
    # however much MLM text there is.
    for mlm_size in (10, 10**7):
        size = T.mixture_epoch_size(
            "intermediate.mnli.en+mlm", lambda t, m=mlm_size: m if t.startswith("mlm.") else 800)
        assert size == pytest.approx(800 / (1 - T.MLM_SHARE))
    # Uncapped temperature mixture: every example; pure MLM: all of its text.
    multi = T.mixture_tasks("intermediate.mnli.multilingual")
    assert T.mixture_epoch_size("intermediate.mnli.multilingual", lambda t: 7) == 7 * len(multi)
    langs = T.mixture_tasks("synthetic.mlm")
    assert T.mixture_epoch_size("synthetic.mlm", lambda t: 5) == 5 * len(langs)
