"""QQP and ANLI translate-train with a tiny random NLLB checkpoint: the English file's own layout
under <dataset>/translate-train/<lang>/, loaded by the English task's own reader."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, require_sample, shared_data_dir
from xstilts.data import sources, tasks
from xstilts.translate_records import read_jsonl, read_tsv

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random NLLB-layout checkpoint with its tokenizer files (the shared test spm model)."""
    from tests.nmt_reference import make_hf_nmt

    folder = tmp_path_factory.mktemp("nllb")
    tok = transformers.NllbTokenizer(vocab_file=str(require_sample("spm") / "test_model.model"))
    tok.save_pretrained(folder)
    make_hf_nmt("nllb", seed=2, eos_boost=0.3, vocab_size=len(tok)).save_pretrained(folder)
    return folder


def english_task_reads(task: str, root, relative: str) -> list[dict]:
    """The registered English task's reader (and its reader_kwargs) on our file."""
    spec = dataclasses.replace(tasks.get_task(task), splits={"train": (relative,)})
    return list(sources.read(spec, "train", root))


def test_qqp_sample_in_glue_layout(checkpoint, tmp_path):
    from xstilts.decoding import DecodeSettings
    from xstilts.translate import Translator, translate_task

    data = shared_data_dir()
    english_file = require_sample("english/qqp/glue_format/train.tsv")
    translator = Translator(str(checkpoint), DecodeSettings(num_beams=2, max_length=8))
    (path,) = translate_task("qqp", ["yo"], str(data), str(tmp_path), translator,
                             model_name="tiny", allow_samples=True, shard_size=2, progress=False)
    assert path == tmp_path / "qqp/translate-train/yo/train.tsv"
    raw_en, raw = [r for _, r in read_tsv(english_file)], [r for _, r in read_tsv(path)]
    assert path.read_text().splitlines()[0] == english_file.read_text().splitlines()[0]
    assert [{k: r[k] for k in ("id", "qid1", "qid2", "is_duplicate")} for r in raw] == [
        {k: r[k] for k in ("id", "qid1", "qid2", "is_duplicate")} for r in raw_en]
    # each question is the model's translation of that question (no row shifted or swapped)
    questions = [q for r in raw_en for q in (r["question1"], r["question2"])]
    assert [q for r in raw for q in (r["question1"], r["question2"])] == translator.translate(
        questions, "en", "yo")
    english = list(sources.read(tasks.get_task("qqp.en"), "train", data, allow_samples=True))
    rows = english_task_reads("qqp.en", tmp_path, "qqp/translate-train/yo/train.tsv")
    assert [(r["id"], r["label"]) for r in rows] == [(e["id"], e["label"]) for e in english]
    assert len(rows) == 3 and {r["label"] for r in rows} == {"0", "1"}
    manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    assert (manifest["task"], manifest["rows"], manifest["kept"]) == ("qqp.yo", 3, 3)
    assert manifest["source"] == "translate-train-ours"


def test_anli_rounds_through_the_cli(checkpoint, tmp_path):
    data = shared_data_dir()
    require_sample("english/anli/original_jsonl_sample")
    cmd = [sys.executable, "-m", "xstilts.translate", "--task", "anli", "--languages", "tl",
           "--data_dir", str(data), "--output_dir", str(tmp_path), "--model", str(checkpoint),
           "--max_length", "8", "--allow_samples", "--no_progress"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n in (1, 2, 3):
        relative = f"anli/translate-train/tl/R{n}/train.jsonl"
        assert str(tmp_path / relative) in proc.stdout
        english_file = require_sample(f"english/anli/original_jsonl_sample/R{n}/train.jsonl")
        raw_en = [r for _, r in read_jsonl(english_file)]
        raw = [r for _, r in read_jsonl(tmp_path / relative)]
        # every key kept; the English pair beside the translated one
        def rest(r):
            return {k: v for k, v in r.items() if k not in ("context", "hypothesis")}
        assert [rest(r) for r in raw] == [
            {**rest(e), "context_en": e["context"], "hypothesis_en": e["hypothesis"]}
            for e in raw_en]
        assert all(r["context"] != r["context_en"] for r in raw)
        english = list(sources.read(tasks.get_task(f"anli_r{n}.en"), "train", data,
                                    allow_samples=True))
        rows = english_task_reads(f"anli_r{n}.en", tmp_path, relative)
        assert [(r["id"], r["label"]) for r in rows] == [(e["id"], e["label"]) for e in english]
        assert [r["text_a"] for r in rows] == [r["context"] for r in raw]
        manifest = json.loads((tmp_path / (relative + ".manifest.json")).read_text())
        assert manifest["task"] == f"anli_r{n}.tl" and manifest["rows"] == len(english) >= 2


def test_a_record_without_the_field_to_translate_names_its_line(tmp_path):
    """jiant's MNLI-style keys (premise/hypothesis) pass the NLI reader but are not ANLI's."""
    from xstilts.data.readers import DataFormatError
    from xstilts.decoding import DecodeSettings
    from xstilts.translate import translate_task

    class Never:
        folder, settings, max_source_length, dtype, truncated = str(tmp_path), \
            DecodeSettings(), 64, "float32", 0

        def check_languages(self, langs, src):
            raise AssertionError("reached translation")

    (tmp_path / "anli/R1").mkdir(parents=True)
    good = {"uid": "a", "context": "A dog.", "hypothesis": "An animal.", "label": "e"}
    bad = {"uid": "b", "premise": "A cat.", "hypothesis": "An animal.", "label": "e"}
    (tmp_path / "anli/R1/train.jsonl").write_text(
        json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"anli/R1/train\.jsonl:3: no field 'context'"):
        translate_task("anli_r1", ["yo"], str(tmp_path), str(tmp_path / "out"), Never(),
                       model_name="never", progress=False)
    assert not (tmp_path / "out").exists()


def test_kept_fields_with_unicode_line_separators(tmp_path):
    """U+2028 / U+0085 in a field kept in English (ANLI's reason) survive the shards intact."""
    from xstilts.decoding import DecodeSettings
    from xstilts.translate import translate_task

    class Upper:
        folder, settings, max_source_length, dtype, truncated = str(tmp_path), \
            DecodeSettings(), 64, "float32", 0

        def check_languages(self, langs, src):
            return None

        def translate(self, texts, src, tgt):
            return [t.upper() for t in texts]

    (tmp_path / "anli/R2").mkdir(parents=True)
    records = [{"uid": str(i), "context": f"context {i}", "hypothesis": f"hypothesis {i}",
                "label": "nce"[i % 3], "reason": f"line\u2028separator\x85next {i}"}
               for i in range(4)]
    (tmp_path / "anli/R2/train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (path,) = translate_task("anli_r2", ["yo"], str(tmp_path), str(tmp_path / "out"), Upper(),
                             model_name="upper", shard_size=3, progress=False)
    assert [r for _, r in read_jsonl(path)] == [
        {**r, "context": r["context"].upper(), "hypothesis": r["hypothesis"].upper(),
         "context_en": r["context"], "hypothesis_en": r["hypothesis"]} for r in records]
