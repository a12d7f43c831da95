"""Featurization on real samples: QA windows and answer recovery (XQuAD en/zh/th), tagging
alignment (checked against Hugging Face's fast tokenizer), pairs, multiple choice, MLM masking.

The SentencePiece model is the 1000-piece test model, not XLM-R's vocabulary: most non-Latin
characters are unknown, and SentencePiece merges a run of unknown characters into one <unk>
piece. Answer recovery therefore goes through character offsets, and for zh/th it can only be
exact where the answer's boundaries fall on token boundaries."""

import numpy as np
import pytest

from xstilts.data import preprocessors as P
from xstilts.data import readers as r
from xstilts.tokenization import XLMRTokenizer


@pytest.fixture(scope="module")
def tok():
    from tests.conftest import require_sample

    return XLMRTokenizer(require_sample("spm/test_model.model"))


def _check_qa(examples, features, tok, *, max_length=384, stride=128, max_query=64):
    """Returns (exact, straddling) answer counts; asserts everything checkable."""
    groups = []  # features come in example order, windows numbered from 0 per example
    for feature in features:
        if feature["window"] == 0:
            groups.append([])
        groups[-1].append(feature)
        assert len(feature["input_ids"]) <= max_length
    assert len(groups) == len(examples)
    exact = straddling = 0
    for example, windows in zip(examples, groups, strict=True):
        assert all(w["example_id"] == example["id"] for w in windows)
        context = example["context"]
        # windows advance by `stride` context tokens
        for a, b in zip(windows, windows[1:], strict=False):
            assert tuple(b["offsets"][b["context_start"]]) == tuple(
                a["offsets"][a["context_start"] + stride]
            )
        question = tok.encode_text(example["question"].strip())
        assert windows[0]["context_start"] == min(len(question), max_query) + 3
        answer = example["answers"][0]
        begin, end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
        hits = [w for w in windows if w["start_positions"] > 0]
        assert hits, f"answer of {example['id']} fits no window"
        for window in hits:
            recovered = P.recover_answer(
                context, window["offsets"], window["start_positions"], window["end_positions"]
            )
            assert answer["text"].strip() in recovered
        all_offsets = tok.encode_with_offsets(context, add_special_tokens=False)[1]
        first, last = P.char_span_to_tokens(all_offsets, begin, end)
        # a token span can give exactly the answer iff its first token starts at the answer
        # (or only whitespace lies between) and its last token ends where the answer ends
        aligned = (
            context[all_offsets[first][0] : begin].strip() == "" and all_offsets[last][1] == end
        )
        if aligned:
            assert recovered == answer["text"].strip(), example["id"]
            exact += 1
        else:  # no token span can give exactly the answer: a piece straddles its boundary
            straddling += 1
    return exact, straddling


def test_xquad_en_every_answer_recovered(tok, shared_data):
    examples = list(r.read_squad_json(shared_data("xquad/xquad.en.json")))
    features = P.qa_features_for_examples(examples, tok)
    exact, straddling = _check_qa(examples, features, tok)
    assert exact + straddling == 1190
    # Hand-checked: only "1986" (piece "6—") and "n2 + 1" (piece "▁1.") straddle a boundary.
    assert straddling == 2


@pytest.mark.parametrize("lang", ["zh", "th"])
def test_xquad_zh_th_contexts(tok, shared_data, lang):
    examples = list(r.read_squad_json(shared_data(f"xquad/xquad.{lang}.json")))[:300]
    features = P.qa_features_for_examples(examples, tok)
    exact, straddling = _check_qa(examples, features, tok)
    assert exact > 0 and exact + straddling == 300
    # offsets partition the context: increasing, within bounds, covering every non-space char
    context = examples[0]["context"]
    ids, offsets = tok.encode_with_offsets(context, add_special_tokens=False)
    covered = np.zeros(len(context), bool)
    previous_end = 0
    for begin, end in offsets:
        assert previous_end <= max(begin, previous_end) and 0 <= begin <= end <= len(context)
        covered[begin:end] = True
        previous_end = end
    assert all(covered[i] or context[i].isspace() for i in range(len(context)))


