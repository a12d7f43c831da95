"""Deterministic featurization of reader examples into variable-length token features (pure
Python/numpy, no TensorFlow). Feature converters (``feature_converters.py``) pad them to
fixed-shape batches.

Every function takes an example dict from ``readers.py`` (or the synthetic source) and an
``XLMRTokenizer`` and returns one feature dict, or a list of them when an example becomes
several windows (QA, long tagging sentences). Feature keys follow DESIGN.md: ``input_ids``,
``labels``, ``label_mask``, ``start_positions``/``end_positions``; bookkeeping keys
(``example_id``, ``offsets``, ``word_ids``, ...) stay on the host for answer extraction and
scoring.

Nothing is dropped or cut silently: every function takes an optional ``counts`` mapping
(``collections.Counter``) and adds one to ``counts[reason]`` per example for each reason below
that applies to it. ``example_problem`` names, without a tokenizer, why an example carries no
usable training target; ``pipeline.featurize`` drops such examples from a training split and
keeps (and counts) them elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xstilts.data.readers import DataFormatError

Feature = dict[str, Any]
Counts = MutableMapping[str, int]

# Why an example carries no usable training target (dropped from a training split).
MISSING_LABEL = "missing_label"  # no label / tags / answer on the example
EMPTY = "empty"  # a text field (sentence, context, question, choices, tokens) is empty
MISALIGNED_ANSWER = "misaligned_answer_span"  # the answer covers no context token
DROP_REASONS = (MISSING_LABEL, EMPTY, MISALIGNED_ANSWER)
# Why a kept example was cut or altered.
TOO_LONG = "too_long"  # a pair / choice truncated longest-first to max_length
QUESTION_TOO_LONG = "question_too_long"  # question cut to max_query_length tokens
ANSWER_BEYOND_WINDOW = "answer_beyond_window"  # the answer fits no window: every target is <s>
WORD_TOO_LONG = "word_too_long"  # a word longer than a tagging window keeps its first pieces
EMPTY_WORD = "empty_word"  # a word that tokenizes to nothing becomes <unk>
TRUNCATION_REASONS = (TOO_LONG, QUESTION_TOO_LONG, ANSWER_BEYOND_WINDOW, WORD_TOO_LONG, EMPTY_WORD)

# QA protocol defaults (DESIGN.md; jiant / BERT run_squad)
QA_MAX_LENGTH = 384
QA_DOC_STRIDE = 128
QA_MAX_QUERY_LENGTH = 64
IGNORE_LABEL = -1  # label of tokens that carry no tag (continuation pieces, specials, padding)


if TYPE_CHECKING:  # pragma: no cover
    from xstilts.tokenization import XLMRTokenizer as Tokenizer


def label_index(labels: Sequence[str], label: Any, where: str) -> int:
    """Position of ``label`` in the task's label list; a clear error otherwise."""
    try:
        return list(labels).index(label)
    except ValueError:
        raise DataFormatError(
            where, None, f"unknown label {label!r}; expected one of {list(labels)}"
        ) from None


def count(counts: Counts | None, reason: str, when: bool = True) -> None:
    """``counts[reason] += 1`` when ``when`` (and ``counts`` is given)."""
    if counts is not None and when:
        counts[reason] = counts.get(reason, 0) + 1


def _blank(text: Any) -> bool:
    return not isinstance(text, str) or not text.strip()


def example_problem(kind: str, example: Mapping[str, Any]) -> str | None:
    """Why ``example`` (a reader dict of a ``kind`` task) has no usable training target, or None:
    ``EMPTY`` (a text field is empty) or ``MISSING_LABEL``. Needs no tokenizer."""
    if kind == "classification":
        texts = [example.get("text_a"), *([] if example.get("text_b") is None
                                          else [example["text_b"]])]  # fmt: skip
        labelled = example.get("label") is not None
    elif kind == "tagging":
        texts, labelled = [" ".join(example.get("tokens") or ())], example.get("tags") is not None
    elif kind == "qa":
        texts = [example.get("context"), example.get("question")]
        labelled = bool(example.get("answers")) or bool(example.get("is_impossible"))
    elif kind == "multiple_choice":
        texts = [" ".join(example.get("choices") or ())]
        labelled = example.get("label") is not None
    elif kind == "mlm":
        texts, labelled = [example.get("text")], True
    else:
        return None
    if any(_blank(text) for text in texts):
        return EMPTY
    return None if labelled else MISSING_LABEL


