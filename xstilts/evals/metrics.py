"""XTREME's per-language metrics, computed exactly as google-research/xtreme ``evaluate.py`` does.

All scores are percentages (x100), like XTREME's.

* ``accuracy``: XNLI, PAWS-X, Tatoeba.
* ``tagging_f1``: UDPOS and PAN-X, seqeval's micro chunk F1 with seqeval 0.0.12's chunk types
  (the version XTREME's published numbers and its ``evaluate_test.py`` golden values were made
  with). UPOS tags are not IOB tags, yet XTREME scores them as if they were: the first character is
  read as the IOB prefix, so runs of identical tags merge into one chunk and SCONJ/SYM (prefix
  "S") are single-token chunks (``reference/paper.md`` section 3.4).
* ``squad_evaluate``: XQuAD and TyDiQA-GoldP, the SQuAD v1.1 script (English normalisation).
* ``mlqa_evaluate``: MLQA's own script: unicode punctuation, per-language articles, whitespace
  tokens, mixed character/whitespace segmentation for zh.
* ``bucc_f1``: BUCC, F1 over the set of ``src<TAB>trg`` pairs.
* ``qa_postprocess``: window start/end logits + character offsets -> answer text per question.
"""

from __future__ import annotations

import collections
import functools
import re
import string
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from seqeval.metrics.sequence_labeling import end_of_chunk, start_of_chunk

# -- classification ------------------------------------------------------------------------


