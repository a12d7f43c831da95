"""XTREME's per-language metrics, computed exactly as google-research/xtreme ``evaluate.py`` does.

All scores are percentages (x100), like XTREME's.

* ``accuracy``: XNLI, PAWS-X, Tatoeba.
* ``tagging_f1``: UDPOS and PAN-X, seqeval's micro chunk F1 with seqeval 0.0.12's chunk types
  (the version XTREME's published numbers and its ``evaluate_test.py`` golden values were made
  with). UPOS tags are not IOB tags, yet XTREME scores them as if they were: the first character is
  read as the IOB prefix, so runs of identical tags merge into one chunk and SCONJ/SYM (prefix
  "S") are single-token chunks (google-research/xtreme ``evaluate_test.py``
  golden values).
* ``squad_evaluate``: XQuAD and TyDiQA-GoldP, the SQuAD v1.1 script (English normalisation).
* ``mlqa_evaluate``: MLQA's own script: unicode punctuation, per-language articles, whitespace
  tokens, mixed character/whitespace segmentation for zh.
* ``bucc_f1``: BUCC, F1 over the set of ``src<TAB>trg`` pairs.
* ``qa_postprocess``: window start/end logits + character offsets -> answer text per question.

``METRICS`` is the one table from a task's metric name (``TaskSpec.metric``) to its primary
number (the key of the score dict that XTREME averages). The ``*_stats`` functions return
per-example sufficient statistics from which ``reduce_stats`` recomputes the official score of
any resample of the examples exactly (the report's bootstrap relies on that).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import string
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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
    return _with_em_f1({"exact_match": 100.0 * em_sum / total, "f1": 100.0 * f1_sum / total})


def _with_em_f1(scores: dict[str, float]) -> dict[str, float]:
    """Adds XTREME's QA language number (EM + F1) / 2 as ``em_f1`` (``METRICS``' primary key)."""
    return {**scores, "em_f1": (scores["exact_match"] + scores["f1"]) / 2}


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


# -- the metric table ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    """A task metric: the keys of its score dict, the primary one, and its per-example stats.

    ``stats_width`` is the number of columns of the per-example statistics (0: the metric is a
    set-level score, BUCC's F1 over mined pairs, with no per-example decomposition).
    """

    name: str
    primary: str
    keys: tuple[str, ...]
    stats_width: int


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", "accuracy", ("accuracy",), 1),
    "f1_seqeval": Metric("f1_seqeval", "f1", ("f1", "precision", "recall"), 3),
    "squad_em_f1": Metric("squad_em_f1", "em_f1", ("exact_match", "f1", "em_f1"), 2),
    "mlqa_em_f1": Metric("mlqa_em_f1", "em_f1", ("exact_match", "f1", "em_f1"), 2),
    "bucc_f1": Metric("bucc_f1", "f1", ("f1", "precision", "recall"), 0),
    # MLM: per example (correct masked tokens, masked tokens); accuracy over all tokens.
    "mlm_accuracy": Metric("mlm_accuracy", "accuracy", ("accuracy",), 2),
}


def metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: expected one of {sorted(METRICS)}")
    return METRICS[name]


def primary(name: str) -> str:
    """The key of the number XTREME averages in ``name``'s score dict (e.g. ``em_f1``)."""
    return metric(name).primary


def primary_value(name: str, scores: Mapping[str, float]) -> float:
    """The primary number of a score dict; QA dicts without ``em_f1`` get (EM + F1) / 2."""
    key = primary(name)
    if key == "em_f1" and key not in scores and {"exact_match", "f1"} <= set(scores):
        return (float(scores["exact_match"]) + float(scores["f1"])) / 2
    if key not in scores:
        raise KeyError(f"metric {name}: score dict has no {key!r} (has {sorted(scores)})")
    return float(scores[key])


# -- per-example sufficient statistics -----------------------------------------------------


def accuracy_stats(labels: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
    """``[n, 1]``: 1.0 where the prediction is the label (``accuracy`` of any resample)."""
    _check_lengths(labels, predictions, "accuracy")
    return np.array([[float(p == g)] for p, g in zip(predictions, labels, strict=True)])


def tagging_stats(labels: Sequence[Sequence[str]],
                  predictions: Sequence[Sequence[str]]) -> np.ndarray:
    """``[n, 3]`` per sentence: (correct chunks, predicted chunks, gold chunks).

    ``seqeval_chunks`` separates sentences with an "O", so no chunk crosses a sentence and the
    chunks of the whole set are the union of each sentence's: summed columns give ``tagging_f1``.
    """
    tagging_f1(labels, predictions)  # the same validation (and error messages)
    out = np.zeros((len(labels), 3))
    for i, (gold, pred) in enumerate(zip(labels, predictions, strict=True)):
        gold_chunks, pred_chunks = seqeval_chunks([gold]), seqeval_chunks([pred])
        out[i] = (len(gold_chunks & pred_chunks), len(pred_chunks), len(gold_chunks))
    return out


def qa_stats(dataset: Sequence[Mapping], predictions: Mapping[str, str],
             language: str | None = None, mlqa: bool = False) -> np.ndarray:
    """``[n, 2]`` per question in ``dataset`` order: (EM, F1) in [0, 1], SQuAD v1.1's rules or,
    with ``mlqa``, MLQA's normalisation for ``language``; an unanswered question scores 0."""
    if mlqa:
        if language not in MLQA_LANGUAGES:
            raise ValueError(f"MLQA: unknown language {language!r}; expected one of "
                             f"{MLQA_LANGUAGES}")
        normalize = functools.partial(mlqa_normalize, lang=language)
    else:
        normalize = squad_normalize
    rows = []
    for qa in _iter_questions(dataset):
        if qa["id"] not in predictions:
            rows.append((0.0, 0.0))
            continue
        rows.append(_qa_scores(predictions[qa["id"]], [a["text"] for a in qa["answers"]],
                               normalize))
    if not rows:
        raise ValueError("QA labels: no questions to score")
    return np.asarray(rows, dtype=np.float64)


def _prf(correct: np.ndarray, predicted: np.ndarray, gold: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 x100 from chunk counts, as ``tagging_f1`` (0 where undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, correct / np.where(predicted > 0, predicted, 1), 0.0)
        recall = np.where(gold > 0, correct / np.where(gold > 0, gold, 1), 0.0)
        total = precision + recall
        f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    return {"f1": 100 * f1, "precision": 100 * precision, "recall": 100 * recall}


def reduce_sums(name: str, sums: np.ndarray, count: int | np.ndarray) -> dict[str, np.ndarray]:
    """The score dict from column sums ``[..., k]`` of per-example stats over ``count`` examples
    (vectorised over leading axes: one row per bootstrap resample)."""
    spec = metric(name)
    sums = np.asarray(sums, dtype=np.float64)
    if spec.stats_width == 0:
        raise ValueError(f"metric {name}: a set-level score without per-example statistics")
    if name == "mlm_accuracy" and sums.shape[-1] == 2:
        return {"accuracy": 100.0 * sums[..., 0] / sums[..., 1]}
    if sums.shape[-1] != spec.stats_width and not (name == "mlm_accuracy" and
                                                    sums.shape[-1] == 1):
        raise ValueError(f"metric {name}: {sums.shape[-1]} stats columns, expected "
                         f"{spec.stats_width}")
    if spec.primary == "accuracy":
        return {"accuracy": 100.0 * sums[..., 0] / count}
    if spec.primary == "em_f1":
        em, f1 = 100.0 * sums[..., 0] / count, 100.0 * sums[..., 1] / count
        return {"exact_match": em, "f1": f1, "em_f1": (em + f1) / 2}
    return _prf(sums[..., 0], sums[..., 1], sums[..., 2])


def reduce_stats(name: str, stats: np.ndarray) -> dict[str, float]:
    """The official score dict (same keys, x100) of the examples whose stats are ``stats``."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or stats.shape[0] == 0:
        raise ValueError(f"metric {name}: expected stats [n > 0, k], got shape {stats.shape}")
    return {k: float(v) for k, v in reduce_sums(name, stats.sum(0), stats.shape[0]).items()}


# -- pure scorers the driver assembles -----------------------------------------------------


def word_tags(features: Sequence[Mapping[str, Any]], predicted: Sequence[np.ndarray],
              label_names: Sequence[str], examples: Sequence[Mapping[str, Any]],
              missing: str = "O") -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tags per sentence from first-sub-token predictions over its windows.

    ``features[i]`` has ``example_id``, ``label_mask`` and ``word_ids``; ``predicted[i]`` the
    label index per token; a word no window predicts gets ``missing``.
    """
    by_id: dict[Any, dict[int, str]] = {}
    for feature, tags in zip(features, predicted, strict=True):
        words = by_id.setdefault(feature["example_id"], {})
        for position in np.flatnonzero(np.asarray(feature["label_mask"])):
            words[int(feature["word_ids"][position])] = label_names[int(tags[position])]
    gold, pred = [], []
    for e in examples:
        words = by_id.get(e["id"], {})
        gold.append(list(e["tags"]))
        pred.append([words.get(i, missing) for i in range(len(e["tags"]))])
    return gold, pred


def squad_data(examples: Sequence[Mapping[str, Any]]) -> list[dict]:
    """A SQuAD ``data`` list, one article per example (``id``, ``context``, ``question``,
    ``answers``), for ``squad_evaluate`` / ``mlqa_evaluate`` / ``qa_stats``."""
    return [{"paragraphs": [{"context": e["context"], "qas": [
        {"id": e["id"], "question": e.get("question", ""), "answers": e["answers"]}]}]}
        for e in examples]


def majority(values: Iterable[Any]) -> Any:
    """The most frequent value (ties: the first seen)."""
    counts = collections.Counter(values)
    if not counts:
        raise ValueError("majority: no values")
    return counts.most_common(1)[0][0]


def chance_classification(labels: Sequence[str], train_labels: Iterable[str]
                          ) -> dict[str, float]:
    """Accuracy of always predicting the majority training label."""
    return accuracy(labels, [majority(train_labels)] * len(labels))


def chance_tagging(labels: Sequence[Sequence[str]], train_tags: Iterable[str]
                   ) -> dict[str, float]:
    """seqeval F1 of tagging every word with the majority training tag."""
    tag = majority(train_tags)
    return tagging_f1(labels, [[tag] * len(sentence) for sentence in labels])


def chance_answers(contexts: Mapping[str, str], seed: int = 0) -> dict[str, str]:
    """One random whitespace word of its context per question (seeded; "" for no words)."""
    rng = np.random.default_rng(seed)
    answers = {}
    for qid, context in contexts.items():
        words = context.split()
        answers[qid] = words[int(rng.integers(len(words)))] if words else ""
    return answers
