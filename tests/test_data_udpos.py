"""UD CoNLL-U -> XTREME's udpos files (xstilts/data/udpos.py), checked against XTREME's own rule.

The expected outputs below are what google-research/xtreme's scripts produce
(``conllu_to_conll.py --replace_subtokens_with_fused_forms --print_fused_forms`` then
``utils_preprocess.py --task udpos``, run with networkx 1.11): a multi-word token is ONE token,
its surface form, tagged with its span head's UPOS.
"""

import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest

from xstilts.data import prepare, udpos
from xstilts.data import readers as r
from xstilts.data import tasks as T

FIXTURES = Path(__file__).parent / "fixtures" / "conllu"
FR = FIXTURES / "fr_handwritten-ud-test.conllu"
ES = FIXTURES / "es_handwritten-ud-test.conllu"

# sha256 of the dev-<lang>.tsv that XTREME's scripts wrote from each file (test files renamed to
# *-dev-* so that XTREME keeps the tags; am run as a udpos language with --lang am).
XTREME_SHA256 = {
    FR.name: "a6950d5f5306f8a7489827c9aaf575d462b3d6717e3671dbf02ad360f1838f1e",
    ES.name: "4744ef24d411d3dd1b6d426366539b1ab73e31390e3b5b7732e5d2f61b27d56b",
    "en_ewt-ud-dev.conllu": "7b1d5a149d73bc21797838f9c39ca42774026769a06b62f016b8e3a65741ca75",
    "yo_ytb-ud-test.conllu": "c0ba49121a2221a194fc33d156e0581312a900a4bbbaf31079caec673723e07a",
    "tl_trg-ud-test.conllu": "d75dd069f5ca16a8e1dcde1993f1b8f63401d7c291434713803c5a98f56c138b",
    "am_att-ud-test.conllu": "b7b098fef9e110b84228c4d1f04f9b2f5f7c12e46b47c3849d03a6eb3551813f",
}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _conllu(path: Path, *sentences: list[str]) -> Path:
    """A CoNLL-U file from rows written as space-separated columns ('~' stands for a space)."""
    blocks = [
        "\n".join("\t".join(c.replace("~", " ") for c in row.split()) for row in s)
        for s in sentences
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    return path


def _word(i: int, form: str, upos: str, head: int, deps: str = "_") -> str:
    return f"{i} {form} {form} {upos} _ _ {head} dep {deps} _"


def _fused(first: int, last: int, form: str) -> str:
    return f"{first}-{last} {form} _ _ _ _ _ _ _ _"


def test_french_multiword_tokens_keep_the_surface_form_with_the_span_heads_upos():
    assert list(udpos.conllu_sentences(FR)) == [
        # du = de (ADP) + le (DET), both under 'voisin': a tie, fr's list puts ADP before DET
        (
            ["Le", "chat", "du", "voisin", "dort", "au", "soleil", "."],
            ["DET", "NOUN", "ADP", "NOUN", "VERB", "ADP", "NOUN", "PUNCT"],
        ),
        # auquel = à (case of lequel) + lequel (PRON): the single highest word is the head
        (
            ["Le", "livre", "auquel", "je", "pense", "est", "là", "."],
            ["DET", "NOUN", "PRON", "PRON", "VERB", "AUX", "ADV", "PUNCT"],
        ),
        # the empty node 8.1 (elided 'mange') is no token
        (
            ["Marie", "mange", "une", "pomme", "et", "Paul", "une", "poire", "."],
            ["PROPN", "VERB", "DET", "NOUN", "CCONJ", "PROPN", "DET", "NOUN", "PUNCT"],
        ),
    ]


def test_spanish_del_al_and_clitics():
    assert list(udpos.conllu_sentences(ES)) == [
        (
            ["Vamos", "al", "mercado", "del", "pueblo", "."],
            ["VERB", "ADP", "NOUN", "ADP", "NOUN", "PUNCT"],
        ),
        (["Dámelo", "ahora", "."], ["VERB", "ADV", "PUNCT"]),  # da + me + lo: the verb heads
    ]


def test_fixtures_match_xtreme_scripts_byte_for_byte():
    for path in (FR, ES):
        assert _sha256(udpos.tsv_text(udpos.conllu_sentences(path))) == XTREME_SHA256[path.name]


def test_ties_use_the_enhanced_graph_and_the_languages_precedence_list(tmp_path):
    # 'à' is the basic child of 'lequel', but DEPS makes 'lequel' a child of 'à' too: equal
    # ancestor counts, so fr's list decides (PRON before ADP)
    cycle = [
        _word(1, "v", "VERB", 0, "0:root"),
        _fused(2, 3, "auquel"),
        _word(2, "à", "ADP", 1, "1:obl|3:case"),
        _word(3, "lequel", "PRON", 2, "2:nmod"),
        _word(4, ".", "PUNCT", 1, "1:punct"),
    ]
    path = _conllu(tmp_path / "fr_x-ud-dev.conllu", cycle)
    assert list(udpos.conllu_sentences(path)) == [(["v", "auquel", "."], ["VERB", "PRON", "PUNCT"])]
    # three words, the middle one heads
    middle = [_fused(1, 3, "abc"), _word(1, "a", "DET", 2), _word(2, "b", "NOUN", 0)]
    middle.append(_word(3, "c", "ADJ", 2))
    path = _conllu(tmp_path / "de_x-ud-dev.conllu", middle)
    assert list(udpos.conllu_sentences(path)) == [(["abc"], ["NOUN"])]
    # es's list has no NOUN/ADJ: XTREME's conllu_to_conll.py fails (ValueError) on the file
    tie = [_word(1, "Casa", "VERB", 0), _fused(2, 3, "bonita")]
    tie += [_word(2, "bo", "NOUN", 1), _word(3, "nita", "ADJ", 1)]
    path = _conllu(tmp_path / "es_x-ud-dev.conllu", tie)
    with pytest.raises(udpos.XtremeRuleError, match=r"es_x-ud-dev.conllu:2: .*'NOUN' is not in"):
        list(udpos.conllu_sentences(path))


def test_textless_sentences_are_dropped_and_forms_lose_spaces_and_zwnj(tmp_path):
    all_blank = [_word(1, "_", "NOUN", 0), _word(2, "_", "VERB", 1), _word(3, "_", "PUNCT", 1)]
    one_real = [_word(1, "_", "NOUN", 0), _word(2, "a", "VERB", 1), _word(3, "_", "PUNCT", 1)]
    two_real = one_real + [_word(4, "b", "X", 1)]
    spaced = [_word(1, "x\u200cy", "NOUN", 0), _word(2, "à~peu~près", "ADV", 1)]
    path = _conllu(tmp_path / "fr_y-ud-dev.conllu", all_blank, one_real, two_real, spaced)
    assert list(udpos.conllu_sentences(path)) == [
        (["_", "a", "_", "b"], ["NOUN", "VERB", "PUNCT", "X"]),
        (["xy", "àpeuprès"], ["NOUN", "ADV"]),
    ]


@pytest.mark.parametrize(
    ("row", "line", "message"),
    [
        ("2 b b X _ _ 1 dep _", 3, "expected 10 tab-separated CoNLL-U fields, got 9"),
        ("x2 b b X _ _ 1 dep _ _", 3, "expected an integer word id or a range, got 'x2'"),
        ("2 b b X _ _ one dep _ _", 3, "expected an integer HEAD, got 'one'"),
        ("2 b b X _ _ 1 dep 1 _", 3, "expected DEPS 'head:relation', got '1'"),
        ("2-4 bcd _ _ _ _ _ _ _ _", 3, r"multi-word token 'bcd' lacks words \[2, 3, 4\]"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, row, line, message):
    path = _conllu(tmp_path / "fr_bad-ud-dev.conllu", ["# sent_id = 1", _word(1, "a", "X", 0), row])
    with pytest.raises(r.DataFormatError, match=f"fr_bad-ud-dev.conllu:{line}: {message}"):
        list(udpos.conllu_sentences(path))


def _release(tmp_path: Path) -> Path:
    """A ud-treebanks-v2.x directory: French test + train (two treebanks), Spanish dev."""
    root = tmp_path / "ud-treebanks-v2.5"
    (root / "UD_French-Fixture").mkdir(parents=True)
    shutil.copy(FR, root / "UD_French-Fixture" / FR.name)
    train = [_word(1, "Bonjour", "INTJ", 0), _word(2, "!", "PUNCT", 1)]
    _conllu(root / "UD_French-Other" / "fr_other-ud-train.conllu", train)
    _conllu(root / "UD_French-Other" / "fr_other-ud-extra.conllu", train)  # no split: skipped
    (root / "UD_Spanish-Fixture").mkdir()
    shutil.copy(ES, root / "UD_Spanish-Fixture" / "es_handwritten-ud-dev.conllu")
    _conllu(root / "UD_English-X" / "en_x-ud-test.conllu", train)  # not asked for
    return root


def test_convert_treebanks_writes_xtremes_layout_with_labelled_test(tmp_path):
    out = tmp_path / "data" / "udpos"
    report = udpos.convert_treebanks(_release(tmp_path), out, ["fr", "es"])
    assert sorted(p.name for p in out.iterdir()) == ["dev-es.tsv", "test-fr.tsv", "train-fr.tsv"]
    assert report.sentences == {"es": {"dev": 2}, "fr": {"train": 1, "test": 3}}
    assert [Path(s).name for s in report.sources["fr"]] == [FR.name, "fr_other-ud-train.conllu"]
    assert len(report.skipped) == 1 and "fr_other-ud-extra.conllu" in report.skipped[0]
    text = (out / "test-fr.tsv").read_text()
    assert _sha256(text) == XTREME_SHA256[FR.name]
    assert text.startswith("Le\tDET\nchat\tNOUN\ndu\tADP\n") and text.endswith(".\tPUNCT\n")
    assert "\n\nLe\tDET\nlivre\tNOUN\nauquel\tPRON\n" in text
    assert (out / "train-fr.tsv").read_text() == "Bonjour\tINTJ\n!\tPUNCT\n"
    # the task tables read these files: the test split is labelled, so it can be scored
    test = list(T.get_task("udpos.fr").examples("test", tmp_path / "data"))
    assert test[0]["tokens"][2] == "du" and test[0]["tags"][2] == "ADP"
    assert T.get_task("udpos.es").num_examples("dev", tmp_path / "data") == 2


def test_strip_test_labels_reproduces_xtremes_release(tmp_path):
    out = tmp_path / "udpos"
    udpos.convert_treebanks(_release(tmp_path), out, ["fr"], strip_test_labels=True)
    text = (out / "test-fr.tsv").read_text()
    assert text.startswith("Le\nchat\ndu\nvoisin\n") and "\t" not in text
    assert [e["tags"] for e in r.read_token_tag_file(out / "test-fr.tsv")] == [None] * 3
    assert "\t" in (out / "train-fr.tsv").read_text()


def test_convert_treebanks_leaves_nothing_half_written(tmp_path):
    release = _release(tmp_path)
    bad = [_word(1, "a", "X", 0), "2 b b X _ _ 1 dep _"]
    _conllu(release / "UD_Spanish-Bad" / "es_bad-ud-train.conllu", bad)
    out = tmp_path / "udpos"
    with pytest.raises(r.DataFormatError, match=r"es_bad-ud-train.conllu:2: expected 10"):
        udpos.convert_treebanks(release, out, ["es", "fr"])
    assert not out.exists()  # es (first in order) failed before any of its files was written
    with pytest.raises(FileNotFoundError, match=r"languages \['de'\]"):
        udpos.convert_treebanks(release, out, ["fr", "de"])


def test_a_file_xtreme_cannot_convert_is_skipped_as_in_xtreme(tmp_path):
    release = _release(tmp_path)
    tie = [_word(1, "Casa", "VERB", 0), _fused(2, 3, "bonita")]
    tie += [_word(2, "bo", "NOUN", 1), _word(3, "nita", "ADJ", 1)]
    _conllu(release / "UD_Spanish-Tie" / "es_tie-ud-test.conllu", tie)
    report = udpos.convert_treebanks(release, tmp_path / "udpos", ["es"])
    assert report.sentences == {"es": {"dev": 2}}
    assert len(report.skipped) == 1 and "es_tie-ud-test.conllu:2" in report.skipped[0]
    assert not (tmp_path / "udpos" / "test-es.tsv").exists()


def test_prepare_converts_the_ud_release_archive(tmp_path, capsys):
    release = _release(tmp_path)
    archive = tmp_path / "ud-treebanks-v2.5.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(release, arcname="ud-treebanks-v2.5")
    root = tmp_path / "data"
    prepare._udpos(("fr", "es"))(archive, root)
    assert _sha256((root / "udpos/test-fr.tsv").read_text()) == XTREME_SHA256[FR.name]
    assert "fr_other-ud-extra.conllu" in capsys.readouterr().out
    assert T.get_task("udpos.fr").num_examples("test", root) == 3
    with pytest.raises(r.DataFormatError, match=r"ud-treebanks-v2.5.tgz: expected members .*'de'"):
        prepare._udpos(("fr", "de"))(archive, tmp_path / "other")


@pytest.mark.parametrize("name", [n for n in XTREME_SHA256 if "handwritten" not in n])
def test_real_treebank_samples_match_xtreme_scripts(shared_data, name):
    path = shared_data(f"udpos/conllu/{name}")
    sentences = list(udpos.conllu_sentences(path))
    assert _sha256(udpos.tsv_text(sentences)) == XTREME_SHA256[name]
    if name.startswith("en_ewt"):  # this EWT has multi-word tokens (UD v2.5's had none)
        assert (len(sentences), sum(len(t) for t, _ in sentences)) == (300, 5625)
        tokens, tags = next(s for s in sentences if "didn't" in s[0])
        assert tags[tokens.index("didn't")] == "AUX"  # did (AUX) heads n't (PART)
