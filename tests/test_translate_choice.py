"""Multiple-choice translate-train (HellaSwag, Cosmos QA, CommonsenseQA) on the shared samples:
each release's own layout, loaded by the English task's reader; drops counted by reason."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import require_sample, shared_data_dir
from xstilts import translate_choice
from xstilts.data import sources, tasks
from xstilts.translate_choice import REASONS, drop_reason
from xstilts.translate_layouts import LAYOUTS

transformers = pytest.importorskip("transformers")

COSMOSQA_SAMPLE = "english/cosmosqa/valid.head300.csv"


def data_dir(task: str, tmp_path):
    """The shared data dir; for Cosmos QA (whose sample is its dev split) a dir whose
    cosmosqa/train.csv is a symbolic link to the shared sample (read in place, not copied)."""
    if task != "cosmosqa":
        return shared_data_dir()
    root = tmp_path / "data"
    (root / "cosmosqa").mkdir(parents=True)
    (root / "cosmosqa/train.csv").symlink_to(require_sample(COSMOSQA_SAMPLE))
    return root


def english(task: str, root) -> list[dict]:
    return list(sources.read(tasks.get_task(f"{task}.en"), "train", root, allow_samples=True))


def ours(task: str, root, lang: str) -> list[dict]:
    """Our file read by the registered English task's reader (with its reader_kwargs)."""
    relative = LAYOUTS[task].path.format(lang=lang)
    spec = dataclasses.replace(tasks.get_task(f"{task}.en"), splits={"train": (relative,)})
    return list(sources.read(spec, "train", root))


def manifest(path) -> dict:
    return json.loads(path.with_name(path.name + ".manifest.json").read_text())


class Scripted:
    """A stand-in translator: ``str.upper``, except the texts in ``script``; records each call."""

    max_source_length, dtype, truncated = 64, "float32", 0

    def __init__(self, folder, script=None):
        from xstilts.decoding import DecodeSettings

        self.folder, self.settings, self.script, self.calls = str(folder), DecodeSettings(), \
            script or {}, []

    def check_languages(self, langs, src):
        return None

    def translate(self, texts, src, tgt):
        self.calls.append(len(texts))
        return [self.script.get(t, t.upper()) for t in texts]


@pytest.mark.parametrize("task", ["hellaswag", "cosmosqa", "commonsenseqa"])
def test_upper_case_translation_keeps_every_example(task, tmp_path):
    from xstilts.translate import translate_task

    root = data_dir(task, tmp_path)
    translator = Scripted(tmp_path)
    (path,) = translate_task(task, ["yo"], str(root), str(tmp_path / "out"), translator,
                             model_name="upper", allow_samples=True, max_examples=5,
                             shard_size=5, progress=False)
    assert path == tmp_path / "out" / LAYOUTS[task].path.format(lang="yo")
    expected = english(task, root)[:5]
    assert len(translator.calls) == 1  # every segment of the shard in one call
    assert manifest(path)["kept"] == len(expected) >= 2
    assert manifest(path)["dropped"] == dict.fromkeys(REASONS, 0)
    assert ours(task, tmp_path / "out", "yo") == [
        {**e, "context": e["context"].upper(), "question": e["question"].upper(),
         "choices": [c.upper() for c in e["choices"]]} for e in expected]


def test_drops_are_counted_by_reason(tmp_path):
    from xstilts.translate import translate_task

    root = shared_data_dir()
    require_sample("english/commonsenseqa/original_format_sample")
    script = {"bookstore": " ", "pizza": "FAST FOOD RESTAURANT",
              "What island country is ferret popular?": ""}
    (path,) = translate_task("commonsenseqa", ["tl"], str(root), str(tmp_path),
                             Scripted(tmp_path, script), model_name="scripted",
                             allow_samples=True, shard_size=2, progress=False)
    assert manifest(path)["dropped"] == {"empty_choice": 1, "empty_context": 0,
                                         "empty_question": 1, "duplicate_choices": 1}
    expected = english("commonsenseqa", root)
    kept = ours("commonsenseqa", tmp_path, "tl")
    assert manifest(path)["kept"] == len(kept) == len(expected) - 3
    assert [(r["id"], r["label"]) for r in kept] == [
        (e["id"], e["label"]) for e in expected if not {*script} & {e["question"], *e["choices"]}]


