"""Data layer: readers for every native format (``readers``), XLM-R featurization
(``preprocessors``), fixed-shape batches (``feature_converters``), the task and mixture registry
(``tasks``; seqio registration in ``seqio_tasks``), ``pipeline`` (name -> batches), the synthetic
multilingual world (``synthetic``) and ``python -m xstilts.data.prepare`` (downloads).

Nothing here imports TensorFlow except ``seqio_tasks``. See docs/mixtures.md.
"""