def truncated_pair(
    tokenizer: Tokenizer, text_a: str, text_b: str | None, max_length: int, counts: Counts | None
) -> list[int]:
    """``tokenizer.encode``/``encode_pair`` with ``max_length``, counting ``TOO_LONG``."""
    a = tokenizer.encode_text(text_a)
    b = None if text_b is None else tokenizer.encode_text(text_b)
    special = tokenizer.num_special_tokens(b is not None)
    too_long = len(a) + len(b or ()) + special > max_length
    count(counts, TOO_LONG, too_long)
    if too_long:
        a, b = tokenizer.truncate(a, b, max_length)
    return tokenizer.build_inputs(a, b)


# ------------------------------------------------------------------------ batched tokenization


def texts_to_encode(kind: str, example: Mapping[str, Any]) -> list[str]:
    """The strings the featurizer of ``kind`` passes to ``encode_text`` for ``example``."""
    if kind == "classification":
        texts = [example.get("text_a"), example.get("text_b")]
    elif kind == "multiple_choice":
        texts = [multiple_choice_prompt(example), *(example.get("choices") or ())]
    elif kind == "tagging":
        texts = list(example.get("tokens") or ())
    elif kind == "qa":
        texts = [(example.get("question") or "").strip()]
    else:
        texts = [example.get("text")]
    return [text for text in texts if isinstance(text, str)]


