"""Every release layout the multilingual arm reads, one fixture and one test each, plus the bad
input cases (issue 14, items 1 and 8).

Fixtures under tests/fixtures/release_layouts/ are hand-written, a few rows each, in exactly the
layout of the release named in each test (checked against the TFDS builders and XTREME's scripts
cited there); the directory mirrors a data directory, so the task tables read it as ``data_dir``.
The one real sample used (XNLI translate-train, bg) is read in place from ../shared/data.
"""

import io
import tarfile
import zipfile

import pytest

from tests.conftest import REPO_ROOT
from xstilts.data import readers as r
from xstilts.data import tasks as T
from xstilts.data import udpos

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "release_layouts"
COSMOS_HEADER = "id,context,question,answer0,answer1,answer2,answer3,label\n"


# ------------------------------------------------------------------------------ release layouts


def test_xnli_translate_train_five_columns_real_sample(shared_data, tmp_path):
    """gs://xtreme_translations/XNLI/translate-train/en-<lang>-translated.tsv (TFDS xtreme_xnli):
    English premise, English hypothesis, translated premise, translated hypothesis, label."""
    sample = shared_data("xnli/translate_train_sample/en-bg-translated.tsv")
    release = tmp_path / "xnli" / "translate-train" / "en-bg-translated.tsv"
    release.parent.mkdir(parents=True)
    release.symlink_to(sample)  # the release path, the real bytes read in place
    first, second = T.get_task("mnli.bg").examples("train", tmp_path)
    assert first["text_a"].startswith("Поисках тези записи писмено на 18 юли 2001")
    assert first["text_b"] == "Поисках тези записи в съответствие с раздел 716."
    assert first["label"] == "entailment"
    assert first["text_a_en"].startswith("I requested these records in writing on July 18")
    assert first["text_b_en"] == "I requested these records in accordance with section 716 ."
    assert second["label"] == "neutral"


def test_xnli_translate_train_fixture_through_the_task_table():
    examples = list(T.get_task("mnli.de").examples("train", FIXTURES))
    assert [e["label"] for e in examples] == ["entailment", "contradiction", "neutral"]
    assert examples[1]["text_a"] == 'Er sagte "nein" zu dem Angebot.'  # QUOTE_NONE: quotes kept
    assert examples[1]["text_a_en"] == 'He said " no " to the offer .'


def test_pawsx_translate_train_five_columns():
    """gs://xtreme_translations/PAWSX/translate-train/en-<lang>-translated.tsv (TFDS
    xtreme_pawsx: fieldnames en_sentence1, en_sentence2, sentence1, sentence2, label)."""
    path = FIXTURES / "pawsx/translate-train/en-de-translated.tsv"
    examples = list(r.read_translate_train_tsv(path, r.BINARY_LABELS))
    assert [e["label"] for e in examples] == ["1", "0"]
    assert examples[0]["text_a"] == "Der Fluss fließt nach Norden in den See."
    assert examples[0]["text_a_en"] == "The river flows north into the lake ."


def test_pawsx_release_translated_train():
    """x-final/<lang>/translated_train.tsv of x-final.tar.gz (HF paws-x / xtreme builders):
    header id, sentence1, sentence2, label."""
    path = FIXTURES / "pawsx/x-final/de/translated_train.tsv"
    examples = list(r.read_pawsx_original_tsv(path))
    assert [(e["id"], e["label"]) for e in examples] == [("1", "1"), ("2", "0")]
    assert examples[1]["text_b"] == "Peter gab Anna das Buch."


def test_xnli_mt_release():
    """XNLI-MT-1.0.zip: XNLI-MT-1.0/multinli/multinli.train.<lang>.tsv, header premise, hypo,
    label (XTREME utils_preprocess.xnli_preprocess; HF xnli builder, QUOTE_NONE)."""
    path = FIXTURES / "XNLI-MT-1.0/multinli/multinli.train.de.tsv"
    examples = list(r.read_xnli_mt_tsv(path))
    assert [e["label"] for e in examples] == ["contradiction", "entailment", "neutral"]
    assert examples[0]["text_a"] == "Das Konzert wurde wegen Regen abgesagt."
    assert examples[0]["id"] == "1"


