"""Readers against the real samples in ../shared/data; every expected value was checked by hand
(with cut/sort/uniq, awk or Python's csv/json modules) on the files themselves."""

from collections import Counter

import pytest

from xstilts.data import readers as r
from xstilts.data import udpos


def test_xtreme_xnli_tsv(shared_data):
    examples = list(r.read_xtreme_pair_tsv(shared_data("xnli/xtreme_format/dev-en.tsv")))
    assert len(examples) == 500
    assert Counter(e["label"] for e in examples) == {
        "neutral": 167,
        "entailment": 167,
        "contradiction": 166,
    }
    assert examples[1]["text_a"] == "And he said, Mama, I'm home."  # \r\n endings stripped
    assert examples[1]["text_b"] == "He didn't say a word."
    assert examples[1]["label"] == "contradiction"
    zh = list(r.read_xtreme_pair_tsv(shared_data("xnli/xtreme_format/dev-zh.tsv")))
    assert zh[0]["text_a"] == "他说，妈妈，我回来了。" and zh[0]["label"] == "neutral"


def test_xtreme_pawsx_tsv(shared_data):
    examples = list(
        r.read_xtreme_pair_tsv(shared_data("pawsx/xtreme_format/dev-en.tsv"), r.BINARY_LABELS)
    )
    assert Counter(e["label"] for e in examples) == {"0": 287, "1": 213}
    for lang in ("de", "es", "fr", "ja", "ko", "zh"):
        path = shared_data(f"pawsx/xtreme_format/dev-{lang}.tsv")
        assert len(list(r.read_xtreme_pair_tsv(path, r.BINARY_LABELS))) == 500
    # XTREME writes these files with csv.writer: a text holding a quote is quoted, inner quotes
    # doubled (line 10 of dev-es: "...en ""Rang De Basanti""."), and reads back unquoted
    es = list(
        r.read_xtreme_pair_tsv(shared_data("pawsx/xtreme_format/dev-es.tsv"), r.BINARY_LABELS)
    )
    assert es[9]["text_a"].endswith('de Mehra en "Rang De Basanti".')
    assert es[9]["text_b"].startswith("Mehra aceptó actuar en \"Rang De Basanti'' inmediatamente")
    assert es[9]["label"] == "0"


def test_pawsx_release_tsv(shared_data):
    examples = list(
        r.read_pawsx_original_tsv(
            shared_data("pawsx/original_format_sample/de/translated_train.tsv")
        )
    )
    assert len(examples) == 4  # header + 4 rows, the last without a newline
    assert examples[0]["text_a"].endswith("nach England zurückzukehren.")
    assert [e["label"] for e in examples] == ["0", "1", "0", "1"]


def test_glue_mnli_tsv(shared_data):
    train = list(r.read_glue_mnli_tsv(shared_data("english/mnli/glue_format/train.tsv")))
    assert [e["label"] for e in train] == ["neutral", "entailment", "entailment"]
    assert train[0]["text_a"].startswith("Conceptually cream skimming has two basic dimensions")
    test = list(r.read_glue_mnli_tsv(shared_data("english/mnli/glue_format/test_matched.tsv")))
    assert [e["label"] for e in test] == [None]
    mismatched = r.read_glue_mnli_tsv(shared_data("english/mnli/glue_format/dev_mismatched.tsv"))
    assert [e["label"] for e in mismatched] == ["contradiction", "contradiction"]


def test_glue_qqp_mrpc_and_quora(shared_data):
    qqp = list(r.read_glue_qqp_tsv(shared_data("english/qqp/glue_format/train.tsv")))
    assert [e["label"] for e in qqp] == ["0", "1", "0"]
    assert qqp[1]["text_a"] == "How do I control my horny emotions?"
    assert [
        e["label"] for e in r.read_glue_qqp_tsv(shared_data("english/qqp/glue_format/test.tsv"))
    ] == [None]
    quora = list(
        r.read_quora_paraphrase_tsv(shared_data("english/qqp/allennlp_quora_paraphrase_sample.tsv"))
    )
    assert [(e["label"], e["id"]) for e in quora] == [
        ("1", "50018"),
        ("0", "126924"),
        ("1", "391187"),
    ]
    mrpc = list(r.read_glue_mrpc_tsv(shared_data("english/mrpc/dev.tsv")))  # starts with a BOM
    assert [e["label"] for e in mrpc] == ["1", "0", "0", "1", "0", "1"]


