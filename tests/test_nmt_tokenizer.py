"""NMTTokenizer against transformers' NllbTokenizer / M2M100Tokenizer (slow and fast).

The SentencePiece model is the shared 1000-piece ``spm/test_model.model`` (read in place); the
tokenizers get the real language-code lists (NLLB's 202, M2M100's 100) added by transformers and
are saved with ``save_pretrained``, so the files we read are the ones a checkpoint ships.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_sample
from xstilts.models.nmt_tokenizer import NMTTokenizer

transformers = pytest.importorskip("transformers")

TATOEBA = {"yor_Latn": None, "tgl_Latn": "tgl", "deu_Latn": "deu", "rus_Cyrl": "rus",
           "hin_Deva": "hin", "cmn_Hans": "cmn", "ara_Arab": "ara"}
EDGE = ["", "  ", "Hello world", "eng_Latn inside text", "a <mask> b", "x<mask>y",
        "tail </s> and <pad>", "__en__ looks like an M2M100 code", "ｈｅｌｌｏ ﬁne"]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    root = require_sample("tatoeba/v1")
    out = list(EDGE)
    for code in ("deu", "rus", "hin", "cmn", "ara", "tgl"):
        out += (root / f"tatoeba.{code}-eng.{code}").read_text("utf-8").splitlines()[:15]
    out += (root / "tatoeba.deu-eng.eng").read_text("utf-8").splitlines()[:15]
    return out


@pytest.fixture(scope="module")
def spm_path() -> str:
    return str(require_sample("spm") / "test_model.model")


def _nllb(spm_path, folder, legacy: bool):
    slow = transformers.NllbTokenizer(vocab_file=spm_path, legacy_behaviour=legacy)
    slow.save_pretrained(folder)
    return slow


def _m2m100(spm_path, folder):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.Load(spm_path)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.GetPieceSize()):
        vocab.setdefault(sp.IdToPiece(i), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    slow = transformers.M2M100Tokenizer(vocab_file=str(folder / "vocab.json"),
                                        spm_file=spm_path)
    slow.save_pretrained(folder)
    return slow


@pytest.mark.parametrize("legacy", [False, True])
def test_nllb_ids_equal_transformers(tmp_path, spm_path, texts, legacy):
    slow = _nllb(spm_path, tmp_path, legacy)
    fast = transformers.NllbTokenizerFast.from_pretrained(tmp_path, legacy_behaviour=legacy)
    ours = NMTTokenizer.from_pretrained(tmp_path)
    assert not ours.is_m2m100 and len(ours.languages) == 202
    for lang in ("yor_Latn", "tgl_Latn", "eng_Latn", "zul_Latn"):
        assert ours.lang_id(lang) == slow.convert_tokens_to_ids(lang)
        slow.src_lang = fast.src_lang = lang
        for text in texts:
            want = slow(text).input_ids
            assert ours.encode_source(text, lang) == want, (lang, text)
            assert fast(text).input_ids == want, (lang, text)  # the two HF tokenizers agree
    ids = ours.encode_source(texts[-1], "deu_Latn")
    assert ours.decode(ids) == slow.decode(ids, skip_special_tokens=True)


def test_m2m100_ids_equal_transformers(tmp_path, spm_path, texts):
    slow = _m2m100(spm_path, tmp_path)
    ours = NMTTokenizer.from_pretrained(tmp_path)
    assert ours.is_m2m100 and len(ours.languages) == 100 and "yo" in ours.languages
    for lang in ("yo", "tl", "en", "zu"):
        assert ours.lang_id(lang) == slow.get_lang_id(lang)
        slow.src_lang = lang
        for text in texts:
            assert ours.encode_source(text, lang) == slow(text).input_ids, (lang, text)
    for text in texts[len(EDGE):len(EDGE) + 5]:
        ids = ours.encode_source(text, "de")  # HF's files here do not mark __de__ special
        assert ours.decode(ids) == slow.decode(ids[1:], skip_special_tokens=True)


def test_truncation_keeps_the_special_tokens(tmp_path, spm_path, texts):
    slow = _nllb(spm_path, tmp_path, False)
    ours = NMTTokenizer.from_pretrained(tmp_path)
    slow.src_lang = "deu_Latn"
    long = " ".join(texts[len(EDGE):len(EDGE) + 10])
    assert ours.encode_source(long, "deu_Latn", max_length=16) == slow(
        long, truncation=True, max_length=16).input_ids


def test_errors_name_the_file_and_language(tmp_path, spm_path):
    _nllb(spm_path, tmp_path, False)
    ours = NMTTokenizer.from_pretrained(tmp_path)
    with pytest.raises(KeyError, match="language 'xx_Zzzz'"):
        ours.lang_id("xx_Zzzz")
    config = tmp_path / "tokenizer_config.json"
    data = json.loads(config.read_text())
    del data["added_tokens_decoder"]
    config.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: no 'added_tokens_decoder'"):
        NMTTokenizer.from_pretrained(tmp_path)
    (tmp_path / "sentencepiece.bpe.model").unlink()
    with pytest.raises(FileNotFoundError, match=r"sentencepiece\.bpe\.model: missing"):
        NMTTokenizer.from_pretrained(tmp_path)
