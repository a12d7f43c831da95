"""TFDS catalog builders as an alternative source for the tasks they cover (needs
tensorflow-datasets). ``TaskSpec.examples(split, data_dir, source="tfds")`` reads the prepared
builder ``spec.tfds_name`` from the TFDS data dir ``data_dir`` and converts its records into
the same plain dicts as the native-file readers, so featurization and batching are identical.

Every XTREME builder in TFDS is an auto-download builder (reference/deps.md §5): prepare it once
with ``tfds build <name>`` on a machine with internet. Reading uses ``download=False`` and never
reaches the network. Class labels are mapped by their names, not their ids (TFDS orders NLI
labels entailment/neutral/contradiction; XTREME and this project use contradiction/entailment/
neutral).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from xstilts.data.readers import DataFormatError, tydiqa_language_of

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.data.tasks import TaskSpec



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
    """Examples of ``split`` of ``spec`` from its TFDS builder (prepared under ``data_dir``)."""
    import tensorflow_datasets as tfds

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
        example = _convert(spec, record, info, lang, where, number)
        if spec.dataset == "tydiqa" and split == "train":  # one split for all languages
            if tydiqa_language_of(example["id"]) != lang:
                continue
        yield example


def _convert(spec: TaskSpec, record: dict, info: Any, lang: str, where: str, number: int) -> dict:
    from xstilts.data.readers import NLI_LABELS

    kind, name = spec.kind, spec.tfds_name or ""
    if kind == "classification":
        if name == "xnli":
            premise = _text(record["premise"][lang])
            languages = [_text(x) for x in record["hypothesis"]["language"]]
            hypotheses = [_text(x) for x in record["hypothesis"]["translation"]]
            if lang not in languages:
                raise DataFormatError(where, None, f"no {lang} hypothesis in {languages}")
            pair = (premise, hypotheses[languages.index(lang)])
        elif "question1" in record:
            pair = (_text(record["question1"]), _text(record["question2"]))
        elif "sentence1" in record:
            pair = (_text(record["sentence1"]), _text(record["sentence2"]))
        elif "context" in record:
            pair = (_text(record["context"]), _text(record["hypothesis"]))
        else:
            pair = (_text(record["premise"]), _text(record["hypothesis"]))
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
    if kind == "qa":
        texts, starts = record["answers"]["text"], record["answers"]["answer_start"]
        if len(texts) != len(starts):
            raise DataFormatError(where, None, f"{len(texts)} answer texts, {len(starts)} starts")
        answers = [
            {"text": _text(t), "answer_start": int(s)} for t, s in zip(texts, starts, strict=True)
        ]
        qid = _text(record["id"])
        return {
            "id": qid,
            "title": _text(record.get("title", b"")),
            "context": _text(record["context"]),
            "question": _text(record["question"]),
            "answers": answers,
            "is_impossible": bool(record.get("is_impossible", False)),
        }
    if kind == "tagging":
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
    if kind == "multiple_choice":
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
    raise DataFormatError(where, None, f"task kind {kind} has no TFDS conversion")