@pytest.mark.parametrize(
    ("relative", "labels"),
    [
        (
            "english/mnli/multinli_1.0_train.jsonl",
            ["neutral", "entailment", "entailment", "entailment", "neutral"],
        ),
        (
            "english/mnli/jiant_mnli_train.jsonl",
            ["neutral", "entailment", "entailment", "entailment", "neutral"],
        ),
        ("english/snli/snli_1.0_sample.jsonl", ["neutral", "contradiction", "entailment"]),
        (
            "english/anli/original_jsonl_sample/R1/dev.jsonl",
            ["contradiction", "entailment", "contradiction"],
        ),
        ("xnli/original_format_sample/xnli.dev.jsonl", ["neutral", "contradiction"]),
    ],
)
def test_nli_jsonl_layouts(shared_data, relative, labels):
    assert [e["label"] for e in r.read_nli_jsonl(shared_data(relative))] == labels


def test_nli_jsonl_language_filter_and_xnli_release_tsv(shared_data):
    path = shared_data("xnli/original_format_sample/xnli.test.jsonl")
    assert [e["language"] for e in r.read_nli_jsonl(path, language="ar")] == ["ar", "ar"]
    assert list(r.read_nli_jsonl(path, language="de")) == []
    tsv = list(r.read_xnli_original_tsv(shared_data("xnli/original_format_sample/xnli.dev.tsv")))
    assert [(e["language"], e["label"]) for e in tsv] == [
        ("ar", "neutral"),
        ("ar", "contradiction"),
    ]


def test_anli_analysis_csv(shared_data):
    examples = list(
        r.read_anli_analysis_csv(shared_data("english/anli/ANLI_analysis_r1_dev.head200.csv"))
    )
    assert len(examples) == 200  # multi-line quoted fields are one row each
    assert Counter(e["label"] for e in examples) == {
        "contradiction": 75,
        "neutral": 69,
        "entailment": 56,
    }
    assert examples[0]["id"] == "bf628cf5-6948-4595-a6d0-daf99beb47b9"


def test_xtreme_udpos_tsv(shared_data):
    counts = {"af": (194, 5317), "en": (300, 5708), "mr": (46, 400), "te": (131, 662)}
    for lang, (sentences, tokens) in counts.items():
        examples = list(
            r.read_token_tag_file(shared_data(f"udpos/xtreme_format/dev-{lang}.tsv"), r.UPOS_TAGS)
        )
        assert (len(examples), sum(len(e["tokens"]) for e in examples)) == (sentences, tokens)
    en = list(r.read_token_tag_file(shared_data("udpos/xtreme_format/dev-en.tsv"), r.UPOS_TAGS))
    assert en[0]["tokens"][:4] == ["From", "the", "AP", "comes"]
    assert en[0]["tags"][:4] == ["ADP", "DET", "PROPN", "VERB"]


def test_conllu_matches_xtreme_tokens(shared_data):
    conllu = list(udpos.read_conllu(shared_data("udpos/conllu/en_ewt-ud-dev.conllu")))
    xtreme = list(r.read_token_tag_file(shared_data("udpos/xtreme_format/dev-en.tsv")))
    assert len(conllu) == 300
    # XTREME's en dev is EWT dev: same words (multiword ranges and empty nodes skipped).
    assert all(a["tokens"] == b["tokens"] for a, b in zip(conllu, xtreme, strict=True))
    assert conllu[0]["id"].endswith("-0001")
    yo = list(udpos.read_conllu(shared_data("udpos/conllu/yo_ytb-ud-test.conllu")))
    assert (len(yo), sum(len(e["tokens"]) for e in yo)) == (317, 8243)
    assert yo[0]["tokens"][:2] == ["Ní", "ìbẹ̀rẹ̀"] and yo[0]["tags"][:2] == ["ADP", "NOUN"]
    tl = list(udpos.read_conllu(shared_data("udpos/conllu/tl_trg-ud-test.conllu")))
    assert tl[0]["tokens"] == ["Gumising", "ang", "bata", "."]


def test_conllu_unknown_upos_names_file_and_line(tmp_path):
    path = tmp_path / "xx-ud-dev.conllu"
    path.write_text("# sent_id = s1\n1\tA\ta\tNOUN\tNN\t_\t0\troot\t_\t_\n"
                    "2\tb\tb\tNOM\tNN\t_\t1\tdep\t_\t_\n\n", encoding="utf-8")
    with pytest.raises(r.DataFormatError, match=r"xx-ud-dev\.conllu:3: unknown UPOS 'NOM'"):
        list(udpos.read_conllu(path))
    (sentence,) = udpos.read_conllu(path, column="xpos")
    assert sentence == {"id": "s1", "tokens": ["A", "b"], "tags": ["NN", "NN"], "line": 2}