def test_qa_small_windows_and_unanswerable(tok, shared_data):
    examples = list(r.read_squad_json(shared_data("english/squad/allennlp_squad_v2.0_sample.json")))
    impossible = P.qa_features(examples[0], tok, max_length=64, doc_stride=16)
    assert examples[0]["is_impossible"] and len(impossible) > 1
    assert all(f["start_positions"] == f["end_positions"] == 0 for f in impossible)
    features = P.qa_features_for_examples(examples[1:], tok, max_length=96, doc_stride=16)
    exact, straddling = _check_qa(examples[1:], features, tok, max_length=96, stride=16)
    assert exact == 5 and straddling == 0


def test_tagging_alignment_matches_hugging_face(tok, shared_data):
    transformers = pytest.importorskip("transformers")
    hf = transformers.XLMRobertaTokenizerFast(vocab_file=str(tok.model_file))
    sentences = list(r.read_token_tag_file(shared_data("udpos/xtreme_format/dev-en.tsv")))[:40]
    for sentence in sentences:
        (feature,) = P.tagging_features(sentence, tok, 256, r.UPOS_TAGS)
        encoded = hf(sentence["tokens"], is_split_into_words=True)
        assert feature["input_ids"].tolist() == encoded["input_ids"]
        word_ids = [-1 if w is None else w for w in encoded.word_ids()]
        assert feature["word_ids"].tolist() == word_ids
        first = [i for i, w in enumerate(word_ids) if w >= 0 and (i == 0 or word_ids[i - 1] != w)]
        assert np.flatnonzero(feature["label_mask"]).tolist() == first
        gold = [r.UPOS_TAGS.index(t) for t in sentence["tags"]]
        assert feature["labels"][first].tolist() == gold
        assert (feature["labels"][feature["label_mask"] == 0] == P.IGNORE_LABEL).all()
    # a hand-checked sentence: "From the AP comes" -> ▁F ro m | ▁the | ▁A P | ▁come s
    (feature,) = P.tagging_features(sentences[0], tok, 256, r.UPOS_TAGS)
    pieces = [tok.id_to_piece(i) for i in feature["input_ids"][:10]]
    assert pieces == ["<s>", "▁F", "ro", "m", "▁the", "▁A", "P", "▁come", "s", "▁this"]
    assert feature["label_mask"][:10].tolist() == [0, 1, 0, 0, 1, 1, 0, 1, 0, 1]
    assert [r.UPOS_TAGS[i] for i in feature["labels"][[1, 4, 5, 7]]] == [
        "ADP",
        "DET",
        "PROPN",
        "VERB",
    ]


def test_long_sentences_split_into_windows_not_truncated(tok, shared_data):
    (sentence,) = r.read_token_tag_file(shared_data("panx/hf_dummy/ja/dev"), r.PANX_TAGS)
    windows = P.tagging_features(sentence, tok, 32, r.PANX_TAGS)
    assert len(windows) > 1 and all(len(w["input_ids"]) <= 32 for w in windows)
    labelled_words = np.concatenate([w["word_ids"][w["label_mask"] == 1] for w in windows])
    assert labelled_words.tolist() == list(range(len(sentence["tokens"])))  # each word once
    labels = np.concatenate([w["labels"][w["label_mask"] == 1] for w in windows])
    assert [r.PANX_TAGS[i] for i in labels] == sentence["tags"]