def test_squad_translate_train_through_the_task_table():
    """gs://xtreme_translations/SQuAD/translate-train/squad.translate.train.en-<lang>.json:
    SQuAD v1.1 JSON; a translated answer no longer at its answer_start is dropped."""
    examples = list(T.get_task("squad_v1.de").examples("train", FIXTURES))
    assert [e["id"] for e in examples] == ["q1", "q2"]  # q3's answer is misaligned
    assert examples[0]["answers"] == [{"text": "1932", "answer_start": 17}]


def test_tydiqa_translate_train():
    """gs://xtreme_translations/TyDiQA-GoldP/translate-train/tydiqa.translate.train.en-<lang>.json
    (TFDS tydi_qa translate-train-<lang> splits): SQuAD v1.1 JSON."""
    path = FIXTURES / "tydiqa/translate-train/tydiqa.translate.train.en-sw.json"
    (example,) = r.read_squad_json(path, on_misaligned="drop")
    assert example["answers"] == [{"text": "Mlima Kilimanjaro", "answer_start": 0}]
    assert example["title"] == "Kilimanjaro"


def _panx_archive(path, members=("train", "dev", "test"), prefix=""):
    with tarfile.open(path, "w:gz") as archive:
        for name in members:
            archive.add(FIXTURES / "panx/de" / name, arcname=f"{prefix}{name}")
    return path


def test_panx_extracted_release_through_the_task_table():
    """<lang>.tar.gz of panx_dataset extracted into panx/<lang>/ (TFDS wikiann, HF xtreme):
    ``<lang>:<token><TAB><tag>``, blank line between sentences; test keeps its labels."""
    train = list(T.get_task("panx.de").examples("train", FIXTURES))
    assert [e["tokens"] for e in train] == [
        ["Angela", "Merkel", "besuchte", "Paris", "."],
        ["Die", "Deutsche", "Bahn", "streikt"],
    ]
    assert train[1]["tags"] == ["O", "B-ORG", "I-ORG", "O"]
    (test,) = T.get_task("panx.de").examples("test", FIXTURES)
    assert test["tags"] == ["B-PER", "I-PER", "O", "O"]


def test_panx_language_archive_and_bundles(tmp_path):
    """The archives as distributed: <lang>.tar.gz (members train/dev/test, also as ./train), and
    the bundles holding them: XTREME's AmazonPhotos.zip / HF's panx_dataset.zip (members
    panx_dataset/<lang>.tar.gz) and the rehosted panx_dataset.tar (<lang>.tar.gz)."""
    archive = _panx_archive(tmp_path / "de.tar.gz", prefix="./")
    (dev,) = r.read_panx_archive(archive, "dev")
    assert dev["tokens"] == ["Hamburg", "liegt", "an", "der", "Elbe"]
    bundle = tmp_path / "AmazonPhotos.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.write(_panx_archive(tmp_path / "plain.tar.gz"), "panx_dataset/de.tar.gz")
    assert len(list(r.read_panx_archive(bundle, "train", language="de"))) == 2
    rehosted = tmp_path / "panx_dataset.tar"
    with tarfile.open(rehosted, "w") as t:
        t.add(tmp_path / "plain.tar.gz", arcname="de.tar.gz")
    (test,) = r.read_panx_archive(rehosted, "test", language="de")
    assert test["tokens"][:2] == ["Thomas", "Mann"]


def test_conllu_release_with_multiword_tokens_and_empty_nodes():
    """UD CoNLL-U (ud-treebanks-v2.x/*/*.conllu): ``3-4 du`` multi-word ranges and empty nodes
    (``8.1``) are not words; the syntactic words (de, le) keep their UPOS. (XTREME's udpos
    conversion, which uses the fused forms, is data/udpos.py's.)"""
    # the French fixture of the udpos tests (one hand-written file; ../shared/data has no
    # French or Spanish treebank)
    french = FIXTURES.parent / "conllu/fr_handwritten-ud-test.conllu"
    first, _, third = udpos.read_conllu(french)
    assert first["id"] == "fr-fixture-1"
    assert first["tokens"] == ["Le", "chat", "de", "le", "voisin", "dort", "à", "le", "soleil", "."]
    assert first["tags"][2:4] == ["ADP", "DET"]
    assert third["tokens"] == ["Marie", "mange", "une", "pomme", "et", "Paul", "une", "poire", "."]
    # XTREME's conversion of the same file keeps the fused form "du" (one token, one tag)
    fused, _ = next(udpos.conllu_sentences(french))
    assert fused[:4] == ["Le", "chat", "du", "voisin"]