def test_panx_files(shared_data):
    en = list(r.read_token_tag_file(shared_data("panx/hf_dummy/en/train"), r.PANX_TAGS))
    assert len(en) == 1
    assert en[0]["tokens"][:3] == ["R.H.", "Saunders", "("]  # "en:" prefix stripped
    assert en[0]["tags"][:3] == ["B-ORG", "I-ORG", "O"]
    ja = list(r.read_token_tag_file(shared_data("panx/hf_dummy/ja/dev"), r.PANX_TAGS))
    assert len(ja[0]["tokens"]) == 255 and ja[0]["tokens"][:2] == ["３", "月"]
    total = sum(
        len(list(r.read_token_tag_file(shared_data(f"panx/hf_dummy/{lang}/{split}"), r.PANX_TAGS)))
        for lang in ("ar", "de", "ja", "th", "zh", "yo")
        for split in ("train", "dev", "test")
    )
    assert total == 18  # one sentence per file
    dev = list(r.read_panx_rahimi_csv(shared_data("panx/wikiann_rahimi_af_dev_truth.csv")))
    assert (len(dev), sum(len(e["tokens"]) for e in dev)) == (1000, 10894)
    assert dev[0]["tokens"][4:6] == ["Pous", "Romanus"] and dev[0]["tags"][4:6] == [
        "B-PER",
        "I-PER",
    ]


def test_ccg_supertags_both_layouts(tmp_path):
    jiant = tmp_path / "ccg.dev"
    jiant.write_text("Pierre Vinken will join .\tN/N N (S[dcl]\\NP)/(S[b]\\NP) S[b]\\NP .\n")
    candc = tmp_path / "wsj_00.stagged"
    candc.write_text("Pierre|NNP|N/N Vinken|NNP|N will|MD|(S[dcl]\\NP)/(S[b]\\NP)\n")
    (a,) = r.read_ccg_supertags(jiant)
    assert a["tokens"] == ["Pierre", "Vinken", "will", "join", "."]
    assert a["tags"] == ["N/N", "N", "(S[dcl]\\NP)/(S[b]\\NP)", "S[b]\\NP", "."]
    (b,) = r.read_ccg_supertags(candc)
    assert b["tokens"] == ["Pierre", "Vinken", "will"] and b["tags"][2] == "(S[dcl]\\NP)/(S[b]\\NP)"
    bad = tmp_path / "bad.ccg"
    bad.write_text("a b c\tN N\n")
    with pytest.raises(r.DataFormatError, match=r"bad\.ccg:1: 3 tokens but 2 supertags"):
        list(r.read_ccg_supertags(bad))


def test_squad_family(shared_data):
    xquad = list(r.read_squad_json(shared_data("xquad/xquad.en.json")))
    assert len(xquad) == 1190
    assert xquad[0]["answers"] == [{"text": "308", "answer_start": 34}]
    zh = list(r.read_squad_json(shared_data("xquad/xquad.zh.json")))
    assert zh[0]["id"] == xquad[0]["id"] and zh[0]["answers"][0]["answer_start"] == 10
    v2 = list(r.read_squad_json(shared_data("english/squad/allennlp_squad_v2.0_sample.json")))
    assert [(e["is_impossible"], len(e["answers"])) for e in v2][:3] == [
        (True, 0),
        (False, 1),
        (False, 3),
    ]
    v1 = list(r.read_squad_json(shared_data("english/squad/allennlp_squad_v1.1_sample.json")))
    assert v1[0]["answers"][0]["text"] == "Saint Bernadette Soubirous"
    flat = list(r.read_squad_json(shared_data("english/squad/hf_flat_squad_sample.json")))
    assert len(flat) == 14 and flat[0]["answers"][0] == {"text": "France", "answer_start": 159}
    mlqa = list(r.read_squad_json(shared_data("mlqa/dev-context-zh-question-zh.json")))
    assert len(mlqa) == 201 and mlqa[0]["answers"][0]["text"] == "宪法保障宗教自由"
    tydi = list(r.read_squad_json(shared_data("tydiqa/xtreme_format/tydiqa.goldp.en.dev.json")))
    assert len(tydi) == 200 and all(e["answers"] == [] for e in tydi)  # XTREME withholds them
    release = list(
        r.read_squad_json(shared_data("tydiqa/original_format_sample/tydiqa-goldp-v1.1-train.json"))
    )
    assert release[0]["answers"][0]["answer_start"] == 18


