"""TFDS catalog builders as a source: records shaped like the real builders' features (built
from the real samples) go through ``tfds.testing.mock_data`` and must convert into exactly the
examples the native-file readers give. No download is ever attempted."""

import numpy as np
import pytest

from xstilts.data import readers as r
from xstilts.data import sources as S
from xstilts.data import tasks as T

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")


def _mock(records):
    def as_dataset(self, *args, **kwargs):
        signature = self.info.features.get_tensor_spec()
        return tf.data.Dataset.from_generator(lambda: iter(records), output_signature=signature)

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def test_xquad_from_tfds_equals_the_json_release(shared_data):
    native = list(r.read_squad_json(shared_data("xquad/xquad.de.json")))[:5]
    records = [
        {
            "id": e["id"],
            "title": e["title"],
            "context": e["context"],
            "question": e["question"],
            "answers": {
                "text": [a["text"] for a in e["answers"]],
                "answer_start": np.array([a["answer_start"] for a in e["answers"]], np.int32),
            },
        }
        for e in native
    ]
    with _mock(records):
        converted = list(S.examples(T.get_task("xquad.de"), "test", source="tfds"))
    assert converted == native


def test_xnli_from_tfds_picks_the_language_and_maps_labels_by_name(shared_data):
    langs = T.LANGUAGES["xnli"]
    rows = {
        lang: list(r.read_xtreme_pair_tsv(shared_data(f"xnli/xtreme_format/dev-{lang}.tsv")))[:3]
        for lang in langs
    }
    tfds_order = ["entailment", "neutral", "contradiction"]  # TFDS's ClassLabel order
    records = [
        {
            "premise": {lang: rows[lang][i]["text_a"] for lang in langs},
            "hypothesis": {
                "language": list(langs),
                "translation": [rows[lang][i]["text_b"] for lang in langs],
            },
            "label": tfds_order.index(rows["en"][i]["label"]),
        }
        for i in range(3)
    ]
    with _mock(records):
        converted = list(S.examples(T.get_task("xnli.de"), "dev", source="tfds"))
    assert [(e["text_a"], e["text_b"], e["label"]) for e in converted] == [
        (e["text_a"], e["text_b"], e["label"]) for e in rows["de"]
    ]
    assert [e["label"] for e in converted] == ["neutral", "contradiction", "entailment"]


def test_wikiann_and_anli_from_tfds(shared_data):
    (sentence,) = r.read_token_tag_file(shared_data("panx/hf_dummy/de/dev"), r.PANX_TAGS)
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]  # wikiann's ClassLabel
    record = {
        "tokens": sentence["tokens"],
        "tags": [names.index(t) for t in sentence["tags"]],
        "langs": ["de"] * len(sentence["tokens"]),
        "spans": [],
    }
    with _mock([record]):
        (converted,) = S.examples(T.get_task("panx.de"), "dev", source="tfds")
    assert converted["tokens"] == sentence["tokens"] and converted["tags"] == sentence["tags"]
    native = list(r.read_nli_jsonl(shared_data("english/anli/original_jsonl_sample/R1/dev.jsonl")))
    records = [
        {
            "uid": e["id"],
            "context": e["text_a"],
            "hypothesis": e["text_b"],
            "label": ["e", "n", "c"].index(e["label"][0]),
        }
        for e in native
    ]
    with _mock(records):
        converted = list(S.examples(T.get_task("anli_r1.en"), "dev", source="tfds"))
    assert [(e["id"], e["label"]) for e in converted] == [(e["id"], e["label"]) for e in native]


def test_tfds_metadata_and_errors():
    assert T.get_task("udpos.ta").tfds_name == "xtreme_pos/xtreme_pos_tl"  # TFDS swaps ta/tl
    assert T.get_task("tydiqa.sw").tfds_splits["test"] == "validation-sw"
    with pytest.raises(KeyError, match="no TFDS builder"):
        list(S.examples(T.get_task("ccg.en"), "train", source="tfds"))
    with pytest.raises(KeyError, match="no TFDS split for 'dev'"):
        list(S.examples(T.get_task("xquad.de"), "dev", source="tfds"))
    with pytest.raises(ValueError, match="source must be one of"):
        list(S.examples(T.get_task("xquad.de"), "test", source="hub"))
