"""SQuAD translate-train: translate contexts and questions, project each answer span.

Per question the context is translated a second time with the answer wrapped in markers
(``[`` ``]``, when the context has none of its own); the text between the markers of the
translation is the answer, placed in the plainly translated context at its occurrence nearest the
marker's relative position. Where the markers did not survive (or the answer is not found), the
answer translated alone is looked up exactly, then fuzzily (the best window of the same number of
words, ``difflib`` ratio >= ``FUZZY_MIN``). A question with no match is dropped and counted; the
counts per method go into the manifest.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence

OPEN, CLOSE = "[", "]"
FUZZY_MIN = 0.6
Translate = Callable[[Sequence[str]], list[str]]
METHODS = ("marker", "exact", "fuzzy", "dropped")


def _nearest(haystack: str, needle: str, near: float) -> int:
    """Start of the occurrence of ``needle`` closest to relative position ``near``; -1: none."""
    starts = [m.start() for m in re.finditer(re.escape(needle), haystack)]
    if not starts:
        return -1
    return min(starts, key=lambda s: abs(s / max(len(haystack), 1) - near))


def _fuzzy(context: str, answer: str) -> tuple[int, str] | None:
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]
    n = max(1, len(answer.split()))
    best, best_ratio = None, FUZZY_MIN
    for size in {max(1, n - 1), n, n + 1}:
        for i in range(len(words) - size + 1):
            start, end = words[i][0], words[i + size - 1][1]
            ratio = difflib.SequenceMatcher(None, context[start:end], answer).ratio()
            if ratio > best_ratio:
                best, best_ratio = (start, context[start:end]), ratio
    return best


def project(context_t: str, marked_t: str | None, answer_t: str) -> tuple[str, int, str]:
    """``(method, answer_start, answer_text)`` in the translated context ``context_t``."""
    if marked_t is not None and marked_t.count(OPEN) == 1 and marked_t.count(CLOSE) == 1:
        left, right = marked_t.index(OPEN), marked_t.index(CLOSE)
        text = marked_t[left + 1:right].strip()
        if left < right and text:
            start = _nearest(context_t, text, left / max(len(marked_t), 1))
            if start >= 0:
                return "marker", start, text
    answer_t = answer_t.strip()
    if answer_t:
        start = _nearest(context_t, answer_t, 0.5)
        if start >= 0:
            return "exact", start, answer_t
        found = _fuzzy(context_t, answer_t)
        if found is not None:
            return "fuzzy", found[0], found[1]
    return "dropped", -1, ""


def units(squad: dict) -> list[dict]:
    """The paragraphs of a SQuAD JSON document, each with its article's title."""
    return [{"title": article.get("title", ""), "paragraph": paragraph}
            for article in squad["data"] for paragraph in article["paragraphs"]]


def translate_paragraphs(chunk: Sequence[dict], translate: Translate) -> list[dict]:
    """Translated paragraphs (questions without a projected answer left out) with counts."""
    contexts, questions, marked, answers, where = [], [], [], [], []
    for u, unit in enumerate(chunk):
        paragraph = unit["paragraph"]
        context = paragraph["context"]
        contexts.append(context)
        for q, qa in enumerate(paragraph["qas"]):
            questions.append(qa["question"])
            answer = qa["answers"][0]
            start, text = answer["answer_start"], answer["text"]
            if OPEN in context or CLOSE in context:
                marked.append(None)
            else:
                marked.append(context[:start] + OPEN + text + CLOSE + context[start + len(text):])
            answers.append(text)
            where.append((u, q))
    contexts_t = translate(contexts)
    questions_t = translate(questions)
    marked_idx = [i for i, m in enumerate(marked) if m is not None]
    marked_t: list[str | None] = [None] * len(marked)
    for i, text in zip(marked_idx, translate([marked[i] for i in marked_idx]), strict=True):
        marked_t[i] = text
    answers_t = translate(answers)
    out = [{"title": unit["title"], "paragraph": {"context": contexts_t[u], "qas": []},
            "counts": Counter()} for u, unit in enumerate(chunk)]
    for i, (u, q) in enumerate(where):
        qa = chunk[u]["paragraph"]["qas"][q]
        method, start, text = project(contexts_t[u], marked_t[i], answers_t[i])
        out[u]["counts"][method] += 1
        if method != "dropped":
            out[u]["paragraph"]["qas"].append(
                {"id": qa["id"], "question": questions_t[i],
                 "answers": [{"answer_start": start, "text": text}]})
    for row in out:
        row["counts"] = {m: row["counts"].get(m, 0) for m in METHODS}
    return out


def shard_text(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def assemble(lines: Sequence[str]) -> tuple[str, dict[str, int]]:
    """The SQuAD v1.1 JSON document of the shards' paragraph lines, and the summed counts."""
    articles: list[dict] = []
    counts: Counter = Counter()
    for line in lines:
        row = json.loads(line)
        counts.update(row["counts"])
        if not articles or articles[-1]["title"] != row["title"]:
            articles.append({"title": row["title"], "paragraphs": []})
        articles[-1]["paragraphs"].append(row["paragraph"])
    doc = {"version": "1.1", "data": articles}
    return json.dumps(doc, ensure_ascii=False), {m: counts.get(m, 0) for m in METHODS}