def test_pairs_and_multiple_choice(tok, shared_data):
    (example,) = list(r.read_xtreme_pair_tsv(shared_data("xnli/xtreme_format/dev-en.tsv")))[1:2]
    feature = P.classification_features(example, tok, 256, r.NLI_LABELS)
    a, b = tok.encode_text(example["text_a"]), tok.encode_text(example["text_b"])
    assert feature["input_ids"].tolist() == [0, *a, 2, 2, *b, 2]
    assert feature["labels"] == r.NLI_LABELS.index("contradiction") == 0
    short = P.classification_features(example, tok, 16, r.NLI_LABELS)
    assert len(short["input_ids"]) == 16 and short["input_ids"][-1] == 2
    with pytest.raises(r.DataFormatError, match="unknown label 'maybe'"):
        P.classification_features({**example, "label": "maybe"}, tok, 64, r.NLI_LABELS)
    (hella,) = list(r.read_hellaswag_jsonl(shared_data("english/hellaswag/hellaswag_val.jsonl")))[
        :1
    ]
    mc = P.multiple_choice_features(hella, tok, 64)
    assert len(mc["input_ids"]) == 4 and mc["labels"] == 3
    assert (
        tok.decode(mc["input_ids"][3])
        == "A man is sitting on a roof. he starts pulling up roofing on a roof."
    )


