"""The batched route of ``seqio_tasks.seqio_batches`` for the project's own classification Tasks.

``Task.get_dataset`` hands over one example at a time, and on this CPU every per-example step
between the source and the converter costs more than tokenizing (ragged unbatch ~10k examples/s,
the rebatch for batched tokenizing, seqio's per-example trim map; ``benchmarks/data_pipeline.py``
``streams``). For a Task whose source is a ``ReaderDataSource`` and whose one preprocessor is
``classification_inputs`` (every registered classification task), ``classification_rows`` runs
the same steps as ``Task.get_dataset`` + ``ClassificationConverter`` on the source's chunks:

    source chunks (this host's shard) -> repeat(num_epochs) -> classification_features
    -> seqio's trim (``inputs`` to L) -> the converter's ``_convert_batch`` at width L
    -> one dense row per example -> shuffle(the Task's buffer, seed)

then ``batch`` and ``cut_batch`` (length buckets). The only per-example steps left are the
unbatch of dense rows and seqio's example shuffle. The shuffle draws its permutation from the
seed and the element count alone, so shuffling converted rows gives the order seqio's shuffle
of the task features gives: the batches equal those of ``Task.get_dataset`` + the converter
(tests/test_data_seqio_batched.py checks every batch, shuffled and not, with shards, buckets
and epochs). Anything else (a user's Task, an offline cache, a Mixture) takes seqio's own
``get_dataset``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from xstilts.data.seqio_converters import INPUTS, ClassificationConverter

BatchFn = Callable[[dict[str, tf.Tensor]], dict[str, Any]]


def classification_rows(chunks: tf.data.Dataset, features: BatchFn, length: int, *,
                        num_epochs: int | None, shuffle_buffer_size: int | None,
                        seed: int | None) -> tf.data.Dataset:
    """Converted rows (``input_ids``, ``attention_mask`` [L], ``labels``, ``example_mask``)
    from a ``ReaderDataSource``'s ``chunks`` and the Task's batch function ``features``
    (``seqio_tasks.classification_features``), in the order ``Task.get_dataset`` + the
    converter give; ``shuffle_buffer_size`` None: not shuffled."""
    converter = ClassificationConverter()

    @tf.autograph.experimental.do_not_convert  # plain TF ops: autograph only costs start-up
    def rows(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = features(batch)
        out[INPUTS] = out[INPUTS][:, :length]  # seqio's _trim_output_features
        return converter._convert_batch(out, length, None)

    if num_epochs != 1:
        chunks = chunks.repeat(num_epochs)
    dataset = chunks.map(rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.unbatch()
    if shuffle_buffer_size is not None:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)
    return dataset


def classification_batches(chunks: tf.data.Dataset, features: BatchFn, length: int,
                           batch_size: int, *, buckets: Sequence[int] | None = None,
                           **options: Any) -> tf.data.Dataset:
    """``classification_rows`` in batches of ``batch_size`` (the last may be shorter), each
    cut to its length bucket, as ``ClassificationConverter.convert_batches`` gives them."""
    converter = ClassificationConverter()
    batches = classification_rows(chunks, features, length, **options).batch(batch_size)
    if buckets:
        batches = batches.map(tf.autograph.experimental.do_not_convert(
            lambda b: converter.cut_batch(b, length, buckets)))
    return batches

