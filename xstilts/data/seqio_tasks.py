"""seqio Tasks and Mixtures built from the task and mixture registry (needs seqio + TF)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

try:  # the data extra
    import seqio
    import tensorflow as tf
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "xstilts.data.seqio_tasks needs seqio and tensorflow (pip install 'xstilts[data]'); "
        "the rest of xstilts.data works without them"
    ) from error

from xstilts.data.registry import family_shares
from xstilts.data.registry import register_mixture as register_spec
from xstilts.data.tasks import (
    MIXTURES,
    TASKS,
    TaskSpec,
    get_mixture,
    get_task,
    mixture_rates,
)

_VOCAB = seqio.PassThroughVocabulary(size=0)


def _feature(dtype: Any, rank: int) -> seqio.Feature:
    return seqio.Feature(_VOCAB, add_eos=False, required=True, dtype=dtype, rank=rank)


# One schema for every task (seqio Mixtures need equal output features): the fields a task's kind
# does not use hold "" / [] / false. A multiple-choice label is the choice index as a string.
SCHEMA: dict[str, tuple[Any, int]] = {
    "id": (tf.string, 0), "kind": (tf.string, 0),
    "text_a": (tf.string, 0), "text_b": (tf.string, 0), "label": (tf.string, 0),
    "tokens": (tf.string, 1), "tags": (tf.string, 1),
    "context": (tf.string, 0), "question": (tf.string, 0),
    "answers_text": (tf.string, 1), "answers_start": (tf.int32, 1), "is_impossible": (tf.bool, 0),
    "choices": (tf.string, 1), "text": (tf.string, 0),
}  # fmt: skip
_EMPTY = {
    key: [] if rank else (False if dtype == tf.bool else "")
    for key, (dtype, rank) in SCHEMA.items()
}


def _flatten(kind: str, example: dict) -> dict:
    """Reader example -> the shared schema (None becomes "")."""
    row = dict(_EMPTY, id=str(example["id"]), kind=kind)
    if kind == "classification":
        row.update(text_a=example["text_a"], text_b=example.get("text_b") or "",
                   label=example.get("label") or "")  # fmt: skip
    elif kind == "tagging":
        row.update(tokens=example["tokens"], tags=example.get("tags") or [])
    elif kind == "qa":
        answers = example.get("answers") or []
        row.update(context=example["context"], question=example["question"],
                   answers_text=[a["text"] for a in answers],
                   answers_start=[a["answer_start"] for a in answers],
                   is_impossible=bool(example.get("is_impossible")))  # fmt: skip
    elif kind == "multiple_choice":
        label = example.get("label")
        row.update(context=example.get("context", ""), question=example.get("question", ""),
                   choices=example["choices"])  # fmt: skip
        row["label"] = "" if label is None else str(label)
    else:
        row.update(text=example["text"])
    return row


def _source(spec: TaskSpec, data_dir: Any) -> seqio.FunctionDataSource:
    signature = {key: tf.TensorSpec([None] * rank, dtype) for key, (dtype, rank) in SCHEMA.items()}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one file per split; shuffling is the consumer's
        spec.path(split, data_dir)  # fail early, naming the missing file

        def generate() -> Iterable[dict]:
            for example in spec.examples(split, data_dir):
                yield _flatten(spec.kind, example)

        return tf.data.Dataset.from_generator(generate, output_signature=signature)

    return seqio.FunctionDataSource(dataset_fn, splits=tuple(spec.splits))


def register_task(spec: TaskSpec, data_dir: str | os.PathLike | None = None) -> seqio.Task:
    """Register ``spec`` as a seqio Task (replacing an earlier registration of that name)."""
    if spec.kind == "retrieval":
        raise ValueError(f"{spec.name} is a retrieval task; seqio Tasks are for training data")
    seqio.TaskRegistry.remove(spec.name)
    features = {key: _feature(dtype, rank) for key, (dtype, rank) in SCHEMA.items()}
    task = seqio.TaskRegistry.add(
        spec.name,
        source=_source(spec, data_dir),
        output_features=features,
    )
    task.metadata = spec.metadata  # languages, metric, max length, epochs, train task, ...
    return task


def register_mixture(name: str, data_dir: str | os.PathLike | None = None) -> seqio.Mixture:
    """Register mixture ``name`` (and its tasks and sub-mixtures) with seqio. Task rates are
    computed from the number of training examples exactly as ``registry.mixture_rates``."""
    spec = get_mixture(name)
    for sub in (*(s for s, _ in spec.submixtures), *(f for f, _ in spec.families)):
        if sub not in seqio.MixtureRegistry.names():
            register_mixture(sub, data_dir)
    for task in spec.tasks:
        if task not in seqio.TaskRegistry.names():
            register_task(get_task(task), data_dir)
    sizes: dict[str, int] = {}

    def size(task: str) -> int:
        if task not in sizes:
            sizes[task] = get_task(task).num_examples("train", data_dir)
        return sizes[task]

    def own_rate(task: seqio.Task) -> float:
        own = {t: 0.0 for t in spec.tasks}
        own.update(mixture_rates(_own_only(name), size))
        return own[task.name]

    own_share = 1.0 - sum(share for _, share in spec.submixtures)
    components: list[tuple[str, Any]] = [(t, _scaled(own_rate, own_share)) for t in spec.tasks]
    components += [(sub, share) for sub, share in spec.submixtures]
    # Family shares come from the reference's sizes when seqio asks for a rate (read lazily,
    # as the own-task rates are; seqio calls a rate with the sub-mixture).
    components += [(family, _family_rate(name, family, size)) for family, _ in spec.families]
    seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, components)


def _family_rate(name: str, family: str, size: Any) -> Any:
    return lambda _mixture: dict(family_shares(name, size))[family]


def _scaled(rate: Any, factor: float) -> Any:
    return lambda task: factor * rate(task)


def _own_only(name: str) -> str:
    """A registered copy of mixture ``name`` without its sub-mixtures (its own-task rates)."""
    spec = get_mixture(name)
    if not spec.submixtures:
        return name
    own = f"{name}#own"
    if own not in MIXTURES:
        register_spec(dataclasses.replace(spec, name=own, submixtures=()))
    return own


def register_all(data_dir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """Every non-retrieval task and every mixture of the registry (lazy: nothing is read yet).

    Kept at arm's length: a seqio Task here is a source of raw reader fields (strings, labels)
    plus metadata; tokenization and batching stay in ``preprocessors.py`` /
    ``feature_converters.py``, because seqio's ``SentencePieceVocabulary`` assumes PAD=0, EOS=1,
    UNK=2 (google/seqio ``seqio/vocabularies.py``), which gives wrong ids for XLM-R, and its
    feature converters (``seqio/feature_converters.py``) are built for T5 inputs/targets, not an
    encoder classifier. What seqio adds is the registry mixture authors know,
    ``seqio.get_mixture_or_task(...).get_dataset(...)`` for tf.data users, and the same rates as
    ``registry.mixture_rates``. Names are the registry's; retrieval tasks are not registered
    (they are evaluated, not trained)::

        from xstilts.data import seqio_tasks
        seqio_tasks.register_all(data_dir="data")
        seqio.get_mixture_or_task("intermediate.mnli.multilingual").get_dataset(None, split="train")
    """
    tasks = [spec.name for spec in TASKS.values() if spec.kind != "retrieval"]
    for name in tasks:
        register_task(TASKS[name], data_dir)
    mixtures = [name for name in list(MIXTURES) if not name.endswith("#own")]
    for name in mixtures:
        register_mixture(name, data_dir)
    return tasks, mixtures
