"""XTREME metrics on hand-checked cases (each expected value is worked out in the comment)."""

import random
import warnings

import numpy as np
import pytest
import seqeval.metrics

from xstilts.evals import metrics


def squad(qas):
    """A one-article SQuAD ``data`` list from ``[(id, [answers])]``."""
    return [{"paragraphs": [{"context": "", "qas": [
        {"id": qid, "answers": [{"text": a, "answer_start": 0} for a in answers]}
        for qid, answers in qas]}]}]


# -- accuracy -----------------------------------------------------------------------------


def test_accuracy_hand_checked():
    assert metrics.accuracy(["a", "b", "c", "a"], ["a", "c", "c", "b"]) == {"accuracy": 50.0}


def test_accuracy_rejects_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        metrics.accuracy(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="no examples"):
        metrics.accuracy([], [])


# -- tagging ------------------------------------------------------------------------------


def test_ner_f1_hand_checked():
    # gold chunks PER(0-1), LOC(3); predicted PER(0-1), ORG(3): 1 of 2 right both ways -> 50
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"]]
    assert metrics.tagging_f1(gold, pred) == {"f1": 50.0, "precision": 50.0, "recall": 50.0}


def test_ner_f1_equals_seqeval_on_random_iob2():
    """For real IOB2 tags our chunking is seqeval's (the library, version 1.2.2)."""
    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(200)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in s] for s in gold]
    ours = metrics.tagging_f1(gold, pred)
    assert ours["f1"] == pytest.approx(100 * seqeval.metrics.f1_score(gold, pred), abs=1e-12)
    assert ours["precision"] == pytest.approx(100 * seqeval.metrics.precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(100 * seqeval.metrics.recall_score(gold, pred))


def test_pos_f1_is_chunk_f1_not_accuracy():
    # UPOS runs merge into chunks: gold NOUN(0-1) VERB(2), predicted NOUN(0) VERB(1-2).
    # Token accuracy would be 2/3, but no chunk matches: F1 = 0 (XTREME's "POS F1" quirk).
    assert metrics.tagging_f1([["NOUN", "NOUN", "VERB"]],
                              [["NOUN", "VERB", "VERB"]])["f1"] == 0.0
    # SCONJ starts with "S": every SCONJ is a chunk of its own, runs do not merge.
    # gold SCONJ(0) SCONJ(1) NOUN(2); pred the same -> 3 of 3 chunks.
    assert metrics.tagging_f1([["SCONJ", "SCONJ", "NOUN"]],
                              [["SCONJ", "SCONJ", "NOUN"]])["f1"] == 100.0
    assert len(metrics.seqeval_chunks([["SCONJ", "SCONJ", "NOUN", "NOUN"]])) == 3


def test_pos_types_are_whole_tags_as_in_seqeval_0_0_12():
    # seqeval >= 0.0.13 types "CCONJ" and "SCONJ" both as "CONJ" and calls this a hit;
    # XTREME's golden values were made with whole-tag types, where it is a miss.
    gold, pred = [["SCONJ"]], [["CCONJ"]]
    assert metrics.tagging_f1(gold, pred)["f1"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CCONJ seems not to be NE tag"
        assert seqeval.metrics.f1_score(gold, pred) == 1.0  # the newer library's answer


def test_tagging_rejects_ragged_sentences():
    with pytest.raises(ValueError, match="sentence 1 has 2 gold tags but 1 predicted"):
        metrics.tagging_f1([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="1 predictions for 2 labels"):
        metrics.tagging_f1([["O"], ["O"]], [["O"]])


# -- BUCC ---------------------------------------------------------------------------------


def test_bucc_f1_hand_checked():
    # 1 correct of 3 predicted and 2 gold: P 1/3, R 1/2, F1 2*(1/6)/(5/6) = 0.4
    result = metrics.bucc_f1(["a\tb", "c\td"], ["a\tb", "c\te", "f\tg"])
    assert result["f1"] == pytest.approx(40.0)
    assert result["precision"] == pytest.approx(100 / 3)
    assert result["recall"] == pytest.approx(50.0)
    assert metrics.bucc_f1(["a\tb"], ["a\tc"]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


# -- SQuAD v1.1 ---------------------------------------------------------------------------


def test_squad_hand_checked():
    data = squad([("q1", ["The Eiffel Tower", "Eiffel"]),  # EM via normalisation
                  ("q2", ["in 1889"]),                    # partial: "1889" -> P 1, R 1/2
                  ("q3", ["Paris"])])                     # no prediction -> 0
    result = metrics.squad_evaluate(data, {"q1": "eiffel tower!", "q2": "1889"})
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_squad_empty_prediction_and_unanswerable():
    # An empty prediction scores 0 against "Paris", but EM 1 / F1 0 against "the": both
    # normalise to "" (SQuAD v1.1's own behaviour).
    assert metrics.squad_evaluate(squad([("q", ["Paris"])]), {"q": ""}) == \
        {"exact_match": 0.0, "f1": 0.0}
    assert metrics.squad_evaluate(squad([("q", ["the"])]), {"q": ""}) == \
        {"exact_match": 100.0, "f1": 0.0}
    # No gold answer (unanswerable): only an empty answer is right (SQuAD v2 rule).
    assert metrics.squad_evaluate(squad([("q", [])]), {"q": ""}) == \
        {"exact_match": 100.0, "f1": 100.0}
    assert metrics.squad_evaluate(squad([("q", [])]), {"q": "Paris"}) == \
        {"exact_match": 0.0, "f1": 0.0}


def test_squad_is_english_centric():
    # Whitespace tokens only: "308分" is one token, so it shares nothing with "308".
    assert metrics.squad_evaluate(squad([("q", ["308"])]), {"q": "308分"})["f1"] == 0.0


# -- MLQA ---------------------------------------------------------------------------------


def test_mlqa_normalisation_hand_checked():
    assert metrics.mlqa_normalize("¿El perro?", "es") == "perro"  # unicode punct + article
    assert metrics.mlqa_normalize("Der Hund, die Katze", "de") == "hund katze"
    assert metrics.mlqa_normalize("الكتاب", "ar") == "كتاب"  # every "ال" goes
    assert metrics.mlqa_normalize("của nhà", "vi") == "nhà"
    assert metrics.mlqa_normalize("«The» cat", "hi") == "the cat"  # hi: no articles
    assert metrics.mlqa_normalize("电化电池 ABC def。", "zh") == "电 化 电 池 abc def"


def test_mlqa_scores_hand_checked():
    de = metrics.mlqa_evaluate(squad([("a", ["3050 und 3350 Meter"])]), {"a": "3050 und 3350"},
                               "de")
    # tokens 3050 und 3350 vs 3050 und 3350 meter: P 1, R 3/4 -> F1 6/7
    assert de == {"exact_match": 0.0, "f1": pytest.approx(100 * 6 / 7)}
    zh = metrics.mlqa_evaluate(squad([("b", ["电池"])]), {"b": "电化电池"}, "zh")
    # characters 电 化 电 池 vs 电 池: 2 common, P 1/2, R 1 -> F1 2/3
    assert zh == {"exact_match": 0.0, "f1": pytest.approx(200 / 3)}


def test_mlqa_unknown_language():
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        metrics.mlqa_evaluate(squad([("a", ["x"])]), {"a": "x"}, "fr")


# -- QA post-processing -------------------------------------------------------------------


def _window(length, start_logits, end_logits):
    s, e = np.full(length, -10.0), np.full(length, -10.0)
    for i, v in start_logits.items():
        s[i] = v
    for i, v in end_logits.items():
        e[i] = v
    return s, e


def test_qa_postprocess_best_span_across_windows():
    context = "Paris is the capital of France."
    # token t covers context[o0:o1]; tokens 0-2 are <s>, question, </s> (no offsets)
    offs = [None, None, None, (0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), None]
    s0, e0 = _window(10, {3: 2.0, 1: 9.0}, {3: 2.0, 1: 9.0})  # best logits on a question token
    s1, e1 = _window(10, {6: 3.0}, {8: 4.0})  # "capital of France": 7.0 beats "Paris": 4.0
    answers = metrics.qa_postprocess(np.stack([s0, s1]), np.stack([e0, e1]), [offs, offs],
                                     ["q", "q"], {"q": context})
    assert answers == {"q": "capital of France"}


def test_qa_postprocess_order_length_and_unanswerable():
    context = "a b c d e"
    offs = [None, (0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    # start 4 + end 2 sums to 10 but ends before it starts; next best: "a b" (0 + 5).
    s, e = _window(6, {4: 5.0, 1: 0.0}, {2: 5.0, 4: -1.0})
    assert metrics.qa_postprocess(s[None], e[None], [offs], ["q"], {"q": context}) == \
        {"q": "a b"}
    # tokens 1..5 score 10 but are 5 tokens long; with at most 4 the best is 1..2 (6).
    s, e = _window(6, {1: 5.0}, {5: 5.0, 2: 1.0})
    assert metrics.qa_postprocess(s[None], e[None], [offs], ["q"], {"q": context}) == \
        {"q": "a b c d e"}
    assert metrics.qa_postprocess(s[None], e[None], [offs], ["q"], {"q": context},
                                  max_answer_length=4) == {"q": "a b"}
    none = [None] * 6  # no context token at all: unanswerable, the empty answer
    assert metrics.qa_postprocess(s[None], e[None], [none], ["q"], {"q": context}) == {"q": ""}
    # SQuAD v2 rule: the <s> score 12 exceeds the best span (10) by 2.
    s[0] = e[0] = 6.0
    assert metrics.qa_postprocess(s[None], e[None], [offs], ["q"], {"q": context},
                                  null_score_diff_threshold=1.0) == {"q": ""}
    assert metrics.qa_postprocess(s[None], e[None], [offs], ["q"], {"q": context},
                                  null_score_diff_threshold=5.0) == {"q": "a b c d e"}


def test_qa_postprocess_bad_input():
    with pytest.raises(ValueError, match="one of each per window"):
        metrics.qa_postprocess(np.zeros((2, 4)), np.zeros((2, 4)), [[None] * 4], ["q", "q"],
                               {"q": ""})
    with pytest.raises(ValueError, match="has no context"):
        metrics.qa_postprocess(np.zeros((1, 4)), np.zeros((1, 4)), [[None] * 4], ["q"], {})
