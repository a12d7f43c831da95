"""TFDS catalog builders as a source of the same plain-dict examples as the native readers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from xstilts.data.readers import NLI_LABELS, DataFormatError, tydiqa_language_of
from xstilts.data.spec import TaskSpec

_NLI_NAMES = {"e": "entailment", "n": "neutral", "c": "contradiction"}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _label_name(info: Any, key: str, value: int) -> str | None:
    if int(value) < 0:  # SNLI's "no gold label"
        return None
    return info.features[key].int2str(int(value))


def tfds_examples(
    spec: TaskSpec, split: str, data_dir: str | os.PathLike | None = None
) -> Iterator[dict]:
    """Examples of ``split`` of ``spec`` from its TFDS builder, prepared under the TFDS data dir
    ``data_dir``, as the same dicts as ``readers.py`` gives (so featurization is identical).

    Every XTREME builder in TFDS 4.9 is an auto-download builder (its ``_split_generators``
    downloads: tensorflow/datasets ``tensorflow_datasets/text/xnli.py``,
    ``tensorflow_datasets/datasets/xtreme_pos/xtreme_pos_dataset_builder.py``): prepare it once
    with ``tfds build <name>`` on a machine with internet. Reading never reaches the network.
    Class labels are mapped by their names, not their ids (TFDS orders NLI labels entailment/
    neutral/contradiction; XTREME and this project use contradiction/entailment/neutral).
    """
    import tensorflow_datasets as tfds  # heavy and optional: the data extra

    if spec.tfds_name is None:
        raise KeyError(f"task {spec.name} has no TFDS builder; read its native files instead")
    if split not in spec.tfds_splits:
        raise KeyError(
            f"task {spec.name}: no TFDS split for {split!r}; mapped: {dict(spec.tfds_splits)}"
        )
    builder = tfds.builder(spec.tfds_name, data_dir=None if data_dir is None else str(data_dir))
    dataset = builder.as_dataset(split=spec.tfds_splits[split], shuffle_files=False)
    info = builder.info
    lang = spec.language
    for number, record in enumerate(tfds.as_numpy(dataset)):
        where = f"{spec.tfds_name}[{spec.tfds_splits[split]}][{number}]"
        example = _convert(spec, record, info, where, number)
        if spec.dataset == "tydiqa" and split == "train":  # one split for all languages
            if tydiqa_language_of(example["id"]) != lang:
                continue
        yield example


def _pair(record: dict, name: str, lang: str, where: str) -> tuple[str, str]:
    """The two texts of a classification record, whichever builder's field names it uses."""
    if name == "xnli":
        premise = _text(record["premise"][lang])
        languages = [_text(x) for x in record["hypothesis"]["language"]]
        hypotheses = [_text(x) for x in record["hypothesis"]["translation"]]
        if lang not in languages:
            raise DataFormatError(where, None, f"no {lang} hypothesis in {languages}")
        return premise, hypotheses[languages.index(lang)]
    for first, second in (("question1", "question2"), ("sentence1", "sentence2"),
                          ("context", "hypothesis")):  # fmt: skip
        if first in record:
            return _text(record[first]), _text(record[second])
    return _text(record["premise"]), _text(record["hypothesis"])


def _classification(spec: TaskSpec, record: dict, info: Any, where: str, number: int) -> dict:
    pair = _pair(record, spec.tfds_name or "", spec.language, where)
    label = _label_name(info, "label", record["label"])
    if spec.labels == NLI_LABELS:  # by name: TFDS orders them differently; ANLI says e/n/c
        canonical = None if label is None else _NLI_NAMES.get(label, label)
    else:  # binary tasks: ClassLabel names vary ("0"/"1", "not_duplicate"/"duplicate")
        canonical = None if label is None else str(int(record["label"]))
    if canonical is not None and spec.labels and canonical not in spec.labels:
        raise DataFormatError(where, None, f"label {label!r} not in {list(spec.labels)}")
    return {
        "id": _text(record.get("idx", record.get("uid", number))),
        "text_a": pair[0],
        "text_b": pair[1],
        "label": canonical,
    }


def _qa(spec: TaskSpec, record: dict, info: Any, where: str, number: int) -> dict:
    texts, starts = record["answers"]["text"], record["answers"]["answer_start"]
    if len(texts) != len(starts):
        raise DataFormatError(where, None, f"{len(texts)} answer texts, {len(starts)} starts")
    answers = [
        {"text": _text(t), "answer_start": int(s)} for t, s in zip(texts, starts, strict=True)
    ]
    return {
        "id": _text(record["id"]),
        "title": _text(record.get("title", b"")),
        "context": _text(record["context"]),
        "question": _text(record["question"]),
        "answers": answers,
        "is_impossible": bool(record.get("is_impossible", False)),
    }


def _tagging(spec: TaskSpec, record: dict, info: Any, where: str, number: int) -> dict:
    key = "tags" if "tags" in record else "upos"
    names = info.features[key].feature
    if len(record["tokens"]) != len(record[key]):
        raise DataFormatError(
            where, None, f"{len(record['tokens'])} tokens, {len(record[key])} tags"
        )
    pairs = [
        (_text(t), names.int2str(int(g)))
        for t, g in zip(record["tokens"], record[key], strict=True)
    ]
    # xtreme_pos keeps CoNLL-U multiword-token lines with UPOS "_"; XTREME's files drop them
    pairs = [(t, g) for t, g in pairs if g != "_"]
    return {"id": str(number), "tokens": [t for t, _ in pairs], "tags": [g for _, g in pairs]}


def _multiple_choice(spec: TaskSpec, record: dict, info: Any, where: str, number: int) -> dict:
    if "endings" in record:
        choices = [_text(e) for e in record["endings"]]
        context, question = _text(record["context"]), ""
    else:
        choices = [_text(record[f"answer{i}"]) for i in range(4)]
        context, question = _text(record["context"]), _text(record["question"])
    label = int(record["label"])
    return {
        "id": _text(record.get("id", str(number))),
        "context": context,
        "question": question,
        "choices": choices,
        "label": label if label >= 0 else None,
    }


_CONVERTERS = {
    "classification": _classification,
    "qa": _qa,
    "tagging": _tagging,
    "multiple_choice": _multiple_choice,
}


def _convert(spec: TaskSpec, record: dict, info: Any, where: str, number: int) -> dict:
    """One TFDS record as the dict the native reader of ``spec.kind`` gives."""
    if spec.kind not in _CONVERTERS:
        raise DataFormatError(where, None, f"task kind {spec.kind} has no TFDS conversion")
    return _CONVERTERS[spec.kind](spec, record, info, where, number)