def test_mlm_masking_statistics(tok):
    rng = np.random.default_rng(0)
    ids = rng.integers(4, tok.mask_id, size=(64, 512)).astype(np.int32)
    ids[:, 0], ids[:, 300], ids[:, 400:] = 0, 2, 1  # <s>, </s>, padding
    out = P.mask_tokens(ids, np.random.default_rng(1), mask_id=tok.mask_id)
    ordinary = (ids >= 4) & (ids != tok.mask_id)
    selected = out["label_mask"] == 1
    assert not selected[~ordinary].any()  # never specials or padding
    assert (out["input_ids"][~selected] == ids[~selected]).all()
    assert (out["labels"] == ids).all()
    n = ordinary.sum()
    assert abs(selected.sum() / n - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
    k = selected.sum()
    masked = (out["input_ids"] == tok.mask_id) & selected
    kept = (out["input_ids"] == ids) & selected
    random = selected & ~masked & ~kept
    for count, p in ((masked.sum(), 0.8), (random.sum(), 0.1), (kept.sum(), 0.1)):
        assert (
            abs(count / k - p) < 4 * np.sqrt(p * (1 - p) / k) + 1e-3
        )  # + chance random == original
    assert (out["input_ids"][random] >= 4).all() and (out["input_ids"][random] < tok.mask_id).all()
    again = P.mask_tokens(ids, np.random.default_rng(1), mask_id=tok.mask_id)
    assert all((again[key] == out[key]).all() for key in out)  # deterministic given the rng


def test_mlm_masking_caps_each_row_at_max_predictions(tok):
    """A row never has more masked positions than the trainer's MLM loss computes logits for
    (40 at L=128), the first ones kept; rows under the cap are masked as without it."""
    assert [P.max_predictions(n) for n in (16, 128, 256, 512)] == [16, 40, 72, 120]
    ids = np.full((2, 128), 50, np.int32)
    ids[1, 20:] = 1  # a short row: 19 ordinary tokens, never near the cap
    out = P.mask_tokens(ids, np.random.default_rng(3), mask_id=tok.mask_id,
                        mask_probability=0.9, max_selected=P.max_predictions(128))
    rng = np.random.default_rng(3)
    raw = (rng.random(ids.shape) < 0.9) & (ids != 1)
    assert raw[0].sum() > 100 and out["label_mask"][0].sum() == 40
    first = np.flatnonzero(raw[0])[:40]
    assert (np.flatnonzero(out["label_mask"][0]) == first).all()
    assert (out["label_mask"][1] == raw[1]).all()  # under the cap: unchanged


def test_mlm_packing(tok):
    rows = P.mlm_sequences(["Hello world.", "This is a test."], tok, 8)
    stream = tok.encode_text("Hello world.") + tok.encode_text("This is a test.")
    body = [int(i) for row in rows for i in row["input_ids"][1:-1]]
    assert body == stream
    assert all(row["input_ids"][0] == 0 and row["input_ids"][-1] == 2 for row in rows)
    assert all(len(row["input_ids"]) <= 8 for row in rows)


def test_ja_pairs_and_offsets(tok, shared_data):
    (example,) = list(
        r.read_xtreme_pair_tsv(shared_data("pawsx/xtreme_format/dev-ja.tsv"), r.BINARY_LABELS)
    )[:1]
    feature = P.classification_features(example, tok, 256, r.BINARY_LABELS)
    a, b = tok.encode_text(example["text_a"]), tok.encode_text(example["text_b"])
    assert feature["input_ids"].tolist() == [0, *a, 2, 2, *b, 2]
    assert feature["labels"] == r.BINARY_LABELS.index(example["label"])
    lines = shared_data("tatoeba/v1/tatoeba.jpn-eng.jpn").read_text(encoding="utf-8").splitlines()
    for text in lines[:50]:  # every character is covered by some token's span, in order
        _, offsets = tok.encode_with_offsets(text, add_special_tokens=False)
        covered = np.zeros(len(text), bool)
        for begin, end in offsets:
            assert 0 <= begin <= end <= len(text)
            covered[begin:end] = True
        assert all(covered[i] or text[i].isspace() for i in range(len(text)))
        assert [b for b, _ in offsets] == sorted(b for b, _ in offsets)


def test_counts_name_every_cut_and_unusable_example(tok):
    """Each function counts, per example, what it cut (``TRUNCATION_REASONS``) or what leaves
    the example without a target (``DROP_REASONS``); truncation itself is unchanged."""
    counts: dict[str, int] = {}
    long_pair = {"id": "1", "text_a": "many words " * 30, "text_b": "more", "label": "neutral"}
    short = P.classification_features(long_pair, tok, 16, r.NLI_LABELS, counts=counts)
    assert short["input_ids"].tolist() == tok.encode_pair(long_pair["text_a"], "more", 16)
    P.classification_features({**long_pair, "text_a": "ok"}, tok, 16, r.NLI_LABELS, counts=counts)
    choices = {"id": "m", "context": "a " * 40, "question": "", "choices": ["x", "y"], "label": 1}
    P.multiple_choice_features(choices, tok, 16, counts=counts)
    assert counts == {P.TOO_LONG: 2}  # one per example, not per choice row
    tagged = {"id": "t", "tokens": ["supercalifragilistic", " ", "ok"],
              "tags": ["NOUN", "X", "ADJ"]}  # fmt: skip
    counts.clear()
    P.tagging_features(tagged, tok, 6, r.UPOS_TAGS, counts=counts)
    assert counts == {P.WORD_TOO_LONG: 1, P.EMPTY_WORD: 1}
    context = "The cat sat on the mat . "
    question = {"id": "q", "context": context, "question": "where " * 70, "is_impossible": False,
                "answers": [{"text": "mat", "answer_start": context.index("mat")}]}  # fmt: skip
    counts.clear()
    assert P.qa_features(question, tok, max_length=96, counts=counts)[0]["start_positions"] > 0
    assert counts == {P.QUESTION_TOO_LONG: 1}
    blank = {**question, "question": "where ?",
             "answers": [{"text": " ", "answer_start": len(context) - 1}]}  # fmt: skip
    counts.clear()
    kept = P.qa_features(blank, tok, counts=counts)
    assert counts == {P.MISALIGNED_ANSWER: 1} and kept[0]["start_positions"] == 0
    assert P.qa_features(blank, tok, drop_misaligned=True) == []  # training: BERT skips it
    assert P.example_problem("classification", {**long_pair, "label": None}) == P.MISSING_LABEL
    assert P.example_problem("classification", {**long_pair, "text_b": " "}) == P.EMPTY
    assert P.example_problem("qa", {**question, "answers": []}) == P.MISSING_LABEL
    assert P.example_problem("qa", {**question, "answers": [], "is_impossible": True}) is None
    assert P.example_problem("tagging", {"tokens": ["a"], "tags": None}) == P.MISSING_LABEL
