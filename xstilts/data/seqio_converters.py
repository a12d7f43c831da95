"""seqio ``FeatureConverter``s for the XLM-R encoder: task features -> the model's fixed shapes.

The encoder counterpart of t5x's ``EncDecFeatureConverter``: a Task (``seqio_tasks.py``) yields
token ids of variable length; a converter turns ``task_feature_lengths = {"inputs": L}`` into
the batch keys of ``feature_converters.pad_batch`` (DESIGN.md), one example at a time:

* classification: ``inputs`` [n] (text A pieces), ``inputs_b`` [m] (text B pieces; empty:
  single sentence), ``targets`` (label index, -1: none) -> ``input_ids``, ``attention_mask``
  [L], ``labels``, ``example_mask``;
* tagging: ``inputs`` [n] (one window, ``<s>``/``</s>`` included), ``targets`` [n] (tag index
  on first sub-tokens, else -1), ``label_mask`` [n] -> ``input_ids``, ``attention_mask``,
  ``labels``, ``label_mask`` [L], ``example_mask``;
* qa: ``inputs`` [n] (one window), ``start_positions``, ``end_positions`` -> ``input_ids``,
  ``attention_mask`` [L], ``start_positions``, ``end_positions``, ``example_mask``;
* multiple_choice: ``inputs`` [n] (prompt pieces), ``choices`` [C, m] (choice pieces padded
  with ``<pad>``), ``targets`` -> ``input_ids``, ``attention_mask`` [C, L], ``labels``,
  ``example_mask``;
* mlm: ``inputs`` [n] (one packed row, specials included) -> ``input_ids``,
  ``attention_mask`` [L], ``example_mask``.

Length handling lives here, once: ``fit_length`` is the seam (truncation today; the length
buckets of the accelerator issue replace it by rounding ``L`` up to a bucket). Pairs are cut
longest-first from the right, exactly as ``XLMRTokenizer.truncate`` (HF ``longest_first``),
so a batch equals the native pipeline's (``preprocessors.py``, ``feature_converters.pad_batch``).
Windowed kinds (tagging, QA) and packed MLM rows are cut to ``L`` by the Task's preprocessors
(their windows depend on ``L``; see ``seqio_tasks.py``); here they are only padded (and cut,
should a user's Task hand over a longer row).

MLM masking is not a converter step: it is random per step and global row, and is applied to
the numpy batch by ``mask_mlm_batch`` with the native pipeline's generator, so the seqio path's
MLM batches equal the native ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from xstilts.data.feature_converters import PAD_ID, fit_width
from xstilts.data.preprocessors import IGNORE_LABEL, mask_tokens, max_predictions
from xstilts.tokenization import BOS_ID, EOS_ID

Spec = seqio.FeatureConverter.FeatureSpec
INPUTS = "inputs"


def fit_length(task_feature_lengths: Mapping[str, Any]) -> int:
    """The model's sequence length for ``task_feature_lengths`` (the length-bucket seam)."""
    if INPUTS not in task_feature_lengths or task_feature_lengths[INPUTS] is None:
        raise ValueError(f"task_feature_lengths needs an int for {INPUTS!r}, got "
                         f"{dict(task_feature_lengths)}")
    length = int(task_feature_lengths[INPUTS])
    if length < 4:
        raise ValueError(f"sequence length {length} cannot hold <s> A </s></s> B </s>")
    return length


def _need(features: Mapping[str, tf.Tensor], keys: tuple[str, ...], converter: str) -> None:
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"{converter}: the task's examples lack {missing} (have "
                         f"{sorted(features)}); see xstilts.data.seqio_converters for the "
                         f"task features each kind needs")


