"""The synthetic multilingual world: seeded, typologically varied, aligned across languages, and
readable through the same readers as real data."""

from collections import Counter

import pytest

from xstilts.data import readers as r
from xstilts.data.synthetic import LOW_RESOURCE, Event, SyntheticWorld


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(seed=0)


def test_seeded(world):
    again = SyntheticWorld(seed=0)
    other = SyntheticWorld(seed=1)
    assert again.mlm_corpus("xa", 20) == world.mlm_corpus("xa", 20)
    assert again.qa("xd", 5) == world.qa("xd", 5)
    assert other.lexicons["xa"] != world.lexicons["xa"]
    assert other.mlm_corpus("en", 20) != world.mlm_corpus("en", 20)


def test_word_orders_and_lexicons(world):
    event = Event(subject="Ana", verb=0, obj=1, adjective=0, location="Oslo")
    lex = {lang: world.lexicons[lang] for lang in world.languages}
    assert world.sentence(event, "en") == "Ana sees the red boat in Oslo ."
    xa = world.sentence(event, "xa").split()  # SOV, adjective after noun, postposition
    assert xa == ["Ana", lex["xa"]["det"][0], lex["xa"]["noun"][1], lex["xa"]["adj"][0], "Oslo",
                  lex["xa"]["prep"][0], lex["xa"]["verb"][0], "."]  # fmt: skip
    xb = world.sentence(event, "xb").split()  # VSO
    assert xb[:2] == [lex["xb"]["verb"][0], "Ana"]
    xc = world.sentence(event, "xc").split()  # Greek-like script, adjective after noun
    assert xc[3:5] == [lex["xc"]["noun"][1], lex["xc"]["adj"][0]]
    assert any("\u0370" <= ch <= "\u03ff" for ch in "".join(lex["xc"]["noun"]))
    assert any("\u0400" <= ch <= "\u04ff" for ch in "".join(lex["xd"]["verb"]))
    for lang in ("xa", "xb", "xc", "xd"):  # own lexicons, no English words
        words = {w for key in ("verb", "noun", "adj") for w in lex[lang][key]}
        assert len(words) == 30 and not words & set(lex["en"]["noun"] + lex["en"]["verb"])


def test_low_resource_languages_have_little_text(world):
    sizes = {lang: len(world.mlm_corpus(lang)) for lang in world.languages}
    for lang in LOW_RESOURCE:
        assert sizes[lang] < 0.05 * sizes["en"]
    assert sizes["en"] > sizes["xa"] > sizes["xb"] > sizes["xc"] > sizes["xd"]


def test_nli_semantics_and_translation(world):
    english = world.nli("en", 60)
    translated = world.nli("xd", 60)
    assert [e["label"] for e in english] == [e["label"] for e in translated]
    assert Counter(e["label"] for e in english) == {
        "entailment": 20,
        "neutral": 20,
        "contradiction": 20,
    }
    for en, xd in zip(english, translated, strict=True):
        names = [w for w in en["text_a"].split() if w[0].isupper()]
        assert all(name in xd["text_a"] for name in names)  # names carry over
        a, b = Counter(en["text_a"].split()), Counter(en["text_b"].split())
        if en["label"] == "entailment":
            assert not b - a  # the hypothesis only drops details
        elif en["label"] == "contradiction":
            assert sum((b - a).values()) == 1 and sum((a - b).values()) == 1
        else:
            assert "in" in b and "in" not in a  # a place the premise does not state


def test_paraphrase_tagging_parallel(world):
    pairs = world.paraphrase("xb", 20, "dev")
    assert Counter(e["label"] for e in pairs) == {"1": 10, "0": 10}
    for e in pairs:
        overlap = set(e["text_a"].split()) & set(e["text_b"].split())
        assert len(overlap) >= 4
        assert (Counter(e["text_a"].split()) == Counter(e["text_b"].replace(" ,", "").split())) == (
            e["label"] == "1"
        )
    for e in world.tagging("xc", 30, scheme="ner"):
        assert len(e["tokens"]) == len(e["tags"]) and set(e["tags"]) <= set(r.PANX_TAGS)
        assert e["tags"][e["tokens"].index(e["tokens"][0])] in ("B-PER", "O")
    for e in world.tagging("xa", 30, scheme="pos"):
        assert set(e["tags"]) <= set(r.UPOS_TAGS) and e["tags"][-1] == "PUNCT"
        assert e["tags"][-2] == "VERB"  # SOV
    parallel = world.parallel("xd", 30)
    for pair in parallel:
        names = [w for w in pair["target"].split() if w[0].isupper()]
        assert all(name in pair["source"] for name in names)
    assert len({p["source"] for p in parallel}) > 20


def test_qa_answers_are_spans_and_featurize(world, shared_data):
    from xstilts.data import preprocessors as P
    from xstilts.tokenization import XLMRTokenizer

    tok = XLMRTokenizer(shared_data("spm/test_model.model"))
    for lang in world.languages:
        examples = world.qa(lang, 25)
        kinds = Counter()
        for e in examples:
            answer = e["answers"][0]
            assert e["context"][answer["answer_start"] :].startswith(answer["text"])
            kinds[e["question"].split()[0]] += 1
        assert len(kinds) == 3  # who / what / where questions
        features = P.qa_features_for_examples(examples, tok, max_length=128)
        hits = [f for f in features if f["start_positions"] > 0]
        assert len(hits) == len(examples)  # short contexts: one window each
        for f, e in zip(hits, examples, strict=True):
            recovered = P.recover_answer(
                e["context"], f["offsets"], f["start_positions"], f["end_positions"]
            )
            assert e["answers"][0]["text"] in recovered


def test_written_files_use_native_formats(world, tmp_path):
    small = SyntheticWorld(seed=0)
    paths = small.write_files(tmp_path, {"train": 12, "dev": 6, "test": 6})
    assert not list(tmp_path.rglob("*.tmp"))
    nli = list(r.read_xtreme_pair_tsv(paths["nli/train-xa.tsv"]))
    assert [e["label"] for e in nli] == [e["label"] for e in small.nli("xa", 12)]
    paws = list(r.read_xtreme_pair_tsv(paths["paraphrase/dev-en.tsv"], r.BINARY_LABELS))
    assert len(paws) == 6
    ner = list(r.read_token_tag_file(paths["ner/test-xd.tsv"], r.PANX_TAGS))
    pos = list(r.read_token_tag_file(paths["pos/test-xd.tsv"], r.UPOS_TAGS))
    assert len(ner) == len(pos) == 6
    qa = list(r.read_squad_json(paths["qa/dev-xb.json"]))
    assert [e["answers"] for e in qa] == [e["answers"] for e in small.qa("xb", 6, "dev")]
    pairs = list(r.read_tatoeba(paths["parallel/test.xc-en.xc"], paths["parallel/test.xc-en.en"]))
    assert len(pairs) == 6
    assert len(list(r.read_text_lines(paths["mlm/xd.txt"]))) == len(small.mlm_corpus("xd"))