def _check_lengths(labels: Sequence, predictions: Sequence, what: str) -> None:
    if len(labels) != len(predictions):
        raise ValueError(f"{what}: {len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError(f"{what}: no examples to score")


def accuracy(labels: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Share of exact label matches, x100."""
    _check_lengths(labels, predictions, "accuracy")
    correct = sum(int(p == g) for p, g in zip(predictions, labels, strict=True))
    return {"accuracy": 100.0 * correct / len(predictions)}


# -- tagging (seqeval) ---------------------------------------------------------------------


def seqeval_chunks(sentences: Sequence[Sequence[str]]) -> set[tuple[str, int, int]]:
    """Chunks ``(type, start, end)`` as seqeval 0.0.12's ``get_entities`` finds them.

    seqeval's own ``end_of_chunk`` / ``start_of_chunk`` decide the boundaries; only the chunk
    type differs from seqeval >= 0.0.13, which drops the tag's first character, so CCONJ and
    SCONJ would both become "CONJ" and UDPOS F1 would no longer match XTREME's golden values.
    Sentences are joined with an "O" in between, as seqeval does.
    """
    flat: list[str] = []
    for sentence in sentences:
        flat.extend(sentence)
        flat.append("O")
    chunks = set()
    prev_tag, prev_type, begin = "O", "", 0
    for i, label in enumerate([*flat, "O"]):
        tag, type_ = label[0], label.split("-")[-1]
        if end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.add((prev_type, begin, i - 1))
        if start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def tagging_f1(labels: Sequence[Sequence[str]],
               predictions: Sequence[Sequence[str]]) -> dict[str, float]:
    """seqeval micro chunk F1 / precision / recall, x100 (XTREME ``f1`` for udpos and panx)."""
    _check_lengths(labels, predictions, "tagging")
    for i, (gold, pred) in enumerate(zip(labels, predictions, strict=True)):
        if len(gold) != len(pred):
            raise ValueError(
                f"tagging: sentence {i} has {len(gold)} gold tags but {len(pred)} predicted tags")
        for tag in [*gold, *pred]:
            if not tag:
                raise ValueError(f"tagging: sentence {i} has an empty tag")
    gold_chunks, pred_chunks = seqeval_chunks(labels), seqeval_chunks(predictions)
    correct = len(gold_chunks & pred_chunks)
    precision = correct / len(pred_chunks) if pred_chunks else 0.0
    recall = correct / len(gold_chunks) if gold_chunks else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"f1": 100 * f1, "precision": 100 * precision, "recall": 100 * recall}


# -- BUCC ----------------------------------------------------------------------------------


def bucc_f1(labels: Iterable[str], predictions: Iterable[str]) -> dict[str, float]:
    """F1 over the sets of ``src_id<TAB>trg_id`` lines (XTREME ``bucc_f1``), x100."""
    gold = {tuple(line.split("\t")) for line in labels}
    pred = {tuple(line.split("\t")) for line in predictions}
    correct = len(gold & pred)
    if correct == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    precision, recall = correct / len(pred), correct / len(gold)
    f1 = 2 * precision * recall / (precision + recall)
    return {"f1": 100 * f1, "precision": 100 * precision, "recall": 100 * recall}


# -- SQuAD v1.1 ----------------------------------------------------------------------------

_ASCII_PUNCT = frozenset(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1: lower case, drop ASCII punctuation, English articles, extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _qa_scores(prediction: str, answers: Sequence[str], normalize) -> tuple[float, float]:
    """(EM, F1) of one prediction: max over gold answers (v1.1 rules).

    A question without gold answers (unanswerable, SQuAD v2 style) scores 1 for an empty
    normalised prediction and 0 otherwise, as SQuAD v2's script does; the v1.1 script would crash.
    """
    pred = normalize(prediction)
    if not answers:
        return float(pred == ""), float(pred == "")
    em = max(float(pred == normalize(a)) for a in answers)
    f1 = max(_token_f1(pred.split(), normalize(a).split()) for a in answers)
    return em, f1


def _iter_questions(dataset: Sequence[Mapping]) -> Iterable[Mapping]:
    for a, article in enumerate(dataset):
        if "paragraphs" not in article:
            raise ValueError(f"QA labels: article {a} has no 'paragraphs' (SQuAD format expected)")
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def _qa_evaluate(dataset: Sequence[Mapping], predictions: Mapping[str, str],
                 normalize) -> dict[str, float]:
    em_sum = f1_sum = 0.0
    total = 0
    for qa in _iter_questions(dataset):
        total += 1
        if qa["id"] not in predictions:  # XTREME: "Unanswered question ... will receive score 0."
            continue
        em, f1 = _qa_scores(predictions[qa["id"]], [a["text"] for a in qa["answers"]], normalize)
        em_sum += em
        f1_sum += f1
    if total == 0:
        raise ValueError("QA labels: no questions to score")
    return {"exact_match": 100.0 * em_sum / total, "f1": 100.0 * f1_sum / total}


def squad_evaluate(dataset: Sequence[Mapping], predictions: Mapping[str, str]) -> dict[str, float]:
    """SQuAD v1.1 EM/F1 x100 over the questions of ``dataset`` (a SQuAD ``data`` list)."""
    return _qa_evaluate(dataset, predictions, squad_normalize)


# -- MLQA ----------------------------------------------------------------------------------

MLQA_LANGUAGES = ("en", "es", "hi", "vi", "de", "ar", "zh")
_MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": "\\sال^|ال",  # sic: MLQA's pattern; in effect every "ال" is removed
}
_CJK = re.compile("[\u4e00-\u9fa5]")


@functools.cache
def mlqa_punctuation() -> frozenset[str]:
    """Every unicode character of a punctuation category (P*), plus ASCII punctuation."""
    return frozenset(
        chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")
    ) | _ASCII_PUNCT


def _mixed_segmentation(text: str, punct: frozenset[str]) -> list[str]:
    """zh: every CJK character and punctuation mark is a token; other runs split on whitespace."""
    tokens: list[str] = []
    pending = ""
    for ch in text:
        if _CJK.search(ch) or ch in punct:
            tokens.extend(pending.split())
            pending = ""
            tokens.append(ch)
        else:
            pending += ch
    tokens.extend(pending.split())
    return tokens


def mlqa_normalize(text: str, lang: str) -> str:
    """MLQA's ``normalize_answer``: lower, drop punctuation and ``lang``'s articles, re-join."""
    if lang not in MLQA_LANGUAGES:
        raise ValueError(f"MLQA: unknown language {lang!r}; expected one of {MLQA_LANGUAGES}")
    punct = mlqa_punctuation()
    text = "".join(ch for ch in text.lower() if ch not in punct)
    if lang in _MLQA_ARTICLES:
        text = re.sub(_MLQA_ARTICLES[lang], " ", text)
    tokens = _mixed_segmentation(text, punct) if lang == "zh" else text.split()
    return " ".join(t for t in tokens if t.strip())


def mlqa_evaluate(dataset: Sequence[Mapping], predictions: Mapping[str, str],
                  lang: str) -> dict[str, float]:
    """MLQA EM/F1 x100 with the answer-language normalisation."""
    if lang not in MLQA_LANGUAGES:
        raise ValueError(f"MLQA: unknown language {lang!r}; expected one of {MLQA_LANGUAGES}")
    return _qa_evaluate(dataset, predictions, functools.partial(mlqa_normalize, lang=lang))


# -- QA post-processing --------------------------------------------------------------------


def qa_postprocess(start_logits: np.ndarray, end_logits: np.ndarray,
                   offsets: Sequence[Sequence[tuple[int, int] | None]],
                   example_ids: Sequence[str], contexts: Mapping[str, str], *,
                   n_best: int = 20, max_answer_length: int = 30,
                   null_score_diff_threshold: float | None = None) -> dict[str, str]:
    """Answer text per question from the logits of its (possibly several) windows.

    As Hugging Face's ``postprocess_qa_predictions`` (the SQuAD recipe XTREME trains with): in
    every window take the ``n_best`` highest start and end logits, keep the spans whose both ends
    are context tokens (``offsets[w][t]`` is ``(char_start, char_end)``; ``None`` marks question,
    special and padding tokens), with ``start <= end`` and at most ``max_answer_length`` tokens;
    the answer is the span of highest ``start + end`` logit over all windows of the question,
    cut from the context by character offsets. No valid span: the empty string.

    ``null_score_diff_threshold`` switches on SQuAD v2 behaviour: the null score is the smallest
    ``start[0] + end[0]`` (the ``<s>`` token) over the windows, and the answer is empty when it
    exceeds the best span score by more than the threshold.
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    windows = len(example_ids)
    if start_logits.ndim != 2 or start_logits.shape != end_logits.shape:
        raise ValueError(f"start/end logits must both be [windows, length], got "
                         f"{start_logits.shape} and {end_logits.shape}")
    if start_logits.shape[0] != windows or len(offsets) != windows:
        raise ValueError(f"{start_logits.shape[0]} logit rows, {len(offsets)} offset lists and "
                         f"{windows} example ids: expected one of each per window")
    best: dict[str, tuple[float, str]] = {}
    null: dict[str, float] = {}
    for w, example_id in enumerate(example_ids):
        if example_id not in contexts:
            raise ValueError(f"window {w}: example id {example_id!r} has no context")
        context, offs = contexts[example_id], offsets[w]
        starts, ends = start_logits[w], end_logits[w]
        if len(offs) > starts.shape[0]:
            raise ValueError(f"window {w}: {len(offs)} offsets for {starts.shape[0]} logits")
        null[example_id] = min(null.get(example_id, np.inf), float(starts[0] + ends[0]))
        best.setdefault(example_id, (-np.inf, ""))
        top_starts = np.argsort(starts, kind="stable")[::-1][:n_best]
        top_ends = np.argsort(ends, kind="stable")[::-1][:n_best]
        for s in top_starts:
            for e in top_ends:
                if s >= len(offs) or e >= len(offs) or offs[s] is None or offs[e] is None:
                    continue
                if e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(starts[s] + ends[e])
                if score > best[example_id][0]:
                    best[example_id] = (score, context[offs[s][0]: offs[e][1]])
    answers = {}
    for example_id, (score, text) in best.items():
        if null_score_diff_threshold is not None and null[example_id] - score > \
                null_score_diff_threshold:
            text = ""
        answers[example_id] = text
    return answers