def longest_first(len_a: tf.Tensor, len_b: tf.Tensor, budget: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Kept lengths of A and B after HF ``longest_first`` truncation to ``budget`` tokens
    (``XLMRTokenizer.truncate``'s arithmetic, in TF ops; works on scalars and vectors)."""
    remove = tf.maximum(len_a + len_b - budget, 0)
    first = tf.minimum(tf.abs(len_b - len_a), remove)
    second = remove - first
    a_longer = len_a > len_b
    cut_a = tf.where(a_longer, first + second // 2, second // 2)
    cut_b = tf.where(a_longer, second - second // 2, first + second - second // 2)
    return len_a - cut_a, len_b - cut_b


# The features every one-row kind has: a padded row, its mask, and a real-example flag.
ROW_FEATURES = {"input_ids": Spec(dtype=tf.int32), "attention_mask": Spec(dtype=tf.int32),
                "example_mask": Spec(dtype=tf.int32, rank=0)}


def pair_rows(a: tf.RaggedTensor, b: tf.RaggedTensor, length: int) -> tf.RaggedTensor:
    """Ragged ``[B, None]`` ids of A and B -> ragged rows
    ``<s> A </s></s> B </s>`` (``<s> A </s>`` where B is empty), each cut longest-first to
    ``length`` tokens."""
    len_a, len_b = tf.cast(a.row_lengths(), tf.int32), tf.cast(b.row_lengths(), tf.int32)
    pair = len_b > 0
    budget = tf.where(pair, length - 4, length - 2)
    keep_a, keep_b = longest_first(len_a, tf.where(pair, len_b, 0), budget)
    keep_a = tf.where(pair, keep_a, tf.minimum(len_a, budget))

    def cut(ids: tf.RaggedTensor, keep: tf.Tensor) -> tf.RaggedTensor:
        positions = tf.ragged.range(tf.cast(ids.row_lengths(), tf.int32))
        return tf.ragged.boolean_mask(ids, positions < keep[:, None])

    size = tf.shape(len_a)[0]
    column = lambda value: tf.RaggedTensor.from_tensor(  # noqa: E731
        tf.fill([size, 1], value), row_splits_dtype=tf.int64)
    separators = tf.where(pair, tf.constant(2, tf.int64), 0)
    separator = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(separators)], EOS_ID), separators)  # int64 splits, as the rest
    return tf.concat([column(BOS_ID), cut(a, keep_a), separator, cut(b, keep_b),
                      column(EOS_ID)], axis=1)


def bucket_width(longest: tf.Tensor, length: int, buckets: Sequence[int] | None) -> tf.Tensor:
    """The batch width: the smallest of ``buckets`` (``feature_converters.bucket_lengths``,
    ending in ``length``) that holds ``longest`` tokens; ``length`` when ``buckets`` is None."""
    if not buckets:
        return tf.constant(length, tf.int32)
    table = tf.constant(list(buckets), tf.int32)
    return tf.gather(table, tf.reduce_min(tf.where(table >= longest)[:, 0]))


def dense(rows: tf.RaggedTensor, width: tf.Tensor, value: int) -> tf.Tensor:
    """Ragged ``[B, None]`` rows (each at most ``width`` long) -> ``[B, width]`` padded with
    ``value``."""
    ids = rows.to_tensor(default_value=value)
    return tf.pad(ids, [[0, 0], [0, width - tf.shape(ids)[1]]], constant_values=value)


def _cut(rows: tf.RaggedTensor, length: int) -> tf.RaggedTensor:
    return tf.cast(rows, tf.int32)[:, :length]


class _EncoderConverter(seqio.FeatureConverter):
    """Shared scaffolding: no packing, ``inputs`` is the one length-carrying task feature.

    Every kind converts ragged batches (``_convert_batch``: one vectorized op per batch instead
    of ~10 small ops per example, each costing more than the arithmetic on this CPU):
    ``convert_batches`` yields the model's batches directly (``seqio_batches`` uses it, with
    length buckets); seqio's per-example contract (``__call__``) unbatches batches of
    ``CONVERT_BATCH`` rows padded to ``L``. Same rows, same order either way."""

    TASK_FEATURES = {INPUTS: Spec(dtype=tf.int32)}
    MODEL_FEATURES: Mapping[str, Spec] = {}
    PACKING_FEATURE_DTYPES: Mapping[str, tf.dtypes.DType] = {}
    KIND = ""
    CONVERT_BATCH = 256
    TASK_FEATURES_READ: tuple[str, ...] = (INPUTS,)

    def __init__(self, pack: bool = False, **kwargs: Any):
        if pack:
            raise ValueError(f"{type(self).__name__}: packing is not supported for the "
                             f"{self.KIND} encoder (each row is one example)")
        super().__init__(pack=False, **kwargs)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                  ) -> dict[str, int]:
        length = fit_length(task_feature_lengths)
        return {key: length for key in self.MODEL_FEATURES}

    def convert_batches(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int],
                        batch_size: int, *, buckets: Sequence[int] | None = None
                        ) -> tf.data.Dataset:
        """Batches of ``batch_size`` examples of ``ds`` (the last may be shorter) with the
        model features; a batch's sequence width is the smallest of ``buckets`` holding its
        longest row (``bucket_lengths``), or ``L`` without buckets."""
        length = fit_length(task_feature_lengths)
        _need(ds.element_spec, self.TASK_FEATURES_READ, type(self).__name__)
        keys = self.TASK_FEATURES_READ
        if set(ds.element_spec) != set(keys):  # a per-example map only where there are extras
            ds = ds.map(lambda ex: {k: ex[k] for k in keys})
        batches = ds.ragged_batch(batch_size)
        # plain TF ops: autograph's conversion would only cost start-up (~1-4 s here)
        convert = tf.autograph.experimental.do_not_convert(
            lambda b: self._convert_batch(b, length, buckets))
        return batches.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def cut_batch(self, batch: Mapping[str, tf.Tensor], length: int,
                  buckets: Sequence[int] | None) -> dict[str, tf.Tensor]:
        """A batch converted at width ``length`` cut to its bucket's width (what
        ``convert_batches`` gives for the same rows): the smallest of ``buckets`` holding the
        longest row's ``attention_mask``."""
        if not buckets:
            return dict(batch)
        longest = tf.reduce_max(tf.reduce_sum(batch["attention_mask"], axis=-1))
        width = bucket_width(longest, length, buckets)
        return {k: v[..., :width] if self.MODEL_FEATURES[k].rank else v
                for k, v in batch.items()}

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                          ) -> tf.data.Dataset:
        length = fit_length(task_feature_lengths)
        batches = self.convert_batches(ds, task_feature_lengths, self.CONVERT_BATCH)
        return batches.unbatch().map(lambda ex: self._static(ex, length))

    def _static(self, ex: dict[str, tf.Tensor], length: int) -> dict[str, tf.Tensor]:
        """The static ``[L]`` shapes seqio's output validation reads."""
        return {k: tf.ensure_shape(v, [*([None] * (v.shape.rank - 1)), length])
                if self.MODEL_FEATURES[k].rank and v.shape.rank else v for k, v in ex.items()}

    def _convert_batch(self, batch: Mapping[str, Any], length: int,
                       buckets: Sequence[int] | None) -> dict[str, tf.Tensor]:
        raise NotImplementedError