def test_multiple_choice_formats(shared_data):
    hella = list(r.read_hellaswag_jsonl(shared_data("english/hellaswag/hellaswag_val.jsonl")))
    assert hella[0]["context"] == "A man is sitting on a roof."
    assert hella[0]["choices"][3] == "he starts pulling up roofing on a roof."
    assert [e["label"] for e in hella] == [3, 3]
    assert [
        e["label"]
        for e in r.read_hellaswag_jsonl(shared_data("english/hellaswag/hellaswag_test.jsonl"))
    ] == [None, None]
    swag = list(r.read_swag_csv(shared_data("english/swag/swag_sample.csv")))
    assert (
        len(swag) == 11
        and swag[0]["label"] == 2
        and swag[0]["choices"][2] == "She walks slowly towards someone."
    )
    cosmos = list(r.read_cosmosqa_csv(shared_data("english/cosmosqa/valid.head300.csv")))
    assert len(cosmos) == 300 and Counter(e["label"] for e in cosmos) == {
        0: 79,
        3: 78,
        1: 76,
        2: 67,
    }
    release = list(
        r.read_commonsenseqa_jsonl(
            shared_data("english/commonsenseqa/allennlp_commonsenseqa_sample.jsonl")
        )
    )
    hf = list(
        r.read_commonsenseqa_jsonl(
            shared_data("english/commonsenseqa/dev_rand_split.hfstyle.head300.jsonl")
        )
    )
    assert len(hf) == 300
    for a, b in zip(release, hf[: len(release)], strict=True):  # the same dev rows, two layouts
        assert (a["id"], a["question"], a["choices"], a["label"]) == (
            b["id"],
            b["question"],
            b["choices"],
            b["label"],
        )
    assert release[0]["choices"] == ["bank", "library", "department store", "mall", "new york"]
    test = r.read_commonsenseqa_jsonl(
        shared_data("english/commonsenseqa/original_format_sample/test_rand_split_no_answers.jsonl")
    )
    assert [e["label"] for e in test] == [None, None]


def test_bucc_and_tatoeba(shared_data):
    zh = list(r.read_bucc_sentences(shared_data("bucc2018/zh-en.dev.zh")))
    en = list(r.read_bucc_sentences(shared_data("bucc2018/zh-en.dev.en")))
    gold = r.read_bucc_gold(shared_data("bucc2018/zh-en.dev.gold"))
    assert (len(zh), len(en), len(gold)) == (8624, 13589, 257)
    assert gold[0] == ("zh-000000057", "en-000008530")
    zh_ids, en_ids = {e["id"] for e in zh}, {e["id"] for e in en}
    assert all(a in zh_ids and b in en_ids for a, b in gold)
    de = list(
        r.read_tatoeba(
            shared_data("tatoeba/v1/tatoeba.deu-eng.deu"),
            shared_data("tatoeba/v1/tatoeba.deu-eng.eng"),
        )
    )
    assert len(de) == 1000 and de[0]["source"] == "Maria sagte, sie wisse nicht, wo Tom sei."
    jv = list(
        r.read_tatoeba(
            shared_data("tatoeba/v1/tatoeba.jav-eng.jav"),
            shared_data("tatoeba/v1/tatoeba.jav-eng.eng"),
        )
    )
    assert len(jv) == 205


# ---------------------------------------------------------------------------------- bad input


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "dev-xx.tsv"
    path.write_text("a\tb\tneutral\nonly one field\n")
    with pytest.raises(r.DataFormatError, match=r"dev-xx\.tsv:2: expected 2 tab-separated fields"):
        list(r.read_xtreme_pair_tsv(path))


def test_unknown_label_names_file_line_and_expected(tmp_path):
    path = tmp_path / "dev-xx.tsv"
    path.write_text("a\tb\tneutral\na\tb\tmaybe\n")
    with pytest.raises(
        r.DataFormatError, match=r"dev-xx\.tsv:2: unknown label 'maybe'.*contradiction"
    ):
        list(r.read_xtreme_pair_tsv(path))
    tags = tmp_path / "dev-yy.tsv"
    tags.write_text("Hello\tNOUN\n\nWorld\tNUON\n")
    with pytest.raises(r.DataFormatError, match=r"dev-yy\.tsv:3: unknown tag 'NUON'"):
        list(r.read_token_tag_file(tags, r.UPOS_TAGS))


def test_bad_json_and_misplaced_answer(tmp_path):
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"sentence1": "a", "sentence2": "b", "gold_label": "neutral"}\n{oops\n')
    with pytest.raises(r.DataFormatError, match=r"x\.jsonl:2: invalid JSON"):
        list(r.read_nli_jsonl(lines))
    squad = tmp_path / "s.json"
    squad.write_text(
        '{"data": [{"paragraphs": [{"context": "abc def", "qas": '
        '[{"id": "q", "question": "?", "answers": [{"text": "def", "answer_start": 1}]}]}]}]}'
    )
    with pytest.raises(
        r.DataFormatError, match=r"paragraphs\[0\]\.qas\[0\]\.answers\[0\].*not at answer_start 1"
    ):
        list(r.read_squad_json(squad))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        list(r.read_xtreme_pair_tsv(tmp_path / "nope.tsv"))