def test_drop_reason():
    assert drop_reason(["c", "a", "b"], ["C", "A", "B"], 1, ("context",)) is None
    assert drop_reason(["c", "a", "b"], ["", "A", ""], 1, ("context",)) == "empty_choice"
    assert drop_reason(["c", "q", "a", "b"], ["C", " ", "A", "B"], 2,
                       ("context", "question")) == "empty_question"
    assert drop_reason(["c", "a", "b"], ["C", "A", "A "], 1, ("context",)) == "duplicate_choices"
    # an English choice that was empty (or repeated) already is not the translation's fault
    assert drop_reason(["c", "a", "", "a"], ["C", "A", "", "A"], 1, ("context",)) is None


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    from tests.nmt_reference import make_hf_nmt
    from xstilts.decoding import DecodeSettings
    from xstilts.translate import Translator

    folder = tmp_path_factory.mktemp("nllb")
    tok = transformers.NllbTokenizer(vocab_file=str(require_sample("spm") / "test_model.model"))
    tok.save_pretrained(folder)
    make_hf_nmt("nllb", seed=2, eos_boost=0.3, vocab_size=len(tok)).save_pretrained(folder)
    return Translator(str(folder), DecodeSettings(num_beams=2, max_length=8), batch_size=16)


@pytest.mark.parametrize("task", ["hellaswag", "cosmosqa", "commonsenseqa"])
def test_tiny_nllb_translation_read_back(task, translator, tmp_path):
    """The random model's outputs barely depend on the input (most examples get colliding or
    empty choices and are dropped): the file must hold exactly the examples its own translation
    of each segment keeps, with those translations, ids and labels."""
    from xstilts.translate import translate_task

    root = data_dir(task, tmp_path)
    (path,) = translate_task(task, ["sw"], str(root), str(tmp_path / "out"), translator,
                             model_name="tiny", allow_samples=True, max_examples=4,
                             shard_size=4, progress=False)
    records = LAYOUTS[task].units(sources.resolve(tasks.get_task(f"{task}.en"), "train", root,
                                         allow_samples=True), [])[:4]
    segments = [kind_segments(task, r) for r in records]
    flat = translator.translate([s for segs in segments for s in segs if s.strip()], "en", "sw")
    done = iter(flat)
    translated = [[next(done) if s.strip() else s for s in segs] for segs in segments]
    prefix = {"hellaswag": ("context",), "cosmosqa": ("context", "question"),
              "commonsenseqa": ("question",)}[task]
    reasons = [drop_reason(e, t, len(prefix), prefix) for e, t in
               zip(segments, translated, strict=True)]
    info = manifest(path)
    assert info["task"] == f"{task}.sw" and info["rows"] == len(records) >= 2
    assert info["dropped"] == {k: reasons.count(k) for k in REASONS}
    expected = english(task, root)[:4]
    rows = ours(task, tmp_path / "out", "sw")
    assert info["kept"] == len(rows) == reasons.count(None)
    assert rows == [
        {**e, "context": t[0] if prefix[0] == "context" else "",
         "question": t[len(prefix) - 1] if prefix[-1] == "question" else "",
         "choices": t[len(prefix):]}
        for e, t, reason in zip(expected, translated, reasons, strict=True) if reason is None]


def kind_segments(task: str, record: dict) -> list[str]:
    return {"hellaswag": translate_choice.HELLASWAG, "cosmosqa": translate_choice.COSMOSQA,
            "commonsenseqa": translate_choice.COMMONSENSEQA}[task].segments(record)