class PreEncoded:
    """``tokenizer`` with ``encode_text`` answered from ids encoded up front in one batch
    (``XLMRTokenizer.encode_texts``: one C++ SentencePiece call instead of one per string);
    strings not encoded up front go to the tokenizer. Callers must not mutate the lists."""

    def __init__(self, tokenizer: Tokenizer, texts: Sequence[str]):
        self.tokenizer = tokenizer
        unique = list(dict.fromkeys(texts))
        self._ids = dict(zip(unique, tokenizer.encode_texts(unique), strict=True))

    def encode_text(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        return ids if ids is not None else self.tokenizer.encode_text(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def pre_encoded(kind: str, examples: Sequence[Mapping[str, Any]], tokenizer: Tokenizer
                ) -> Tokenizer:
    """``PreEncoded`` over the strings of ``examples`` when the tokenizer has the batched path
    (``encode_texts``), else ``tokenizer`` itself."""
    if not hasattr(tokenizer, "encode_texts"):
        return tokenizer
    return PreEncoded(tokenizer, [t for e in examples for t in texts_to_encode(kind, e)])


# ------------------------------------------------------------------------------ classification


def classification_features(
    example: Mapping[str, Any],
    tokenizer: Tokenizer,
    max_length: int,
    labels: Sequence[str],
    *,
    counts: Counts | None = None,
) -> Feature:
    """``<s> A </s></s> B </s>`` (or ``<s> A </s>`` without ``text_b``), truncated longest-first
    (counted as ``TOO_LONG``)."""
    input_ids = truncated_pair(
        tokenizer, example["text_a"], example.get("text_b"), max_length, counts
    )
    label = example.get("label")
    return {
        "input_ids": np.asarray(input_ids, np.int32),
        "labels": IGNORE_LABEL
        if label is None
        else label_index(labels, label, f"example {example.get('id')}"),
        "example_id": example.get("id"),
    }


def multiple_choice_prompt(example: Mapping[str, Any]) -> str:
    """The first segment of every choice row: context and question joined by a space."""
    return " ".join(
        part for part in (example.get("context", ""), example.get("question", "")) if part
    )


def multiple_choice_features(
    example: Mapping[str, Any],
    tokenizer: Tokenizer,
    max_length: int,
    *,
    counts: Counts | None = None,
) -> Feature:
    """One ``<s> context question </s></s> choice </s>`` row per choice (``input_ids`` [C, *]);
    an example with any row truncated counts once as ``TOO_LONG``."""
    prompt = multiple_choice_prompt(example)
    cut: dict[str, int] = {}
    rows = [truncated_pair(tokenizer, prompt, choice, max_length, cut)
            for choice in example["choices"]]  # fmt: skip
    count(counts, TOO_LONG, bool(cut))
    label = example.get("label")
    return {
        "input_ids": [np.asarray(row, np.int32) for row in rows],
        "labels": IGNORE_LABEL if label is None else int(label),
        "example_id": example.get("id"),
    }


# ------------------------------------------------------------------------------------- tagging


def tagging_features(
    example: Mapping[str, Any],
    tokenizer: Tokenizer,
    max_length: int,
    tags: Sequence[str] | None,
    *,
    unknown_tag: str | None = None,
    counts: Counts | None = None,
) -> list[Feature]:
    """Word-by-word tokenization, the tag on each word's first sub-token (``label_mask`` 1 there).

    A gold tag outside ``tags`` is an error, unless ``unknown_tag`` (a member of ``tags``) is
    given: open tag sets such as CCG supertags map rare unseen tags to it.

    A sentence longer than ``max_length`` is split into consecutive windows of whole words, not
    truncated, so every word is labelled exactly once; ``word_ids`` maps every token back to its
    word in the original sentence (-1 for specials). A word that tokenizes to nothing becomes
    ``<unk>`` (counted as ``EMPTY_WORD``); a single word longer than a window keeps only its
    first pieces (``WORD_TOO_LONG``).
    """
    words = list(example["tokens"])
    gold = example.get("tags")
    where = f"example {example.get('id')}"
    if gold is not None and len(gold) != len(words):
        raise DataFormatError(where, None, f"{len(words)} tokens but {len(gold)} tags")
    budget = max_length - 2
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room between <s> and </s>")
    encoded = [tokenizer.encode_text(word) for word in words]
    count(counts, EMPTY_WORD, any(not word_pieces for word_pieces in encoded))
    count(counts, WORD_TOO_LONG, any(len(word_pieces) > budget for word_pieces in encoded))
    pieces = [word_pieces or [tokenizer.unk_id] for word_pieces in encoded]
    windows: list[tuple[int, int]] = []  # [first word, last word) per window
    start, used = 0, 0
    for index, word_pieces in enumerate(pieces):
        size = min(len(word_pieces), budget)
        if used + size > budget and index > start:
            windows.append((start, index))
            start, used = index, 0
        used += size
    windows.append((start, len(words)))
    features = []
    for number, (first, last) in enumerate(windows):
        ids, word_ids, label_ids, mask = [tokenizer.bos_id], [-1], [IGNORE_LABEL], [0]
        for index in range(first, last):
            word_pieces = pieces[index][:budget]
            for position, piece in enumerate(word_pieces):
                ids.append(piece)
                word_ids.append(index)
                is_first = position == 0
                mask.append(int(is_first))
                if is_first and gold is not None:
                    label_ids.append(
                        _tag_index(tags, gold[index], where, unknown_tag) if tags else IGNORE_LABEL
                    )
                else:
                    label_ids.append(IGNORE_LABEL)
        ids.append(tokenizer.eos_id)
        word_ids.append(-1)
        label_ids.append(IGNORE_LABEL)
        mask.append(0)
        features.append(
            {
                "input_ids": np.asarray(ids, np.int32),
                "labels": np.asarray(label_ids, np.int32),
                "label_mask": np.asarray(mask, np.int32),
                "word_ids": np.asarray(word_ids, np.int32),
                "example_id": example.get("id"),
                "window": number,
                "num_words": len(words),
            }
        )
    return features


def _tag_index(tags: Sequence[str], tag: str, where: str, unknown_tag: str | None) -> int:
    if unknown_tag is not None and tag not in tags:
        tag = unknown_tag
    return label_index(tags, tag, where)


# ------------------------------------------------------------------------------------ span QA


def char_span_to_tokens(
    offsets: Sequence[tuple[int, int]], start_char: int, end_char: int
) -> tuple[int, int] | None:
    """First and last token (inclusive) whose character spans overlap ``[start_char, end_char)``."""
    first = last = None
    for index, (begin, end) in enumerate(offsets):
        if end <= begin:  # empty span (a lone "▁")
            continue
        if first is None and end > start_char:
            first = index
        if begin < end_char:
            last = index
    if first is None or last is None or last < first:
        return None
    return first, last


def recover_answer(context: str, offsets: Sequence[tuple[int, int]], start: int, end: int) -> str:
    """Text of tokens ``start..end`` (inclusive) of the context, via character offsets."""
    return context[offsets[start][0] : offsets[end][1]].strip()


def qa_features(
    example: Mapping[str, Any],
    tokenizer: Tokenizer,
    max_length: int = QA_MAX_LENGTH,
    doc_stride: int = QA_DOC_STRIDE,
    max_query_length: int = QA_MAX_QUERY_LENGTH,
    *,
    context_encoding: tuple[list[int], list[tuple[int, int]]] | None = None,
    counts: Counts | None = None,
    drop_misaligned: bool = False,
) -> list[Feature]:
    """SQuAD-style windows ``<s> question </s></s> context window </s>`` (BERT/jiant protocol).

    The question keeps at most ``max_query_length`` tokens; windows advance by ``doc_stride``
    context tokens. Each window's ``offsets`` give the character span in the context of every
    token (``(-1, -1)`` outside the context) for answer extraction. The first answer is the
    training target: ``start_positions``/``end_positions`` point at its tokens when they lie
    inside the window, else at index 0 (``<s>``), which is also the target for SQuAD v2
    unanswerable questions. ``context_encoding`` reuses a tokenized context shared by several
    questions.

    Counted in ``counts``: ``QUESTION_TOO_LONG``; ``MISALIGNED_ANSWER`` when the answer covers no
    context token (with ``drop_misaligned``, training, the example gives no windows, as BERT's
    ``run_squad`` skips it); ``ANSWER_BEYOND_WINDOW`` when no window holds the whole answer.
    """
    if doc_stride < 1:
        raise ValueError(f"doc_stride must be positive, got {doc_stride}")
    question_ids = tokenizer.encode_text(example["question"].strip())
    count(counts, QUESTION_TOO_LONG, len(question_ids) > max_query_length)
    question_ids = question_ids[:max_query_length]
    context = example["context"]
    context_ids, context_offsets = context_encoding or tokenizer.encode_with_offsets(
        context, add_special_tokens=False
    )
    window_size = max_length - len(question_ids) - 4
    if window_size < 1:
        raise ValueError(
            f"max_length {max_length} leaves no room for context after "
            f"a {len(question_ids)}-token question"
        )
    answers = example.get("answers") or []
    answer_tokens = None
    if answers and not example.get("is_impossible"):
        answer = answers[0]
        begin = answer["answer_start"]
        answer_tokens = char_span_to_tokens(context_offsets, begin, begin + len(answer["text"]))
        count(counts, MISALIGNED_ANSWER, answer_tokens is None)
        if answer_tokens is None and drop_misaligned:
            return []
    features = []
    window_start = 0
    prefix = [tokenizer.bos_id, *question_ids, tokenizer.eos_id, tokenizer.eos_id]
    while True:
        length = min(window_size, len(context_ids) - window_start)
        window_ids = context_ids[window_start : window_start + length]
        input_ids = [*prefix, *window_ids, tokenizer.eos_id]
        offsets = (
            [(-1, -1)] * len(prefix)
            + list(context_offsets[window_start : window_start + length])
            + [(-1, -1)]
        )
        start_position = end_position = 0
        if answer_tokens is not None:
            first, last = answer_tokens
            if first >= window_start and last < window_start + length:
                start_position = first - window_start + len(prefix)
                end_position = last - window_start + len(prefix)
        features.append(
            {
                "input_ids": np.asarray(input_ids, np.int32),
                "start_positions": start_position,
                "end_positions": end_position,
                "offsets": np.asarray(offsets, np.int32).reshape(-1, 2),
                "context_start": len(prefix),
                "example_id": example.get("id"),
                "window": len(features),
            }
        )
        if window_start + length >= len(context_ids):
            break
        window_start += min(length, doc_stride)
    count(counts, ANSWER_BEYOND_WINDOW,
          answer_tokens is not None and all(f["start_positions"] == 0 for f in features))
    return features


def qa_features_for_examples(
    examples: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, **kwargs: Any
) -> list[Feature]:
    """``qa_features`` over many examples, tokenizing each distinct context once."""
    cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    out: list[Feature] = []
    for example in examples:
        context = example["context"]
        if context not in cache:
            cache[context] = tokenizer.encode_with_offsets(context, add_special_tokens=False)
        out.extend(qa_features(example, tokenizer, context_encoding=cache[context], **kwargs))
    return out


# ---------------------------------------------------------------------------------------- MLM


def mlm_sequences(texts: Sequence[str], tokenizer: Tokenizer, max_length: int) -> list[Feature]:
    """Concatenate the token stream of ``texts`` and cut it into ``<s> ... </s>`` rows of at most
    ``max_length`` tokens (the usual MLM packing; deterministic)."""
    body = max_length - 2
    if body < 1:
        raise ValueError(f"max_length {max_length} leaves no room between <s> and </s>")
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer.encode_text(text))
    rows = []
    for start in range(0, len(stream), body):
        ids = [tokenizer.bos_id, *stream[start : start + body], tokenizer.eos_id]
        rows.append({"input_ids": np.asarray(ids, np.int32), "example_id": len(rows)})
    return rows


MLM_PACKINGS = ("stream", "documents")


def mlm_documents(texts: Sequence[str], tokenizer: Tokenizer, max_length: int) -> list[Feature]:
    """MLM rows packed from document chunks: each text is cut into chunks of at most
    ``max_length - 2`` tokens, each chunk is a ``<s> ... </s>`` segment, and consecutive
    segments fill a row of at most ``max_length`` tokens (a segment that does not fit starts
    the next row). ``segment_ids``: 1, 2, ... per segment of the row (the model attends and
    numbers positions within a segment; see ``feature_converters.packed_positions``)."""
    body = max_length - 2
    if body < 1:
        raise ValueError(f"max_length {max_length} leaves no room between <s> and </s>")
    rows: list[Feature] = []
    ids: list[int] = []
    segments: list[int] = []

    def flush() -> None:
        if ids:
            rows.append({"input_ids": np.asarray(ids, np.int32),
                         "segment_ids": np.asarray(segments, np.int32), "example_id": len(rows)})
            ids.clear()
            segments.clear()

    for text in texts:
        tokens = tokenizer.encode_text(text)
        for start in range(0, len(tokens), body):
            chunk = [tokenizer.bos_id, *tokens[start:start + body], tokenizer.eos_id]
            if len(ids) + len(chunk) > max_length:
                flush()
            segments.extend([(segments[-1] + 1) if segments else 1] * len(chunk))
            ids.extend(chunk)
    flush()
    return rows


def mlm_features(texts: Sequence[str], tokenizer: Tokenizer, max_length: int,
                 packing: str = "stream") -> list[Feature]:
    """MLM rows of ``texts``: ``"stream"`` (``mlm_sequences``: one token stream cut into rows,
    documents run into each other) or ``"documents"`` (``mlm_documents``: rows packed from
    per-document segments with ``segment_ids``)."""
    if packing == "stream":
        return mlm_sequences(texts, tokenizer, max_length)
    if packing == "documents":
        return mlm_documents(texts, tokenizer, max_length)
    raise ValueError(f"mlm packing {packing!r}: expected one of {MLM_PACKINGS}")


def pack_first_fit(lengths: Sequence[int], length: int, max_segments: int) -> list[list[int]]:
    """Whole sequences packed into rows of at most ``length`` tokens and ``max_segments``
    sequences, first-fit decreasing: longest first (ties in index order), each into the first
    row with room. Returns each row's sequence indices in the order they sit in the row. A
    deterministic function of ``lengths`` (every host packs alike); a max-capacity segment tree
    over the rows finds the first row with room in O(log n)."""
    sizes = np.asarray(lengths, np.int64)
    if length < 1 or max_segments < 1:
        raise ValueError(f"pack_first_fit: length {length} and max_segments {max_segments} "
                         f"must be positive")
    bad = np.flatnonzero((sizes < 1) | (sizes > length))
    if bad.size:
        raise ValueError(f"pack_first_fit: sequence {int(bad[0])} has {int(sizes[bad[0]])} "
                         f"tokens; expected 1..{length} (the row length)")
    leaves = 1
    while leaves < len(sizes):
        leaves *= 2
    room = [length] * (2 * leaves)  # a node: the most room of any row below it (-1: row full)
    rows: list[list[int]] = []
    for index in np.argsort(-sizes, kind="stable").tolist():
        need = int(sizes[index])
        node = 1
        while node < leaves:
            node = 2 * node if room[2 * node] >= need else 2 * node + 1
        row = node - leaves
        if row == len(rows):
            rows.append([])
        rows[row].append(index)
        room[node] = room[node] - need if len(rows[row]) < max_segments else -1
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return rows


def max_predictions(length: int, mask_probability: float = 0.15) -> int:
    """Masked positions per row at most (BERT's ``max_predictions_per_seq``): ``p*L`` plus 5
    standard deviations of the Binomial(L, p) count, rounded up to a multiple of 8 (at most
    ``L``); a row of Bernoulli(0.15) masking exceeds it with probability < 1e-6.
    L=128 -> 40 (31%), L=256 -> 72, L=512 -> 120 (23%)."""
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    mean = mask_probability * length
    bound = mean + 5.0 * math.sqrt(length * mask_probability * (1.0 - mask_probability))
    return min(length, 8 * math.ceil(bound / 8))


def mask_tokens(
    input_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    special_ids: Sequence[int] = (0, 1, 2, 3),
    mask_probability: float = 0.15,
    max_selected: int | None = None,
) -> dict[str, np.ndarray]:
    """BERT masking on a ``[..., L]`` int array: each ordinary token is selected with probability
    ``mask_probability``, at most ``max_selected`` per row (the first ones; default
    ``max_predictions(L)``, BERT's ``max_predictions_per_seq``: the positions the trainer's MLM
    loss computes logits for); a selected token becomes ``<mask>`` (80%), a random ordinary
    token (10%) or stays (10%). Specials and padding are never selected. Returns
    ``input_ids``, ``labels`` (the original ids) and ``label_mask`` (1 where selected)."""
    input_ids = np.asarray(input_ids)
    special = np.isin(input_ids, np.asarray(list(special_ids) + [mask_id]))
    selected = (rng.random(input_ids.shape) < mask_probability) & ~special
    cap = max_predictions(input_ids.shape[-1], mask_probability) if max_selected is None \
        else max_selected  # fmt: skip
    selected &= np.cumsum(selected, axis=-1) <= cap
    action = rng.random(input_ids.shape)
    masked = input_ids.copy()
    masked[selected & (action < 0.8)] = mask_id
    randomize = selected & (action >= 0.8) & (action < 0.9)
    low = max(special_ids) + 1  # ordinary pieces: after the specials, before <mask>
    masked[randomize] = rng.integers(low, mask_id, size=int(randomize.sum()))
    return {
        "input_ids": masked.astype(np.int32),
        "labels": input_ids.astype(np.int32),
        "label_mask": selected.astype(np.int32),
    }