def _rows(ids: tf.RaggedTensor, length: int, buckets: Sequence[int] | None
          ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """``input_ids``/``attention_mask``/``example_mask`` of ragged rows (cut to ``length``),
    and the batch width."""
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    width = bucket_width(tf.reduce_max(lengths), length, buckets)
    return {"input_ids": dense(ids, width, PAD_ID),
            "attention_mask": tf.sequence_mask(lengths, width, tf.int32),
            "example_mask": tf.ones_like(lengths)}, width


class ClassificationConverter(_EncoderConverter):
    """Pair or single-sentence classification: ``<s> A </s></s> B </s>``, scalar ``labels``."""

    KIND = "classification"
    TASK_FEATURES_READ = (INPUTS, "inputs_b", "targets")
    MODEL_FEATURES = {**ROW_FEATURES, "labels": Spec(dtype=tf.int32, rank=0)}

    def _convert_batch(self, batch: Mapping[str, Any], length: int,
                       buckets: Sequence[int] | None) -> dict[str, tf.Tensor]:
        rows = pair_rows(tf.cast(batch[INPUTS], tf.int32), tf.cast(batch["inputs_b"], tf.int32),
                         length)
        out, _ = _rows(rows, length, buckets)
        return {**out, "labels": tf.cast(batch["targets"], tf.int32)}


class TaggingConverter(_EncoderConverter):
    """Token tagging: per-token ``labels`` (-1 off the first sub-token) and ``label_mask``."""

    KIND = "tagging"
    TASK_FEATURES_READ = (INPUTS, "targets", "label_mask")
    MODEL_FEATURES = {**ROW_FEATURES, "labels": Spec(dtype=tf.int32),
                      "label_mask": Spec(dtype=tf.int32)}

    def _convert_batch(self, batch: Mapping[str, Any], length: int,
                       buckets: Sequence[int] | None) -> dict[str, tf.Tensor]:
        out, width = _rows(_cut(batch[INPUTS], length), length, buckets)
        return {**out, "labels": dense(_cut(batch["targets"], length), width, IGNORE_LABEL),
                "label_mask": dense(_cut(batch["label_mask"], length), width, 0)}


class SpanQAConverter(_EncoderConverter):
    """Span QA windows: ``start_positions``/``end_positions`` (0 = ``<s>``: no answer here)."""

    KIND = "qa"
    TASK_FEATURES_READ = (INPUTS, "start_positions", "end_positions")
    MODEL_FEATURES = {**ROW_FEATURES, "start_positions": Spec(dtype=tf.int32, rank=0),
                      "end_positions": Spec(dtype=tf.int32, rank=0)}

    def _convert_batch(self, batch: Mapping[str, Any], length: int,
                       buckets: Sequence[int] | None) -> dict[str, tf.Tensor]:
        out, _ = _rows(_cut(batch[INPUTS], length), length, buckets)
        return {**out, "start_positions": tf.cast(batch["start_positions"], tf.int32),
                "end_positions": tf.cast(batch["end_positions"], tf.int32)}


class MultipleChoiceConverter(_EncoderConverter):
    """``[C, L]`` rows ``<s> prompt </s></s> choice </s>``, each cut longest-first."""

    KIND = "multiple_choice"
    TASK_FEATURES_READ = (INPUTS, "choices", "targets")
    MODEL_FEATURES = {
        "input_ids": Spec(dtype=tf.int32, rank=2, sequence_dim=1),
        "attention_mask": Spec(dtype=tf.int32, rank=2, sequence_dim=1),
        "labels": Spec(dtype=tf.int32, rank=0), "example_mask": Spec(dtype=tf.int32, rank=0),
    }  # fmt: skip

    def __init__(self, num_choices: int, **kwargs: Any):
        if num_choices < 1:
            raise ValueError(f"num_choices must be positive, got {num_choices}")
        self.num_choices = num_choices
        super().__init__(**kwargs)

    def _convert_batch(self, batch: Mapping[str, Any], length: int,
                       buckets: Sequence[int] | None) -> dict[str, tf.Tensor]:
        choices = batch["choices"]  # [B, C, m] (ragged from ragged_batch, or dense)
        if not isinstance(choices, tf.RaggedTensor):
            choices = tf.RaggedTensor.from_tensor(choices, ragged_rank=2)
        per_example = tf.cast(choices.row_lengths(axis=1), tf.int32)
        check = tf.debugging.assert_equal(
            per_example, self.num_choices,
            message=f"an example's number of choices differs from num_choices="
                    f"{self.num_choices}")  # fmt: skip
        with tf.control_dependencies([check]):
            flat = tf.cast(choices.merge_dims(0, 1), tf.int32)  # [B*C, m]
        flat = tf.ragged.boolean_mask(flat, flat != PAD_ID)
        size = tf.shape(per_example)[0]
        prompt = tf.gather(tf.cast(batch[INPUTS], tf.int32),
                           tf.repeat(tf.range(size), self.num_choices))
        rows = pair_rows(prompt, flat, length)
        lengths = tf.cast(rows.row_lengths(), tf.int32)
        width = bucket_width(tf.reduce_max(lengths), length, buckets)
        ids = tf.reshape(dense(rows, width, PAD_ID), [size, self.num_choices, width])
        return {"input_ids": ids, "attention_mask": tf.cast(ids != PAD_ID, tf.int32),
                "labels": tf.cast(batch["targets"], tf.int32),
                "example_mask": tf.ones([size], tf.int32)}


class MLMConverter(_EncoderConverter):
    """Packed MLM rows, padded; masking is ``mask_mlm_batch`` (see the module docstring)."""

    KIND = "mlm"
    MODEL_FEATURES = ROW_FEATURES

    def _convert_batch(self, batch: Mapping[str, Any], length: int,
                       buckets: Sequence[int] | None) -> dict[str, tf.Tensor]:
        out, _ = _rows(_cut(batch[INPUTS], length), length, buckets)
        return out


CONVERTERS: dict[str, type[_EncoderConverter]] = {
    "classification": ClassificationConverter,
    "tagging": TaggingConverter,
    "qa": SpanQAConverter,
    "multiple_choice": MultipleChoiceConverter,
    "mlm": MLMConverter,
}


def converter_for(kind: str, *, num_choices: int | None = None) -> seqio.FeatureConverter:
    """The converter of ``kind`` (``num_choices`` for multiple choice)."""
    if kind not in CONVERTERS:
        raise ValueError(f"no seqio feature converter for kind {kind!r}; expected one of "
                         f"{sorted(CONVERTERS)}")
    if kind == "multiple_choice":
        if num_choices is None:
            raise ValueError("the multiple_choice converter needs num_choices")
        return MultipleChoiceConverter(num_choices)
    return CONVERTERS[kind]()


def padding_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """``batch`` with ``rows`` padding examples appended (``example_mask`` 0, ``<pad>`` ids,
    labels -1, masks and positions 0), as ``pad_batch`` fills the last batch of a split."""
    fill = {"input_ids": PAD_ID, "labels": IGNORE_LABEL}
    out = {}
    for key, value in batch.items():
        # scalar labels are -1 on padding too; tag labels -1; positions and masks 0
        pad = np.full((rows, *value.shape[1:]), fill.get(key, 0), value.dtype)
        out[key] = np.concatenate([value, pad])
    return out


def mask_mlm_batch(batch: Mapping[str, np.ndarray], *, step: int, first_row: int, seed: int,
                   mask_id: int, length: int | None = None) -> dict[str, np.ndarray]:
    """BERT masking of an MLM batch, row ``r`` with the generator the native
    ``FeatureBatcher`` uses for global row ``first_row + r`` at ``step``; adds ``labels`` and
    ``label_mask`` (0 on padding examples). Rows are masked at the model length ``length``
    (default: the batch's width), so a bucketed batch gets the draws of the full-length one."""
    width = batch["input_ids"].shape[-1]
    full = fit_width(batch, max(length or width, width))
    cap = max_predictions(width)
    rows = [mask_tokens(full["input_ids"][r:r + 1],
                        np.random.default_rng([seed, step, first_row + r, 7]), mask_id=mask_id,
                        max_selected=cap)
            for r in range(len(batch["input_ids"]))]  # fmt: skip
    out = dict(full)
    for key in ("input_ids", "labels", "label_mask"):
        out[key] = np.concatenate([m[key] for m in rows])
    out["label_mask"] = out["label_mask"] * batch["example_mask"][:, None]
    return fit_width(out, width)
