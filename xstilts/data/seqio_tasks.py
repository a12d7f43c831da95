"""seqio Tasks and Mixtures for every registered task and mixture, tokenized on ``XLMRVocabulary``
(needs seqio + TF), and ``seqio_batches``, the one entry the trainer calls.

A Task reads the prepared files through the project's readers (``ReaderDataSource``, a
``seqio.FunctionDataSource`` with per-split ``num_input_examples``, so
``seqio.mixing_rate_num_examples`` works), and its preprocessors (``seqio.map_over_dataset``,
``seqio.preprocessors.rekey`` / ``tokenize``) build the task features that
``seqio_converters.py`` documents per kind; the converters turn them into the model's batches.
Examples without a usable target are dropped from the ``train`` split and kept elsewhere, as
``pipeline.featurize`` does. Example::

    from xstilts.data import seqio_tasks
    seqio_tasks.register_all(data_dir="data", vocabulary="xlmr/sentencepiece.bpe.model")
    ds = seqio.get_mixture_or_task("intermediate.mnli.multilingual").get_dataset(
        {"inputs": 128}, split="train", seed=0)
    for task_name, batch in seqio_tasks.seqio_batches(
            "intermediate.all9.en", sequence_length=128, batch_size=32, seed=0):
        ...

Names are the registry's; retrieval tasks are not registered (they are evaluated, not trained).
A mixture whose tasks differ in kind (``all9``, every ``+mlm``) is a ``MultiKindMixture``: its
rates are seqio's (``get_rate``, equal to ``registry.mixture_rates``), its batches one task per
step (``seqio_batches``); seqio's per-example mixing (``get_dataset``) needs one feature set.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

try:  # the data extra
    import seqio
    import tensorflow as tf
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "xstilts.data.seqio_tasks needs seqio and tensorflow (pip install 'xstilts[data]'); "
        "the rest of xstilts.data works without them"
    ) from error

import numpy as np

from xstilts.data import preprocessors as P
from xstilts.data import seqio_batched, sources
from xstilts.data.feature_converters import MixtureBatcher, bucket_lengths, fit_width
from xstilts.data.pipeline import TRAIN_SPLIT, UNKNOWN_TAG, task_labels, usable_examples
from xstilts.data.registry import family_shares
from xstilts.data.registry import register_mixture as register_spec
from xstilts.data.seqio_converters import (
    INPUTS,
    converter_for,
    mask_mlm_batch,
    padding_rows,
)
from xstilts.data.tasks import (
    MIXTURES,
    TASKS,
    TaskSpec,
    get_mixture,
    get_task,
    mixture_rates,
    mixture_tasks,
)
from xstilts.tokenization import BOS_ID, EOS_ID, PAD_ID, xlmr_vocabulary

LABELS = seqio.PassThroughVocabulary(size=0)  # the vocabulary of label / position features
TRAINING = "is_training"  # QA only: the source's split is train (misaligned answers dropped)

# ------------------------------------------------------------------------------ features


def token_feature(vocabulary: Any, rank: int = 1) -> seqio.Feature:
    """A token-id feature on ``vocabulary`` (no EOS added: specials are the converter's)."""
    return seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32, rank=rank)


def label_feature(rank: int = 0) -> seqio.Feature:
    """A label / position feature (int32, passed through)."""
    return seqio.Feature(LABELS, add_eos=False, dtype=tf.int32, rank=rank)


def output_features(kind: str, vocabulary: Any) -> dict[str, seqio.Feature]:
    """The task features of ``kind`` (see ``seqio_converters.py``). A user's Task that joins a
    project Mixture declares the same keys, dtypes and vocabulary."""
    token, label = functools.partial(token_feature, vocabulary), label_feature
    features = {
        "classification": {INPUTS: token(), "inputs_b": token(), "targets": label()},
        "tagging": {INPUTS: token(), "targets": label(1), "label_mask": label(1)},
        "qa": {INPUTS: token(), "start_positions": label(), "end_positions": label()},
        "multiple_choice": {INPUTS: token(), "choices": token(2), "targets": label()},
        "mlm": {INPUTS: token()},
    }
    if kind not in features:
        raise ValueError(f"kind {kind!r} has no seqio task features; expected one of "
                         f"{sorted(features)}")
    return features[kind]


def _vocabulary(vocabulary: Any) -> Any:
    if vocabulary is None:
        raise ValueError("seqio tasks need an XLMRVocabulary or the path of an XLM-R "
                         "SentencePiece model (vocabulary=...)")
    if not isinstance(vocabulary, seqio.Vocabulary):
        vocabulary = xlmr_vocabulary(vocabulary)
    return warm_up(vocabulary)


# ---------------------------------------------------------------------------------- source