# ---------------------------------------------------------------------------------- bad input


def test_unbalanced_csv_quote_names_the_line(tmp_path):
    path = tmp_path / "valid.csv"
    path.write_text(COSMOS_HEADER + '1,"never closed,q,a,b,c,d,0\n2,ok,q,a,b,c,d,1\n')
    with pytest.raises(
        r.DataFormatError,
        match=r"valid\.csv:2: malformed CSV \(unexpected end of data\): a quoted field opened "
        r"here is not closed properly \(read to line 3\); expected balanced double quotes",
    ):
        list(r.read_cosmosqa_csv(path))
    closed_late = tmp_path / "late.csv"
    closed_late.write_text(COSMOS_HEADER + '1,"opens,q,a,b,c,d,0\n2,x,q,a,closes",c,d,1\n')
    with pytest.raises(
        r.DataFormatError,
        match=r"late\.csv:2: expected 8 comma-separated fields .* got 5 \(the row runs from "
        r"line 2 to line 3: an unbalanced double quote\?\)",
    ):
        list(r.read_cosmosqa_csv(closed_late))


def test_unbalanced_tsv_quote_and_xtreme_csv_quoting(tmp_path):
    quoted = tmp_path / "dev-de.tsv"  # XTREME writes these with csv.writer(delimiter="\t")
    quoted.write_text('"Album "", weil er rein ist."\tZweiter Satz.\t1\n')
    (example,) = r.read_xtreme_pair_tsv(quoted, r.BINARY_LABELS)
    assert example["text_a"] == 'Album ", weil er rein ist.'
    broken = tmp_path / "dev-fr.tsv"
    broken.write_text('a\tb\t0\n"Album "", weil er rein ist.\tZweiter Satz.\t1\n')
    with pytest.raises(
        r.DataFormatError,
        match=r"dev-fr\.tsv:2: unbalanced double quote in field 1: .* expected a closing quote",
    ):
        list(r.read_xtreme_pair_tsv(broken, r.BINARY_LABELS))


def test_non_utf8_bytes_name_line_and_column(tmp_path):
    latin1 = tmp_path / "train-de.tsv"
    latin1.write_bytes("Guten Tag\tHallo\t1\nSchöne Grüße\tHallo\t0\n".encode("latin-1"))
    with pytest.raises(
        r.DataFormatError,
        match=r"train-de\.tsv:2: byte 0xf6 at column 4 is not UTF-8; expected UTF-8 text",
    ):
        list(r.read_xtreme_pair_tsv(latin1, r.BINARY_LABELS))
    squad = tmp_path / "squad.translate.train.en-de.json"
    squad.write_bytes(b'{"data": [\n{"title": "Gr\xfc\xdfe"}]}')
    with pytest.raises(r.DataFormatError, match=r"en-de\.json:2: byte 0xfc at column 14"):
        list(r.read_squad_json(squad))
    csv_file = tmp_path / "valid.csv"
    csv_file.write_bytes(COSMOS_HEADER.encode() + b"1,caf\xe9,q,a,b,c,d,0\n")
    with pytest.raises(r.DataFormatError, match=r"valid\.csv:2: byte 0xe9 at column 6"):
        list(r.read_cosmosqa_csv(csv_file))


def test_missing_label_on_a_labelled_split(tmp_path):
    dev = tmp_path / "dev-de.tsv"
    dev.write_text("a\tb\tneutral\nc\td\n")
    with pytest.raises(
        r.DataFormatError,
        match=r"dev-de\.tsv:2: missing label on a labelled split; expected one of "
        r"\['contradiction', 'entailment', 'neutral'\]",
    ):
        list(r.read_xtreme_pair_tsv(dev))
    test = tmp_path / "test-de.tsv"  # XTREME strips test labels: allowed there
    test.write_text("a\tb\nc\td\n")
    assert [e["label"] for e in r.read_xtreme_pair_tsv(test)] == [None, None]
    translated = tmp_path / "en-de-translated.tsv"
    translated.write_text("p\th\tP\tH\t\n")
    with pytest.raises(r.DataFormatError, match=r"translated\.tsv:1: missing label \(field 5\)"):
        list(r.read_translate_train_tsv(translated))
    tags = tmp_path / "train-de.tsv"
    tags.write_text("de:Berlin\tB-LOC\n\nde:Hamburg\n")
    with pytest.raises(
        r.DataFormatError,
        match=r"train-de\.tsv:3: missing tag on a labelled split; expected 'token<TAB>tag'",
    ):
        list(r.read_token_tag_file(tags, r.PANX_TAGS))


