"""Multiple-choice translate-train (HellaSwag, Cosmos QA, CommonsenseQA) in each release's layout.

The context, the question and each choice are translated (all segments of a shard in one call,
``translate_records.RecordTask``); the label, ids and every other key are kept. HellaSwag's choice
is ``ctx_b + " " + ending`` (as the reader builds it), translated as one sentence into
``endings`` with ``ctx_b`` emptied, so the reader's choices are the translated sentences.

An example is dropped, and counted by its first reason, when a non-empty English choice
translates to an empty one (``empty_choice``), the context or question does
(``empty_context``, ``empty_question``), or distinct English choices translate to the same text
(``duplicate_choices``: the label would be ambiguous).
"""

from __future__ import annotations

from collections.abc import Sequence

from xstilts.translate_records import Record, RecordTask

REASONS = ("empty_choice", "empty_context", "empty_question", "duplicate_choices")


def drop_reason(english: Sequence[str], translated: Sequence[str], num_prefix: int,
                prefix_names: Sequence[str]) -> str | None:
    """Why an example is dropped, or None. The first ``num_prefix`` segments are the context /
    question (named by ``prefix_names``), the rest the choices."""
    choices_en, choices_t = english[num_prefix:], translated[num_prefix:]
    if any(e.strip() and not t.strip() for e, t in zip(choices_en, choices_t, strict=True)):
        return "empty_choice"
    for name, e, t in zip(prefix_names, english[:num_prefix], translated[:num_prefix],
                          strict=True):
        if e.strip() and not t.strip():
            return f"empty_{name}"
    if len({t.strip() for t in choices_t}) < len({e.strip() for e in choices_en}):
        return "duplicate_choices"
    return None


def _hellaswag_segments(r: Record) -> list[str]:
    return [r["ctx_a"], *(f"{r.get('ctx_b', '')} {e}".strip() for e in r["endings"])]


def _hellaswag_rebuild(r: Record, t: list[str]) -> Record | str:
    reason = drop_reason(_hellaswag_segments(r), t, 1, ("context",))
    if reason:
        return reason
    out = {**r, "ctx_a": t[0], "ctx_b": "", "endings": t[1:]}
    if "ctx" in r:
        out["ctx"] = t[0]
    return out


ANSWERS = tuple(f"answer{i}" for i in range(4))


def _cosmosqa_segments(r: Record) -> list[str]:
    return [r["context"], r["question"], *(r[k] for k in ANSWERS)]


def _cosmosqa_rebuild(r: Record, t: list[str]) -> Record | str:
    reason = drop_reason(_cosmosqa_segments(r), t, 2, ("context", "question"))
    if reason:
        return reason
    return {**r, "context": t[0], "question": t[1], **dict(zip(ANSWERS, t[2:], strict=True))}


def _csqa_segments(r: Record) -> list[str]:
    question = r["question"]
    if isinstance(question, dict):  # the release layout
        return [question["stem"], *(c["text"] for c in question["choices"])]
    return [question, *r["choices"]["text"]]  # the flat Hugging Face re-export


def _csqa_rebuild(r: Record, t: list[str]) -> Record | str:
    reason = drop_reason(_csqa_segments(r), t, 1, ("question",))
    if reason:
        return reason
    question = r["question"]
    if isinstance(question, dict):
        choices = [{**c, "text": text} for c, text in zip(question["choices"], t[1:], strict=True)]
        return {**r, "question": {**question, "stem": t[0], "choices": choices}}
    return {**r, "question": t[0], "choices": {**r["choices"], "text": t[1:]}}


HELLASWAG = RecordTask("jsonl", _hellaswag_segments, _hellaswag_rebuild, REASONS)
COSMOSQA = RecordTask("csv", _cosmosqa_segments, _cosmosqa_rebuild, REASONS)
COMMONSENSEQA = RecordTask("jsonl", _csqa_segments, _csqa_rebuild, REASONS)