_SIGNATURES: dict[str, dict[str, tf.TensorSpec]] = {
    "classification": {"text_a": tf.TensorSpec([], tf.string),
                       "text_b": tf.TensorSpec([], tf.string),
                       "label": tf.TensorSpec([], tf.string)},
    "tagging": {"tokens": tf.TensorSpec([None], tf.string),
                "tags": tf.TensorSpec([None], tf.string),
                "has_tags": tf.TensorSpec([], tf.bool)},
    "qa": {"id": tf.TensorSpec([], tf.string), "context": tf.TensorSpec([], tf.string),
           "question": tf.TensorSpec([], tf.string),
           "answers_text": tf.TensorSpec([None], tf.string),
           "answers_start": tf.TensorSpec([None], tf.int32),
           "is_impossible": tf.TensorSpec([], tf.bool), TRAINING: tf.TensorSpec([], tf.bool)},
    "multiple_choice": {"context": tf.TensorSpec([], tf.string),
                        "question": tf.TensorSpec([], tf.string),
                        "choices": tf.TensorSpec([None], tf.string),
                        "label": tf.TensorSpec([], tf.int32)},
    "mlm": {"text": tf.TensorSpec([], tf.string)},
}  # fmt: skip


def _row(kind: str, example: Mapping[str, Any], training: bool) -> dict[str, Any]:
    """A reader example -> the source's fields of ``kind`` (None: "" / -1 / no tags)."""
    if kind == "classification":
        label = example.get("label")
        return {"text_a": example["text_a"], "text_b": example.get("text_b") or "",
                "label": "" if label is None else str(label)}
    if kind == "tagging":
        tags = example.get("tags")
        return {"tokens": list(example["tokens"]), "tags": list(tags or ()),
                "has_tags": tags is not None}
    if kind == "qa":
        answers = example.get("answers") or []
        return {"id": str(example.get("id", "")), "context": example["context"],
                "question": example["question"],
                "answers_text": [a["text"] for a in answers],
                "answers_start": [int(a["answer_start"]) for a in answers],
                "is_impossible": bool(example.get("is_impossible")), TRAINING: training}
    if kind == "multiple_choice":
        label = example.get("label")
        return {"context": example.get("context", "") or "",
                "question": example.get("question", "") or "",
                "choices": list(example["choices"]), "label": -1 if label is None else int(label)}
    return {"text": example["text"]}


SOURCE_CHUNK = 1024  # rows per Python -> TF hand-over of a ReaderDataSource
TOKENIZE_BATCH = 256  # examples per batched preprocessing op (label lookup, tokenization)


def _column(values: list[Any], spec: tf.TensorSpec) -> Any:
    """One column of a chunk: a numpy vector, or a ragged tensor for a list-valued field."""
    if spec.shape.rank:
        flat = [v for value in values for v in value]
        lengths = np.asarray([len(value) for value in values], np.int64)
        dtype = object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
        return tf.RaggedTensor.from_row_lengths(np.asarray(flat, dtype=dtype), lengths)
    dtype = object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
    return np.asarray(values, dtype=dtype)


class ReaderDataSource(seqio.FunctionDataSource):
    """A task's prepared files through its reader (``sources.read``): one file per split, so
    seqio shards it at the examples (``Task.get_dataset(shard_info=...)``).
    ``num_input_examples(split)`` counts the examples the split yields (the train split less
    those without a usable target), once, when first asked."""

    def __init__(self, spec: TaskSpec, data_dir: Any = None, *, allow_samples: bool = False):
        self.spec, self.data_dir, self.allow_samples = spec, data_dir, allow_samples
        self._counts: dict[str, int] = {}
        super().__init__(self._dataset_fn, splits=tuple(spec.splits))

    def examples(self, split: str) -> list[Mapping[str, Any]]:
        """The split's reader examples, the unusable ones dropped from ``train``. Read anew
        each time (not kept: a multilingual mixture's splits would stay in memory together)."""
        read = sources.read(self.spec, split, self.data_dir, allow_samples=self.allow_samples)
        return usable_examples(self.spec, list(read), training=split == TRAIN_SPLIT)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True  # host i reads examples i, i+n, ... (what Dataset.shard would keep)

    def get_dataset(self, split: str = TRAIN_SPLIT, shuffle: bool = True,
                    seed: int | None = None, shard_info: seqio.ShardInfo | None = None,
                    **unused: Any) -> tf.data.Dataset:
        """The split's examples; with ``shard_info`` only this shard's, chosen before they
        cross into TF (a host does not turn the other hosts' rows into tensors)."""
        return self._dataset_fn(split, shuffle, seed, shard_info=shard_info)

    def _dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one file per split; Task.get_dataset shuffles examples
        split = str(split)  # seqio's default is tfds.Split.TRAIN
        index, shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        sources.resolve(self.spec, split, self.data_dir, allow_samples=self.allow_samples)
        kind, training = self.spec.kind, split == TRAIN_SPLIT

        signature = _SIGNATURES[kind]

        # Chunks of SOURCE_CHUNK rows cross from Python as columns, then unbatch: one Python ->
        # TF hand-over per example made the source the bottleneck (~2.9k examples/s; the
        # readers alone give >20k). Not from_tensor_slices: a split as graph constants would
        # hit the 2 GiB graph limit at paper scale.
        def generate() -> Iterable[dict[str, Any]]:
            examples = self.examples(split)[index::shards]
            for start in range(0, len(examples), SOURCE_CHUNK):
                rows = [_row(kind, e, training) for e in examples[start:start + SOURCE_CHUNK]]
                yield {key: _column([row[key] for row in rows], spec)
                       for key, spec in signature.items()}

        batched = {key: tf.RaggedTensorSpec([None, None], spec.dtype, ragged_rank=1)
                   if spec.shape.rank else tf.TensorSpec([None], spec.dtype)
                   for key, spec in signature.items()}  # fmt: skip
        chunks = tf.data.Dataset.from_generator(generate, output_signature=batched)
        # unbatched ragged rows are RaggedTensorSpecs of ragged_rank 0: an identity map makes
        # them plain tensor specs
        dataset = chunks.unbatch().map(dict)
        dataset._xstilts_chunks = chunks  # see _over_batches
        return dataset

    def num_input_examples(self, split: str) -> int:
        split = str(split)
        if split not in self._counts:
            self._counts[split] = len(self.examples(split))
        return self._counts[split]