def test_file_of_the_wrong_task(tmp_path):
    three = tmp_path / "en-de-translated.tsv"  # XTREME's target layout where 5 are expected
    three.write_text("a\tb\tneutral\n")
    with pytest.raises(
        r.DataFormatError,
        match=r"en-de-translated\.tsv:1: expected 5 tab-separated fields \(English premise.*"
        r"got 3; 2-3 fields is XTREME's target-task layout",
    ):
        list(r.read_translate_train_tsv(three))
    five = tmp_path / "train-de.tsv"  # translate-train handed to the target reader
    five.write_text("p\th\tP\tH\tneutral\n")
    with pytest.raises(
        r.DataFormatError, match=r"train-de\.tsv:1: expected at most 3 fields .* got 5; 5 fields"
    ):
        list(r.read_xtreme_pair_tsv(five))
    release = FIXTURES / "pawsx/x-final/de/translated_train.tsv"  # headed PAWS-X release
    with pytest.raises(
        r.DataFormatError,
        match=r"translated_train\.tsv:1: expected at most 3 fields .* got 4; 'id, sentence1, "
        r"sentence2, label' is PAWS-X's release layout \(read_pawsx_original_tsv\)",
    ):
        list(r.read_xtreme_pair_tsv(release, r.BINARY_LABELS))
    squad_json = FIXTURES / "squad/translate-train/squad.translate.train.en-de.json"
    with pytest.raises(
        r.DataFormatError,
        match=r"en-de\.json:1: this is a JSON file, not a tab-separated one; expected text_a, "
        r"text_b, label .*read_squad_json",
    ):
        list(r.read_xtreme_pair_tsv(squad_json))
    tsv = FIXTURES / "xnli/translate-train/en-de-translated.tsv"
    with pytest.raises(
        r.DataFormatError,
        match=r"en-de-translated\.tsv:1: invalid JSON \(Expecting value\); expected SQuAD-style "
        r"JSON .* \(a tab-separated file of another task\?\)",
    ):
        list(r.read_squad_json(tsv))
    nli_jsonl = tmp_path / "x.json"
    nli_jsonl.write_text('{"sentence1": "a", "sentence2": "b", "gold_label": "neutral"}')
    with pytest.raises(
        r.DataFormatError,
        match=r"x\.json:\$: expected SQuAD-style JSON \{\"data\": \[articles\]\}, found "
        r"\['gold_label', 'sentence1', 'sentence2'\] \(a file of another task\?\)",
    ):
        list(r.read_squad_json(nli_jsonl))


def test_archive_with_unexpected_member_names(tmp_path):
    renamed = tmp_path / "de.tar.gz"  # XTREME's download script renames to <lang>-<split>
    with tarfile.open(renamed, "w:gz") as archive:
        for split in ("train", "dev", "test"):
            archive.add(FIXTURES / "panx/de" / split, arcname=f"de-{split}")
    with pytest.raises(
        r.DataFormatError,
        match=r"de\.tar\.gz:de-dev: unexpected member 'de-dev'; expected exactly the split files "
        r"\['train', 'dev', 'test'\] of a PAN-X <lang>\.tar\.gz",
    ):
        list(r.read_panx_archive(renamed, "train"))
    bundle = tmp_path / "AmazonPhotos.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("panx_dataset/README.txt", "not an archive")
    with pytest.raises(
        r.DataFormatError,
        match=r"AmazonPhotos\.zip:panx_dataset/README\.txt: unexpected member "
        r"'panx_dataset/README\.txt'; expected per-language archives panx_dataset/<lang>\.tar\.gz",
    ):
        list(r.read_panx_archive(bundle, "train", language="de"))
    bad_line = tmp_path / "bad.tar.gz"
    data = b"de:Berlin\tB-LOC\tO\n"
    with tarfile.open(bad_line, "w:gz") as archive:
        info = tarfile.TarInfo("train")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(
        r.DataFormatError, match=r"bad\.tar\.gz!train:1: expected 'token\[<TAB>tag\]', got 3"
    ):
        list(r.read_panx_archive(bad_line, "train"))
