"""Provenance (data/manifest.py) and `python -m xstilts.data.describe`: files with sha256,
examples as the reader yields them, drops by reason, rates and shares; no silent fallbacks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xstilts.data import describe as D
from xstilts.data import manifest as M
from xstilts.data import pipeline as PL
from xstilts.data import readers as r
from xstilts.data import sources
from xstilts.data import tasks as T
from xstilts.data.spec import TaskSpec
from xstilts.data.synthetic import SyntheticWorld

REPO_ROOT = Path(__file__).resolve().parents[1]
MIXTURE = "synthetic.intermediate.all.multilingual+mlm"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    SyntheticWorld(seed=0).write_files(root / "synthetic",
                                       sizes={"train": 48, "dev": 16, "test": 16})  # fmt: skip
    return root


@pytest.fixture(scope="module")
def tok():
    from tests.conftest import require_sample
    from xstilts.tokenization import XLMRTokenizer

    return XLMRTokenizer(require_sample("spm/test_model.model"))


def _reader_examples(task: str, root: Path) -> list[dict]:
    return [json.loads(json.dumps(e)) for e in T.get_task(task).examples("train", root)]


def test_describe_a_synthetic_mixture(world):
    described = D.describe(MIXTURE, world, examples=2)
    assert described["name"] == MIXTURE and described["type"] == "mixture"
    records = described["tasks"]
    assert [rec["task"] for rec in records] == T.mixture_tasks(MIXTURE)
    for rec in records:
        assert set(D.SCHEMA_KEYS) <= set(rec) and rec["split"] == "train"
        (file,) = rec["files"]
        path = world / file["path"]
        assert file["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert file["bytes"] == path.stat().st_size and not file["sample"]
        examples = _reader_examples(rec["task"], world)
        assert rec["examples"] == len(examples) and rec["dropped"] == {}
        assert rec["first"] == examples[:2]
    assert sum(rec["share"] for rec in records) == pytest.approx(1.0)
    assert sum(rec["rate"] for rec in records) == pytest.approx(1.0)
    sizes = {rec["task"]: rec["examples"] for rec in records}
    assert {rec["task"]: rec["rate"] for rec in records} == pytest.approx(
        T.mixture_rates(MIXTURE, sizes))
    assert "synthetic.nli.en" in D.table(described)  # the readable form


def test_featurized_rates_are_the_batchers(world, tok, tmp_path):
    name = "synthetic.intermediate.qa.multilingual"
    described = D.describe(name, world, tokenizer=tok, max_length=64, examples=0)
    batcher = PL.mixture_batcher(name, tok, batch_size=4, data_dir=world, max_length=64,
                                 cache_dir=tmp_path)  # fmt: skip
    rates = {rec["task"]: rec["rate"] for rec in described["tasks"]}
    assert rates == pytest.approx(batcher.rates)
    for rec in described["tasks"]:
        assert rec["featurized"] and rec["max_length"] == 64 and rec["first"] == []
        assert rec["features"] == len(batcher.batchers[rec["task"]].features)
    # QA examples become several windows: the example share differs from the step rate
    shares = {rec["task"]: rec["share"] for rec in described["tasks"]}
    assert sum(shares.values()) == pytest.approx(1.0) and shares != pytest.approx(rates)
    # the driver's call: free from the feature cache, and written deterministically
    records = M.records_for_mixture(name, world, tok, 64, cache_dir=tmp_path)
    assert [rec["rate"] for rec in records] == pytest.approx(list(rates.values()))
    out = M.write_manifest(tmp_path / "run" / "data_manifest.json", records[::-1])
    again = M.write_manifest(tmp_path / "other.json", records)
    assert out.read_bytes() == again.read_bytes()
    assert M.read_manifest(out) == sorted(records, key=lambda rec: rec["task"])


def test_cli_json_parses_and_matches(world, capsys):
    assert D.main([MIXTURE, "--data_dir", str(world), "--json", "--examples", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1  # exactly one object
    assert json.loads(printed) == json.loads(json.dumps(D.describe(MIXTURE, world, examples=1)))
    result = subprocess.run(
        [sys.executable, "-m", "xstilts.data.describe", "synthetic.nli.xa", "--data_dir",
         str(world), "--json", "--examples", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (rec,) = json.loads(result.stdout)["tasks"]
    assert rec["task"] == "synthetic.nli.xa" and rec["rate"] == rec["share"] == 1.0
    assert rec["first"] == _reader_examples("synthetic.nli.xa", world)[:3]


def test_errors_name_what_was_expected(world, tmp_path, capsys):
    root = tmp_path / "partial"
    shutil.copytree(world / "synthetic", root / "synthetic")
    (root / "synthetic/nli/train-xb.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="synthetic/nli/train-xb.tsv") as error:
        D.describe(MIXTURE, root)
    assert "1 of 13 task files missing" in str(error.value)
    assert D.main(["synthetic.nli.xb", "--data_dir", str(root)]) == 2
    assert str(root / "synthetic/nli/train-xb.tsv") in capsys.readouterr().err
    assert D.main(["synthetic.nli.xq", "--data_dir", str(root)]) == 2
    assert "no registered task or mixture named 'synthetic.nli.xq'" in capsys.readouterr().err


def test_samples_only_when_asked(shared_data):
    root = shared_data("english/mnli/glue_format/train.tsv").parents[3]
    spec = T.get_task("mnli.en")
    with pytest.raises(FileNotFoundError) as error:
        sources.resolve(spec, "train", root)
    message = str(error.value)
    assert str(root / "mnli/train.tsv") in message and "allow_samples=True" in message
    with pytest.raises(FileNotFoundError, match="mnli/train.tsv"):
        PL.task_features("mnli.en", "train", None, data_dir=root)
    (rec,) = D.describe("mnli.en", root, allow_samples=True)["tasks"]
    assert rec["files"][0] == {**rec["files"][0], "path": "english/mnli/glue_format/train.tsv",
                               "sample": True}  # fmt: skip
    assert rec["examples"] == 3


def _read_jsonl(path: Path):
    """Example dicts exactly as written (a reader that lets bad examples through)."""
    return (json.loads(line) for line in Path(path).read_text().splitlines())


@pytest.fixture
def probe_tasks(tmp_path):
    """Two unregistered-by-default tasks on hand-made files with every drop reason."""
    (tmp_path / "probe").mkdir()
    long_text = " ".join(["anything"] * 40)
    pairs = [
        {"id": "1", "text_a": "Yes .", "text_b": "No .", "label": "entailment"},
        {"id": "2", "text_a": long_text, "text_b": "The end .", "label": "neutral"},  # too long
        {"id": "3", "text_a": "", "text_b": "Nothing on the left .", "label": "neutral"},  # empty
        {"id": "4", "text_a": "No label here .", "text_b": "None at all .", "label": None},
    ]
    (tmp_path / "probe/pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    context = "Alpha beta gamma delta . " + " ".join(f"word{i}" for i in range(60)) + " end . "
    long_answer = " ".join(f"word{i}" for i in range(60))
    qas = [
        {"id": "ok", "question": "what is beta ?", "answers": [{"text": "beta",
                                                                "answer_start": 6}]},
        {"id": "moved", "question": "what moved ?",  # misaligned in the file: reader drops
         "answers": [{"text": "gamma", "answer_start": 0}]},
        {"id": "space", "question": "which space ?",  # aligned text, but no token covers it
         "answers": [{"text": " ", "answer_start": len(context) - 1}]},
        {"id": "wide", "question": " ".join(["why"] * 80),  # long question, long answer
         "answers": [{"text": long_answer, "answer_start": context.index("word0")}]},
    ]
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    (tmp_path / "probe/qa.json").write_text(json.dumps(squad), encoding="utf-8")
    specs = [
        TaskSpec(name="probe_pairs.en", dataset="probe_pairs", language="en", role="intermediate",
                 kind="classification", labels=r.NLI_LABELS, reader=_read_jsonl, max_length=16,
                 splits={"train": ("probe/pairs.jsonl",), "dev": ("probe/pairs.jsonl",)}),
        TaskSpec(name="probe_qa.en", dataset="probe_qa", language="en", role="intermediate",
                 kind="qa", reader=r.read_squad_json, reader_kwargs={"on_misaligned": "drop"},
                 max_length=96, splits={"train": ("probe/qa.json",), "dev": ("probe/qa.json",)}),
    ]  # fmt: skip
    for spec in specs:
        T.register_task(spec, replace=True)
    yield tmp_path
    for spec in specs:
        T.TASKS.pop(spec.name)


def test_drop_counts_by_reason(probe_tasks, tok, tmp_path):
    root = probe_tasks
    stats: dict = {}
    features = PL.task_features("probe_pairs.en", "train", tok, data_dir=root, stats=stats,
                                cache_dir=tmp_path / "cache")  # fmt: skip
    assert stats == {"examples": 4, "features": 2, "dropped": {"empty": 1, "missing_label": 1},
                     "flagged": {}, "truncated": {"too_long": 1}}  # fmt: skip
    assert len(features) == 2 and all(len(f["input_ids"]) <= 16 for f in features)
    cached: dict = {}
    PL.task_features("probe_pairs.en", "train", tok, data_dir=root, stats=cached,
                     cache_dir=tmp_path / "cache")  # fmt: skip
    assert cached == stats  # a cache hit keeps the counts
    dev: dict = {}
    assert len(PL.task_features("probe_pairs.en", "dev", tok, data_dir=root, stats=dev)) == 4
    assert dev["dropped"] == {} and dev["flagged"] == {"empty": 1, "missing_label": 1}

    (qa,) = M.records_for_tasks([("probe_qa.en", "train")], root, tok)
    assert qa["examples"] == 3 and qa["kept"] == 2  # "moved" never left the reader
    assert qa["dropped"] == {"misaligned_answer_span": 2}  # one by the reader, one featurizing
    assert qa["truncated"] == {"answer_beyond_window": 1, "question_too_long": 1}
    windows = PL.task_features("probe_qa.en", "train", tok, data_dir=root)
    assert {w["example_id"] for w in windows} == {"ok", "wide"}
    # without a tokenizer: what the reader and the labels tell
    (bare,) = M.records_for_tasks([("probe_pairs.en", "train")], root)
    assert not bare["featurized"] and bare["features"] is None and bare["truncated"] == {}
    assert bare["dropped"] == {"empty": 1, "missing_label": 1}


def test_write_manifest_is_atomic_and_merges(tmp_path, monkeypatch):
    rec = {"task": "a.en", "split": "train", "mixture": None, "max_length": 8, "examples": 1}
    path = M.write_manifest(tmp_path / "m.json", [rec])
    M.write_manifest(path, [{**rec, "task": "b.en"}], merge=True)
    assert [x["task"] for x in M.read_manifest(path)] == ["a.en", "b.en"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        M.write_manifest(path, [{**rec, "examples": 2}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # old file, no temporary
    assert M.read_manifest(path)[0]["examples"] == 1


def test_describe_mnli_multilingual_on_translate_train_layout(shared_data, tmp_path):
    sample = shared_data("xnli/translate_train_sample/en-bg-translated.tsv")
    (tmp_path / "mnli").mkdir()
    shutil.copy(shared_data("english/mnli/glue_format/train.tsv"), tmp_path / "mnli/train.tsv")
    target = tmp_path / "xnli/translate-train"
    target.mkdir(parents=True)
    for task in T.mixture_tasks("intermediate.mnli.multilingual")[1:]:
        # the real Bulgarian file; the other languages' files are copies of it (layout only)
        shutil.copy(sample, target / f"en-{T.get_task(task).language}-translated.tsv")
    described = D.describe("intermediate.mnli.multilingual", tmp_path, examples=1)
    records = {rec["task"]: rec for rec in described["tasks"]}
    assert list(records) == T.mixture_tasks("intermediate.mnli.multilingual")
    assert sum(rec["share"] for rec in records.values()) == pytest.approx(1.0)
    bg = records["mnli.bg"]
    assert bg["files"][0]["path"] == "xnli/translate-train/en-bg-translated.tsv"
    assert bg["files"][0]["sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()
    assert bg["examples"] == 2 and bg["dropped"] == {}
    first = bg["first"][0]
    assert first["label"] == "entailment"
    assert first["text_a"].startswith("Поисках тези записи писмено на 18 юли 2001")