# --------------------------------------------------------------------------- preprocessors


def _length(spec: TaskSpec, sequence_length: Mapping[str, Any] | None) -> int:
    """The window / row length: ``sequence_length["inputs"]``, else the task's max_length."""
    if sequence_length and sequence_length.get(INPUTS) is not None:
        return int(sequence_length[INPUTS])
    return spec.max_length


def _over_batches(dataset: tf.data.Dataset, fn: Callable[[dict[str, Any]], dict[str, Any]]
                  ) -> tf.data.Dataset:
    """``fn`` applied to batches of ``TOKENIZE_BATCH`` examples, then one example per row.

    Why not per example: on this CPU every per-example ``map`` costs ~20-40 us an example
    (a label lookup with its assert held the source's ~120k examples/s at 20k), more than
    reading it. The identity map at the end turns the unbatched RaggedTensorSpecs of
    ragged_rank 0 into plain tensor specs; a list field's ids ([C, None]) stay ragged.

    When ``dataset`` is exactly what a ``ReaderDataSource`` returned (nothing in between:
    no in-memory cache, no shard), ``fn`` runs on the source's own chunks instead of
    unbatching and batching them again: the same examples in the same order."""
    chunks = getattr(dataset, "_xstilts_chunks", None)
    batched = dataset.batch(TOKENIZE_BATCH) if chunks is None else chunks
    batched = batched.map(tf.autograph.experimental.do_not_convert(fn),  # plain TF ops
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return batched.unbatch().map(dict)


def _label_lookup(labels: Sequence[str], task: str) -> Callable[[dict[str, Any]], dict]:
    """A batch function: ``label`` strings -> ``targets`` indices ("" -> -1); an unknown label
    stops the pipeline with an error naming the task and the labels expected."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(labels)),
                                            tf.range(len(labels), dtype=tf.int32)), -2)

    def lookup(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        index = tf.where(batch["label"] == "", P.IGNORE_LABEL, table.lookup(batch["label"]))
        check = tf.debugging.assert_greater_equal(
            index, P.IGNORE_LABEL,
            message=f"task {task}: unknown label; expected one of {list(labels)}")
        with tf.control_dependencies([check]):
            out = {k: v for k, v in batch.items() if k != "label"}
            out["targets"] = tf.identity(index)
        return out

    return lookup


def label_index(dataset: tf.data.Dataset, *, labels: Sequence[str], task: str
                ) -> tf.data.Dataset:
    """``targets``: the index of the ``label`` string in ``labels`` ("" -> -1); an unknown
    label stops the pipeline with an error naming the task and the labels expected."""
    return _over_batches(dataset, _label_lookup(labels, task))


@seqio.map_over_dataset
def multiple_choice_prompt(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """``inputs``: context and question joined by a space (the empty one left out)."""
    parts = tf.stack([ex["context"], ex["question"]])
    prompt = tf.strings.reduce_join(tf.boolean_mask(parts, tf.strings.length(parts) > 0),
                                    separator=" ")
    return {INPUTS: prompt, "choices": ex["choices"], "targets": ex["label"]}


@seqio.map_over_dataset
def dense_choices(ex: dict[str, Any]) -> dict[str, Any]:
    """``choices`` ragged [C, None] -> dense [C, m] padded with ``<pad>``."""
    choices = ex["choices"]
    if isinstance(choices, tf.RaggedTensor):
        choices = choices.to_tensor(default_value=PAD_ID)
    return {**ex, "choices": tf.cast(choices, tf.int32)}


def pack_mlm(dataset: tf.data.Dataset, sequence_length: Mapping[str, Any] | None = None, *,
             default_length: int = 512) -> tf.data.Dataset:
    """Concatenate the token stream of the ``inputs`` and cut it into ``<s> ... </s>`` rows of
    at most ``sequence_length["inputs"]`` tokens (``preprocessors.mlm_sequences`` in TF ops)."""
    length = int((sequence_length or {}).get(INPUTS) or default_length)
    body = length - 2
    if body < 1:
        raise ValueError(f"sequence length {length} leaves no room between <s> and </s>")
    tokens = dataset.map(lambda ex: tf.cast(ex[INPUTS], tf.int32)).unbatch()
    return tokens.batch(body).map(
        lambda ids: {INPUTS: tf.concat([[BOS_ID], ids, [EOS_ID]], axis=0)})


def _padded(rows: Sequence[np.ndarray], fill: int) -> np.ndarray:
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), fill, np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _slices(fields: dict[str, tf.Tensor]) -> tf.data.Dataset:
    """Window rows (padded [W, w] + ``length`` [W]) -> one example per window, unpadded."""
    def trim(row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        n = row.pop("length")
        return {k: v[:n] if v.shape.rank == 1 else v for k, v in row.items()}

    return tf.data.Dataset.from_tensor_slices(fields).map(trim)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Tagging and QA windows call the native featurizer (tf.numpy_function), not TF ops: their
# windows follow word boundaries (tagging) and SentencePiece's character offsets mapped to
# Python characters (QA answer spans), which ``XLMRTokenizer`` computes exactly as HF's fast
# tokenizer; re-deriving them in TF would be a second implementation to keep equal.


def tagging_windows(dataset: tf.data.Dataset, sequence_length: Mapping[str, Any] | None = None,
                    *, spec: TaskSpec, tokenizer: Any, labels: Callable[[], Sequence[str]]
                    ) -> tf.data.Dataset:
    """``tokens``/``tags`` -> windows of whole words (``preprocessors.tagging_features``):
    ``inputs``, ``targets`` (tag index on first sub-tokens, else -1), ``label_mask``."""
    length = _length(spec, sequence_length)
    tags = tuple(labels())
    unknown = UNKNOWN_TAG if tags and tags[-1] == UNKNOWN_TAG else None

    def featurize(tokens: np.ndarray, gold: np.ndarray, has_tags: bool
                  ) -> tuple[np.ndarray, ...]:
        example = {"id": spec.name, "tokens": [_text(t) for t in tokens],
                   "tags": [_text(t) for t in gold] if has_tags else None}
        features = P.tagging_features(example, tokenizer, length, tags, unknown_tag=unknown)
        return (np.array([len(f["input_ids"]) for f in features], np.int32),
                _padded([f["input_ids"] for f in features], PAD_ID),
                _padded([f["labels"] for f in features], P.IGNORE_LABEL),
                _padded([f["label_mask"] for f in features], 0))

    def expand(ex: dict[str, tf.Tensor]) -> tf.data.Dataset:
        lengths, ids, targets, mask = tf.numpy_function(
            featurize, [ex["tokens"], ex["tags"], ex["has_tags"]], [tf.int32] * 4,
            stateful=False)
        rows = tf.size(lengths)
        return _slices({"length": tf.reshape(lengths, [-1]),
                        INPUTS: tf.reshape(ids, [rows, -1]),
                        "targets": tf.reshape(targets, [rows, -1]),
                        "label_mask": tf.reshape(mask, [rows, -1])})

    return dataset.flat_map(expand)


def qa_windows(dataset: tf.data.Dataset, sequence_length: Mapping[str, Any] | None = None, *,
               spec: TaskSpec, tokenizer: Any) -> tf.data.Dataset:
    """Question + context -> SQuAD windows (``preprocessors.qa_features``: stride 128, query 64):
    ``inputs``, ``start_positions``, ``end_positions``; on the train split an answer that covers
    no context token drops the question (BERT's ``run_squad``)."""
    length = _length(spec, sequence_length)
    cache: dict[str, Any] = {}  # the last context's encoding (questions share contexts)

    def featurize(qid: bytes, context: bytes, question: bytes, texts: np.ndarray,
                  starts: np.ndarray, impossible: bool, training: bool
                  ) -> tuple[np.ndarray, ...]:
        context = _text(context)
        if context not in cache:
            cache.clear()
            cache[context] = tokenizer.encode_with_offsets(context, add_special_tokens=False)
        example = {"id": _text(qid), "context": context, "question": _text(question),
                   "answers": [{"text": _text(t), "answer_start": int(s)}
                               for t, s in zip(texts, starts, strict=True)],
                   "is_impossible": bool(impossible)}
        features = P.qa_features(example, tokenizer, max_length=length,
                                 context_encoding=cache[context], drop_misaligned=bool(training))
        return (np.array([len(f["input_ids"]) for f in features], np.int32),
                _padded([f["input_ids"] for f in features], PAD_ID),
                np.array([f["start_positions"] for f in features], np.int32),
                np.array([f["end_positions"] for f in features], np.int32))

    def expand(ex: dict[str, tf.Tensor]) -> tf.data.Dataset:
        keys = ("id", "context", "question", "answers_text", "answers_start", "is_impossible",
                TRAINING)
        lengths, ids, start, end = tf.numpy_function(
            featurize, [ex[k] for k in keys], [tf.int32] * 4, stateful=False)
        return _slices({"length": tf.reshape(lengths, [-1]),
                        INPUTS: tf.reshape(ids, [tf.size(lengths), -1]),
                        "start_positions": tf.reshape(start, [-1]),
                        "end_positions": tf.reshape(end, [-1])})

    return dataset.flat_map(expand)


def warm_up(vocabulary: Any) -> Any:
    """Build ``vocabulary``'s TF state eagerly (``tf.init_scope``): ``XLMRVocabulary`` builds
    it on first use and keeps it, and state first built inside a dataset's map function belongs
    to that graph, so a second dataset could not use it."""
    with tf.init_scope():
        vocabulary.encode_tf(tf.constant("a"))
    return vocabulary


def _encoder(keys: Sequence[str], output_features: Mapping[str, seqio.Feature]
             ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A batch function: the string fields ``keys`` -> their ids (ragged), one SentencePiece
    op per batch."""
    for key in keys:
        warm_up(output_features[key].vocabulary)

    def encode(batch: dict[str, tf.Tensor]) -> dict[str, Any]:
        out = dict(batch)
        for key in keys:
            ids = output_features[key].vocabulary.encode_tf(batch[key])
            if not isinstance(ids, tf.RaggedTensor):  # a batch of one: dense [1, n]
                ids = tf.RaggedTensor.from_tensor(ids)
            out[key] = ids
        return out

    return encode


def _tokenize(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]
              ) -> tf.data.Dataset:
    """``seqio.preprocessors.tokenize(copy_pretokenized=False)`` over batches (the same ids)."""
    keys = [key for key, spec in dataset.element_spec.items()
            if key in output_features and spec.dtype == tf.string]
    return _over_batches(dataset, _encoder(keys, output_features))


def classification_features(output_features: Mapping[str, seqio.Feature], *,
                            labels: Sequence[str], task: str
                            ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The batch function of ``classification_inputs``: source fields -> task features."""
    lookup, encode = _label_lookup(labels, task), _encoder((INPUTS, "inputs_b"), output_features)

    def features(batch: dict[str, tf.Tensor]) -> dict[str, Any]:
        batch = lookup(batch)
        return encode({INPUTS: batch["text_a"], "inputs_b": batch["text_b"],
                       "targets": batch["targets"]})

    return features


def classification_inputs(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                          *, labels: Sequence[str], task: str) -> tf.data.Dataset:
    """``label_index``, ``rekey`` (text_a/text_b -> inputs/inputs_b) and ``tokenize`` in one
    pass over batches (three per-example maps cost more than the rest of the path)."""
    return _over_batches(dataset, classification_features(output_features, labels=labels,
                                                          task=task))


def task_preprocessors(spec: TaskSpec, vocabulary: Any, data_dir: Any = None, *,
                       allow_samples: bool = False) -> list[Callable[..., tf.data.Dataset]]:
    """The seqio preprocessors of ``spec``'s kind (source fields -> task features)."""
    tokenizer = vocabulary.tokenizer
    if spec.kind == "classification":
        labels = spec.labels or task_labels(spec, data_dir, allow_samples=allow_samples)
        return [functools.partial(classification_inputs, labels=tuple(labels), task=spec.name)]
    if spec.kind == "tagging":
        labels = functools.cache(lambda: spec.labels or task_labels(
            spec, data_dir, allow_samples=allow_samples))  # CCG: read train's tags when needed
        return [functools.partial(tagging_windows, spec=spec, tokenizer=tokenizer,
                                  labels=labels)]
    if spec.kind == "qa":
        return [functools.partial(qa_windows, spec=spec, tokenizer=tokenizer)]
    if spec.kind == "multiple_choice":
        return [multiple_choice_prompt, _tokenize, dense_choices]
    if spec.kind == "mlm":
        return [functools.partial(seqio.preprocessors.rekey, key_map={INPUTS: "text"}),
                _tokenize, functools.partial(pack_mlm, default_length=spec.max_length)]
    raise ValueError(f"task {spec.name}: kind {spec.kind!r} has no seqio Task")


# ------------------------------------------------------------------------ registration


def register_task(spec: TaskSpec, data_dir: str | os.PathLike | None = None,
                  vocabulary: Any = None, *, allow_samples: bool = False) -> seqio.Task:
    """Register ``spec`` as a seqio Task (replacing an earlier registration of that name):
    its prepared files under ``data_dir`` (sample files only with ``allow_samples``), task
    features on ``vocabulary`` (an ``XLMRVocabulary`` or an XLM-R SentencePiece path)."""
    if spec.kind == "retrieval":
        raise ValueError(f"{spec.name} is a retrieval task; seqio Tasks are for training data")
    vocabulary = _vocabulary(vocabulary)
    seqio.TaskRegistry.remove(spec.name)
    task = seqio.TaskRegistry.add(
        spec.name,
        source=ReaderDataSource(spec, data_dir, allow_samples=allow_samples),
        preprocessors=task_preprocessors(spec, vocabulary, data_dir,
                                         allow_samples=allow_samples),
        output_features=output_features(spec.kind, vocabulary),
        shuffle_buffer_size=seqio.SHUFFLE_BUFFER_SIZE,  # 1000, seqio's default
    )
    task.metadata = spec.metadata  # languages, metric, max length, epochs, train task, ...
    return task


class MultiKindMixture(seqio.Mixture):
    """A seqio Mixture of tasks of different kinds (feature sets), e.g. all9 or a ``+mlm``
    mixture: registered for its names and rates (``get_rate``); its batches are drawn one task
    per step (``seqio_batches``), jiant's way. Per-example mixing (``get_dataset``) needs one
    feature set and is refused with an error saying so."""

    def __init__(self, name: str, tasks: Any, **kwargs: Any):
        try:
            super().__init__(name, tasks, **kwargs)
        except ValueError as error:  # seqio refuses different feature sets (after setting up)
            if "different output features" not in str(error):
                raise

    def get_dataset(self, *args: Any, **kwargs: Any) -> tf.data.Dataset:
        kinds = sorted({task_kind(t) for t in self.tasks})
        if len(kinds) == 1:
            return super().get_dataset(*args, **kwargs)
        raise ValueError(f"mixture {self.name} mixes task kinds {kinds}: seqio's per-example "
                         f"mixing needs one feature set; use seqio_tasks.seqio_batches("
                         f"{self.name!r}, ...) (one task per step)")


def register_mixture(name: str, data_dir: str | os.PathLike | None = None,
                     vocabulary: Any = None, *, allow_samples: bool = False) -> seqio.Mixture:
    """Register mixture ``name`` (and its tasks and sub-mixtures) with seqio. Task rates are
    ``registry.mixture_rates`` over the tasks' ``num_input_examples("train")``, read lazily."""
    vocabulary = _vocabulary(vocabulary)
    spec = get_mixture(name)
    for sub in (*(s for s, _ in spec.submixtures), *(f for f, _ in spec.families)):
        if sub not in seqio.MixtureRegistry.names():
            register_mixture(sub, data_dir, vocabulary, allow_samples=allow_samples)
    for task in spec.tasks:
        if task not in seqio.TaskRegistry.names():
            register_task(get_task(task), data_dir, vocabulary, allow_samples=allow_samples)

    def size(task: str) -> int:
        return seqio.get_mixture_or_task(task).num_input_examples(TRAIN_SPLIT)

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
    return seqio.MixtureRegistry.add(name, components, mixture_cls=MultiKindMixture)


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


def register_all(data_dir: str | os.PathLike | None = None, vocabulary: Any = None, *,
                 allow_samples: bool = False) -> tuple[list[str], list[str]]:
    """Every non-retrieval task and every mixture of the registry, on ``vocabulary`` (an
    ``XLMRVocabulary`` or an XLM-R SentencePiece path). Lazy: files are read when a dataset
    or a rate is asked for. Returns (task names, mixture names)."""
    vocabulary = _vocabulary(vocabulary)
    tasks = [spec.name for spec in TASKS.values() if spec.kind != "retrieval"]
    for name in tasks:
        register_task(TASKS[name], data_dir, vocabulary, allow_samples=allow_samples)
    mixtures = [name for name in list(MIXTURES) if not name.endswith("#own")]
    for name in mixtures:
        register_mixture(name, data_dir, vocabulary, allow_samples=allow_samples)
    return tasks, mixtures


# ------------------------------------------------------------------------------ batches

_KIND_BY_FEATURES = {
    frozenset({INPUTS, "inputs_b", "targets"}): "classification",
    frozenset({INPUTS, "targets", "label_mask"}): "tagging",
    frozenset({INPUTS, "start_positions", "end_positions"}): "qa",
    frozenset({INPUTS, "choices", "targets"}): "multiple_choice",
    frozenset({INPUTS}): "mlm",
}


def task_kind(task: seqio.Task) -> str:
    """A seqio Task's kind: its ``metadata["kind"]`` (project tasks), else read off its
    output features (a user's Task; see ``output_features``)."""
    kind = (getattr(task, "metadata", None) or {}).get("kind")
    if kind:
        return kind
    keys = frozenset(task.output_features)
    if keys not in _KIND_BY_FEATURES:
        raise ValueError(f"seqio task {task.name}: output features {sorted(keys)} match no "
                         f"encoder kind; expected one of "
                         f"{ {v: sorted(k) for k, v in _KIND_BY_FEATURES.items()} }")
    return _KIND_BY_FEATURES[keys]


def _provider(name: str) -> seqio.Task | seqio.Mixture:
    if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
        return seqio.get_mixture_or_task(name)
    raise KeyError(f"{name!r} is neither a registered seqio Task nor Mixture; register the "
                   f"project's with seqio_tasks.register_all(data_dir, vocabulary), or import "
                   f"the module that registers yours")


def seqio_task_kind(name: str) -> str:
    """The kind (``classification``, ``tagging``, ``qa``, ``multiple_choice``, ``mlm``) of a
    seqio Task, or of a Mixture whose tasks share one (else ValueError naming the kinds)."""
    provider = _provider(name)
    if isinstance(provider, seqio.Task):
        return task_kind(provider)
    kinds = sorted({task_kind(t) for t in provider.tasks})
    if len(kinds) != 1:
        raise ValueError(f"mixture {name} mixes task kinds {kinds}")
    return kinds[0]


def _head(task: seqio.Task) -> Any:
    metadata = getattr(task, "metadata", None) or {}
    return metadata.get("head"), metadata.get("labels")


def mixes_per_example(mixture: seqio.Mixture) -> bool:
    """Whether ``mixture``'s batches mix tasks per example (seqio): one kind and one head (and
    label set) among its project tasks. Otherwise one task per step (jiant)."""
    if len({task_kind(t) for t in mixture.tasks}) != 1:
        return False
    heads = {_head(t) for t in mixture.tasks if getattr(t, "metadata", None)}
    return len(heads) <= 1


def _num_choices(name: str, dataset: tf.data.Dataset) -> int:
    if name in TASKS and TASKS[name].num_choices:
        return int(TASKS[name].num_choices)
    for example in dataset.take(1):
        return int(example["choices"].shape[0])
    raise ValueError(f"{name}: empty split, cannot tell the number of choices")


def _pipeline_options() -> tf.data.Options:
    """Fuse the chain of per-example maps (our preprocessors', seqio's validation and trimming,
    the converter's) and run them in parallel: ~1.7x the examples/s of the plain chain here.
    Order stays deterministic (``deterministic`` is left at its default, True)."""
    options = tf.data.Options()
    options.experimental_optimization.map_fusion = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    return options


def _batched_features(provider: seqio.Task | seqio.Mixture, *, shuffle: bool, use_cached: bool
                      ) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The batch function of a project classification Task read from its files (its rows then
    take ``seqio_batched``'s route, the same batches as ``get_dataset`` + the converter);
    None for any other Task, a Mixture or a cache."""
    if not isinstance(provider, seqio.Task) or use_cached \
            or not isinstance(provider.source, ReaderDataSource):  # fmt: skip
        return None
    prep = provider.preprocessors
    if len(prep) != 1 or not isinstance(prep[0], functools.partial) \
            or prep[0].func is not classification_inputs:  # fmt: skip
        return None
    if shuffle and provider._shuffle_buffer_size is None:
        return None  # get_dataset says why it cannot shuffle
    return classification_features(provider.output_features, **prep[0].keywords)


def _stream(name: str, *, lengths: Mapping[str, int], batch_size: int, split: str,
            shard_info: Any, seed: int, start_step: int, shuffle: bool,
            num_epochs: int | None, use_cached: bool, buckets: tuple[int, ...] | None,
            agree_width: Callable[[int], int] | None, batched: bool = True
            ) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape numpy batches of one Task, or one per-example Mixture, from ``start_step``."""
    provider = _provider(name)
    kind = seqio_task_kind(name)
    for task in [provider] if isinstance(provider, seqio.Task) else provider.tasks:
        for feature in task.output_features.values():  # a user's Task's vocabulary too
            if not isinstance(feature.vocabulary, seqio.PassThroughVocabulary):
                warm_up(feature.vocabulary)
    info = seqio.ShardInfo(int(shard_info.index), int(shard_info.num_shards)) \
        if shard_info is not None and shard_info.num_shards > 1 else None  # fmt: skip
    features = _batched_features(provider, shuffle=shuffle, use_cached=use_cached) \
        if batched else None  # fmt: skip
    if features is not None:
        chunks = provider.source.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                             shard_info=info)._xstilts_chunks
        batches = seqio_batched.classification_batches(
            chunks, features, lengths[INPUTS], batch_size, buckets=buckets,
            num_epochs=num_epochs, seed=seed,
            shuffle_buffer_size=provider._shuffle_buffer_size if shuffle else None)
    else:
        dataset = provider.get_dataset(lengths, split=split, shuffle=shuffle, seed=seed,
                                       shard_info=info, num_epochs=num_epochs,
                                       use_cached=use_cached)  # fmt: skip
        choices = _num_choices(name if isinstance(provider, seqio.Task)
                               else provider.tasks[0].name,
                               dataset) if kind == "multiple_choice" else None  # fmt: skip
        converter = converter_for(kind, num_choices=choices)
        # the converter batches directly (no per-example rows between it and the batch)
        batches = converter.convert_batches(dataset, lengths, batch_size, buckets=buckets)
    batches = batches.skip(start_step).with_options(_pipeline_options()).prefetch(
        tf.data.AUTOTUNE)
    shards = info.num_shards if info else 1
    index = info.index if info else 0
    mask_id = provider.output_features[INPUTS].vocabulary.mask_id if kind == "mlm" else None
    for step, batch in enumerate(batches.as_numpy_iterator(), start=start_step):
        rows = len(batch["example_mask"])
        if rows < batch_size:
            batch = padding_rows(batch, batch_size - rows)
        if agree_width is not None:
            batch = fit_width(batch, agree_width(batch["input_ids"].shape[-1]))
        if kind == "mlm":
            batch = mask_mlm_batch(batch, step=step, first_row=(step * shards + index)
                                   * batch_size, seed=seed, mask_id=mask_id,
                                   length=lengths[INPUTS])  # fmt: skip
        yield batch


def _steps_before(chooser: MixtureBatcher, step: int) -> dict[str, int]:
    """How many steps each task of ``chooser`` had before global ``step``."""
    block, within = divmod(step, chooser.BLOCK)
    choices, before = chooser._block(block)
    counts = before + np.bincount(choices[:within], minlength=len(chooser.names))
    return {name: int(n) for name, n in zip(chooser.names, counts, strict=True)}


def seqio_batches(
    name: str,
    *,
    sequence_length: int | Mapping[str, int],
    batch_size: int,
    split: str = "train",
    shard_info: Any = None,
    seed: int = 0,
    start_step: int = 0,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
    use_cached: bool = False,
    length_buckets: Sequence[int] | str | None = None,
    agree_width: Callable[[int], int] | None = None,
    batched: bool = True,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """``(task or mixture name, batch)`` from seqio Task or Mixture ``name``, one per step.

    ``sequence_length``: the model length ``L`` (or t5x's ``{"inputs": L}``); every batch holds
    ``batch_size`` rows of fixed shape (this host's: ``shard_info`` with ``index`` and
    ``num_shards`` fields, ``seqio.ShardInfo`` or ours, shards the examples seqio's way) with
    ``feature_converters.pad_batch``'s keys for the kind (``seqio_task_kind``). Training
    (``split="train"``): shuffled with ``seed``, repeated forever (``num_epochs`` to stop);
    other splits: file order, one pass, the last batch filled with padding examples
    (``example_mask`` 0).

    A Task, or a Mixture of one kind and head (``mixes_per_example``), yields seqio's stream
    (per-example mixing at the Mixture's rates) under its own name. Any other Mixture draws one
    task per step (the project's ``MixtureBatcher`` choice, by the Mixture's seqio rates) and
    yields that task's name with its next batch.

    Deterministic given ``seed``: tf.data runs in order (seqio's shuffle and sampling are
    seeded). Resume: ``start_step=k`` gives exactly the batches from step ``k`` of the run
    from 0, by skipping ``k`` batches of the same pipeline (per task: the steps it had before
    ``k``); seqio's deterministic-pipeline index is not used. MLM masks come from the native
    generator per (step, global row), so they do not depend on where a run resumed.

    ``length_buckets`` (``feature_converters.bucket_lengths``: None, ``"auto"`` or lengths): a
    batch is as wide as the smallest bucket holding its longest row. A host sees only its own
    shard, so with several shards the hosts must agree on each step's width: ``agree_width``
    maps this host's width to the step's width (the largest over the hosts, e.g. by
    ``multihost_utils.process_allgather``; ``seqio_feed.SeqioBatches`` does this); several
    shards with buckets and no ``agree_width`` is an error.

    A project classification Task read from its files takes ``seqio_batched``'s route (its
    rows stay batched from the source to the batch; the same batches); ``batched=False`` sends
    every Task through ``Task.get_dataset``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    lengths = {INPUTS: int(sequence_length)} if isinstance(sequence_length, int) \
        else {INPUTS: int(sequence_length[INPUTS])}  # fmt: skip
    training = split == TRAIN_SPLIT
    buckets = bucket_lengths(lengths[INPUTS], length_buckets)
    if buckets and shard_info is not None and shard_info.num_shards > 1 and agree_width is None:
        raise ValueError(f"length_buckets {length_buckets!r} with {shard_info.num_shards} "
                         f"shards needs agree_width (the largest width over the hosts; "
                         f"seqio_feed.SeqioBatches passes one): a host sees only its shard")
    options = dict(lengths=lengths, batch_size=batch_size, split=split, shard_info=shard_info,
                   seed=seed, shuffle=training if shuffle is None else shuffle,
                   num_epochs=num_epochs if num_epochs is not None else (None if training else 1),
                   use_cached=use_cached, buckets=buckets, batched=batched,
                   agree_width=agree_width if buckets else None)  # fmt: skip
    provider = _provider(name)
    if isinstance(provider, seqio.Task) or mixes_per_example(provider):
        for batch in _stream(name, start_step=start_step, **options):
            yield name, batch
        return
    leaves = {t.name for t in provider.tasks}
    order = [t for t in (mixture_tasks(name) if name in MIXTURES else []) if t in leaves] \
        or sorted(leaves)  # fmt: skip
    rates = {t: provider.get_rate(seqio.get_mixture_or_task(t)) for t in order}
    chooser = MixtureBatcher(dict.fromkeys(order), rates, seed=seed)
    done = _steps_before(chooser, start_step)
    streams: dict[str, Iterator[dict[str, np.ndarray]]] = {}
    step = start_step
    while True:
        task, _ = chooser.task_and_step(step)
        if task not in streams:
            streams[task] = _stream(task, start_step=done[task], **options)
        batch = next(streams[task], None)
        if batch is None:
            return  # a task ran out (num_epochs set): the mixture's pass ends
        yield task, batch
        step += 1

