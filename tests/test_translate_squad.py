"""SQuAD translate-train: answer projection (markers, exact and fuzzy fallbacks, drops) and the
CLI on the SQuAD sample with a tiny random NLLB checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, require_sample, shared_data_dir
from tests.translate_stand_in import UpperCase as _UpperCase
from xstilts import translate_squad
from xstilts.data import readers, sources, tasks
from xstilts.translate_squad import project


def test_projection_methods():
    context = "Die Katze sitzt auf der grossen Matte im Haus."
    assert project(context, "Die Katze sitzt auf der [grossen Matte] im Haus.", "x") == (
        "marker", context.index("grossen Matte"), "grossen Matte")
    # markers lost: the answer translated alone, exactly, else the closest window of words
    assert project(context, "Die Katze sitzt auf der grossen Matte.", "Matte") == (
        "exact", context.index("Matte"), "Matte")
    method, start, text = project(context, None, "grosen Mate")
    assert (method, text) == ("fuzzy", "grossen Matte") and context[start:].startswith(text)
    assert project(context, "[]", "Flugzeug") == ("dropped", -1, "")
    # two occurrences: the one nearest the marker's place
    twice = "Matte hier, und dort die Matte."
    assert project(twice, "Matte hier, und dort die [Matte].", "") == (
        "marker", twice.rindex("Matte"), "Matte")


def test_identity_translation_keeps_every_answer():
    path = require_sample("english/squad") / "allennlp_squad_v1.1_sample.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    units = translate_squad.units(doc)
    rows = translate_squad.translate_paragraphs(units, lambda texts: list(texts))
    text, counts = translate_squad.assemble([json.dumps(r) + "\n" for r in rows])
    questions = sum(len(u["paragraph"]["qas"]) for u in units)
    assert counts == {"marker": questions, "exact": 0, "fuzzy": 0, "dropped": 0}
    for article in doc["data"]:  # a training set: the first answer of each question
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa["answers"] = qa["answers"][:1]
    assert json.loads(text)["data"] == doc["data"]  # same titles, contexts, ids, answer spans


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from tests.nmt_reference import make_hf_nmt

    folder = tmp_path_factory.mktemp("nllb")
    tok = transformers.NllbTokenizer(vocab_file=str(require_sample("spm") / "test_model.model"))
    tok.save_pretrained(folder)
    make_hf_nmt("nllb", seed=2, eos_boost=0.3, vocab_size=len(tok)).save_pretrained(folder)
    return folder


def test_squad_sample_translated_and_read_back(checkpoint, tmp_path):
    data = shared_data_dir()
    require_sample("english/squad")
    cmd = [sys.executable, "-m", "xstilts.translate", "--task", "squad_v1", "--languages", "de",
           "--data_dir", str(data), "--output_dir", str(tmp_path), "--model", str(checkpoint),
           "--max_length", "10", "--allow_samples", "--no_progress"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "translate-train-ours/squad/translate-train/squad.translate.train.en-de.json"
    manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    assert manifest["task"] == "squad_v1_ours.de"
    english = list(sources.read(tasks.get_task("squad_v1.en"), "train", data,
                                allow_samples=True))
    assert manifest["questions"] == len(english) == sum(manifest["answers"].values())
    kept = len(english) - manifest["dropped"]
    rows = list(readers.read_squad_json(path, on_misaligned="drop"))
    assert len(rows) == kept
    # de has XTREME's release: ours is squad_v1_ours.de (under translate-train-ours/)
    assert len(list(sources.read(tasks.get_task("squad_v1_ours.de"), "train", tmp_path))) == kept


def test_projected_answers_are_read_back_by_the_task(tmp_path):
    from xstilts.translate import translate_task

    data = shared_data_dir()
    (path,) = translate_task("squad_v1", ["de"], str(data), str(tmp_path),
                             _UpperCase(tmp_path), model_name="upper", allow_samples=True,
                             shard_size=1, progress=False)
    manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    assert manifest["answers"] == {"marker": 5, "exact": 0, "fuzzy": 0, "dropped": 0}
    rows = list(sources.read(tasks.get_task("squad_v1_ours.de"), "train", tmp_path))
    english = list(sources.read(tasks.get_task("squad_v1.en"), "train", data,
                                allow_samples=True))
    assert [(r["id"], r["question"]) for r in rows] == [
        (e["id"], e["question"].upper()) for e in english]
    for r, e in zip(rows, english, strict=True):  # the reader checked each span's alignment
        assert r["answers"] == [{"text": e["answers"][0]["text"].upper(),
                                 "answer_start": e["answers"][0]["answer_start"]}]
    # written at the release's path (asked for): the official squad_v1.de refuses it
    (at_release,) = translate_task("squad_v1", ["de"], str(data), str(tmp_path / "o"),
                                   _UpperCase(tmp_path), model_name="upper", allow_samples=True,
                                   progress=False, at_release_path=True)
    assert at_release == tmp_path / "o/squad/translate-train/squad.translate.train.en-de.json"
    with pytest.raises(readers.DataFormatError, match=f"{at_release}: our translation .*"
                       "read it as the task squad_v1_ours.de"):
        list(sources.read(tasks.get_task("squad_v1.de"), "train", tmp_path / "o"))
    assert len(list(sources.read(tasks.get_task("squad_v1_ours.de"), "train",
                                 tmp_path / "o"))) == 5
