"""Fixed-shape numpy batches from featurized examples: padding, deterministic shuffling, host
sharding and exact resume. Pure numpy; no TensorFlow.

Why not seqio's feature converters: they are built for T5-style ``inputs``/``targets`` token
features (``EncoderFeatureConverter`` is BERT-MLM shaped and needs a ``mask_id``); an encoder
classifier needs scalar labels, ``[B, L]`` tag labels with a mask, QA start/end positions and
``[B, C, L]`` multiple choice (google/seqio ``seqio/feature_converters.py``).

Batch keys (DESIGN.md): ``input_ids``/``attention_mask`` ``[B, L]`` (``[B, C, L]`` for multiple
choice) int32; ``labels`` ``[B]`` or ``[B, L]`` with ``label_mask``; ``start_positions``,
``end_positions`` ``[B]``; ``example_mask`` ``[B]`` (0 on padding examples filling the last batch);
``feature_index`` ``[B]`` (the row's index into the feature list, -1 on padding) so the host can
look up offsets and word ids for answer extraction and scoring.

Provenance (host-side only, never a device array): ``FeatureBatcher.batch`` returns a ``Batch``,
a ``dict`` whose ``provenance`` (``Provenance``) says, row by row, which task, split and file
and which example (index in the split as read, and id) it holds, so a batch error can name
them (``trainer.check_batch_values``). jax does not take a ``dict`` subclass as a pytree: hand
``dict(batch)`` (or a comprehension over it, as ``train.py`` does) to jitted code, and use
``without_keys`` to drop host keys and keep the provenance.

Order: epoch ``e`` visits the features in ``permutation(seed, e)`` order (or in file order when
``shuffle=False``); global step ``k`` of an epoch covers positions ``[k*G, (k+1)*G)`` with
``G = batch_size * num_shards``, of which host ``i`` takes the ``i``-th block of ``batch_size``
(the layout ``jax.make_array_from_process_local_data`` expects). ``batch(step)`` is a pure
function of ``step``, so resuming at any step is exact.

Length buckets (``length_buckets``, off by default: every batch is ``L`` wide): a batch is as
wide as the smallest bucket holding the longest row of the *global* batch (every host's rows of
that step, which every host knows), so all hosts agree on the shape and each shape compiles
once. ``bucket_lengths`` turns the setting into the buckets (always ending in ``L``). Padding
beyond a row's tokens changes no loss: the batch equals the ``L``-wide one cut at the width.
Random batches take their width from their longest row, so buckets alone save little on a
long-tailed length distribution; ``length_grouping=k`` (training order only) also puts rows of
similar length together: each window of ``k`` global batches of the epoch's permutation is
sorted by length and its batches visited in a seeded random order (still a pure function of
the step; the seqio path has no such order).

Packed MLM rows (``preprocessors.mlm_documents``) carry ``segment_ids`` ``[B, L]`` (0 on
padding, 1, 2, ... per document chunk); the model restarts positions and blocks attention per
segment (``models.xlmr.position_ids_from_segment_ids``).

Packed classification rows (``classification_packing=True``, training batches of
classification features; other kinds are never packed this way): whole examples, each its own
``<s> A </s></s> B </s>``, packed first-fit decreasing (``preprocessors.pack_first_fit``) into
rows of ``L`` tokens and at most ``S = max_segments`` examples (default ``L // 16``). The packing
is fixed for the feature list (a function of the lengths only); each epoch visits the packed
rows in ``permutation(seed, epoch)`` order, so "step -> rows" stays a pure function of the step
(exact resume) and ``steps_per_epoch`` counts packed rows. Keys (``pack_batch``):

* ``input_ids``, ``attention_mask``, ``segment_ids`` ``[B, L]`` (``segment_ids``: 0 on padding,
  ``s + 1`` on the tokens of the row's ``s``-th example);
* ``segment_starts`` ``[B, S]``: the position of each example's ``<s>`` in its row (0 on empty
  slots), which the classification head gathers (one head per example: logits ``[B, S, C]``);
* ``labels``, ``example_mask`` ``[B, S]``: per example slot (-1 and 0 on empty slots), so the
  loss (``trainer.classification_loss``) weighs each real example once, as unpacked;
* ``feature_index`` ``[B, S]`` (host-side; -1 on empty slots).

``segment_starts`` is a batch key rather than derived in the model because ``S`` must be
static and the host knows each start for free (as MLM's ``masked_positions`` gives the head
its positions).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from xstilts.data.preprocessors import IGNORE_LABEL, mask_tokens, max_predictions, pack_first_fit

PAD_ID = 1
KINDS = ("classification", "tagging", "qa", "multiple_choice", "mlm")
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "label_mask", "segment_ids")
PACKED_SEQUENCE_KEYS = ("input_ids", "attention_mask", "segment_ids")  # labels are per slot
AUTO_BUCKETS = 8  # "auto": L/8, 2L/8, ..., L (multiples of 8)


def bucket_lengths(length: int, buckets: Sequence[int] | str | None) -> tuple[int, ...] | None:
    """The batch widths for model length ``length``: None (off: every batch ``length`` wide),
    ``"auto"`` (``AUTO_BUCKETS`` steps up to ``length``, each rounded up to a multiple of 8:
    128 -> 16, 32, ..., 128), or the given lengths (each at most ``length``) with ``length``
    added. Each width is one more compiled shape. Splash attention (TPU) needs multiples of
    128: give those explicitly there (e.g. ``(128, 256)`` for 384)."""
    if buckets is None or buckets == () or buckets == "off":
        return None
    if buckets == "auto":
        chosen = [min(length, -(-length * k // AUTO_BUCKETS // 8) * 8)
                  for k in range(1, AUTO_BUCKETS)]
    elif isinstance(buckets, str):
        raise ValueError(f"length_buckets {buckets!r}: expected None, 'auto' or a list of "
                         f"lengths")
    else:
        chosen = [int(w) for w in buckets]
        bad = [w for w in chosen if not 0 < w <= length]
        if bad:
            raise ValueError(f"length_buckets {list(buckets)}: {bad} outside 1..{length} (the "
                             f"model length)")
    return tuple(sorted({*chosen, length}))


def bucket_for(longest: int, buckets: Sequence[int]) -> int:
    """The smallest of ``buckets`` (sorted) holding ``longest`` tokens."""
    for width in buckets:
        if width >= longest:
            return int(width)
    raise ValueError(f"a row of {longest} tokens is longer than the largest bucket "
                     f"{buckets[-1]}")


def fit_width(batch: Mapping[str, np.ndarray], width: int,
              keys: Sequence[str] = SEQUENCE_KEYS) -> dict[str, np.ndarray]:
    """``batch`` with its sequence axis (the last of ``keys`` arrays of rank >= 2; packed
    classification rows: ``PACKED_SEQUENCE_KEYS``) cut or padded to ``width``; cutting removes
    padding only (else ValueError)."""
    have = batch["input_ids"].shape[-1]
    if width < have and batch["attention_mask"][..., width:].any():
        raise ValueError(f"cannot cut a batch to width {width}: a row has tokens beyond it")
    fill = {"input_ids": PAD_ID, "labels": IGNORE_LABEL}
    out = dict(batch)
    for key in keys:
        value = batch.get(key)
        if value is None or value.ndim < 2:
            continue
        if width <= have:
            out[key] = value[..., :width]
        else:
            pad = [(0, 0)] * (value.ndim - 1) + [(0, width - have)]
            out[key] = np.pad(value, pad, constant_values=fill.get(key, 0))
    return out


def row_length(feature: Mapping[str, Any]) -> int:
    """Tokens in a feature's row (its longest choice for multiple choice)."""
    ids = feature["input_ids"]
    if len(ids) and not np.isscalar(ids[0]):
        return max(len(row) for row in ids)
    return len(ids)


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a batcher's features come from: task, split, file(s); ``note`` says what is known
    where there is no file (generated data)."""

    task: str | None = None
    split: str | None = None
    files: tuple[str, ...] = ()
    note: str | None = None

    def describe(self) -> str:
        parts = [f"task {self.task!r}"] if self.task else []
        if self.split:
            parts.append(f"split {self.split!r}")
        if self.files:
            parts.append(f"file {self.files[0]}" if len(self.files) == 1 else
                         f"files {', '.join(self.files)}")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts) or "unknown source"


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where each row of one host batch comes from: the ``origin`` and, per row, its feature
    index (-1: padding), example index (in the split as read; None where unknown, e.g. packed
    MLM rows) and example id. A packed classification row has a tuple of each (its examples)."""

    origin: Origin
    feature_indices: tuple[int | tuple[int, ...], ...]
    example_indices: tuple[int | None | tuple[int | None, ...], ...]
    example_ids: tuple[Any, ...]

    def describe(self, row: int) -> str:
        """``task 'x', split 'train', file /d/x.tsv, example index 17 [id 'a-17']`` of ``row``."""
        where = self.origin.describe()
        if not 0 <= row < len(self.feature_indices):
            return f"{where}, row {row}"
        index, example_id = self.example_indices[row], self.example_ids[row]
        if isinstance(index, tuple):
            return (f"{where}, packed row {row}: example indices {list(index)} [ids "
                    f"{list(example_id)}]" if index else f"{where}, row {row} (a padding row)")
        if self.feature_indices[row] < 0:
            return f"{where}, row {row} (a padding row)"
        what = (f"example index {index}" if index is not None else
                f"feature {self.feature_indices[row]}")
        return f"{where}, {what}" + ("" if example_id is None else f" [id {example_id!r}]")


class Batch(dict):
    """A batch (``dict`` of arrays) that also carries its ``provenance`` on the host; see the
    module docstring. A jax pytree like the ``dict`` it is (keys sorted, as jax flattens a
    dict), so it goes straight into jitted code; what comes back out is a plain ``dict``."""

    provenance: Provenance | None = None

    def __init__(self, arrays: Mapping[str, Any], provenance: Provenance | None = None):
        super().__init__(arrays)
        self.provenance = provenance


jax.tree_util.register_pytree_with_keys(
    Batch,
    lambda b: (tuple((jax.tree_util.DictKey(k), b[k]) for k in sorted(b)), tuple(sorted(b))),
    lambda keys, values: dict(zip(keys, values, strict=True)))


def provenance_of(batch: Any) -> Provenance | None:
    """The ``Provenance`` a batch carries, or None (a plain dict: nothing is known)."""
    return getattr(batch, "provenance", None)


def without_keys(batch: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """``batch`` less ``keys`` (e.g. the host-only ``feature_index``), its provenance kept."""
    kept = {k: v for k, v in batch.items() if k not in keys}
    source = provenance_of(batch)
    return Batch(kept, source) if source is not None else kept


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """Same fields as ``seqio.ShardInfo`` (either may be passed)."""

    index: int = 0
    num_shards: int = 1

    def __post_init__(self):
        if not 0 <= self.index < self.num_shards:
            raise ValueError(f"shard index {self.index} outside 0..{self.num_shards - 1}")


def pad_batch(
    features: Sequence[Mapping[str, Any] | None],
    kind: str,
    length: int,
    *,
    num_choices: int | None = None,
) -> dict[str, np.ndarray]:
    """Stack features into fixed-shape arrays; ``None`` entries are padding examples."""
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; expected one of {KINDS}")
    size = len(features)
    if kind == "multiple_choice":
        if num_choices is None:
            num_choices = max((len(f["input_ids"]) for f in features if f is not None), default=1)
        shape: tuple[int, ...] = (size, num_choices, length)
    else:
        shape = (size, length)
    input_ids = np.full(shape, PAD_ID, np.int32)
    attention_mask = np.zeros(shape, np.int32)
    example_mask = np.zeros(size, np.int32)
    batch: dict[str, np.ndarray] = {}
    if kind in ("classification", "multiple_choice"):
        batch["labels"] = np.full(size, IGNORE_LABEL, np.int32)
    elif kind == "tagging":
        batch["labels"] = np.full(shape, IGNORE_LABEL, np.int32)
        batch["label_mask"] = np.zeros(shape, np.int32)
    elif kind == "qa":
        batch["start_positions"] = np.zeros(size, np.int32)
        batch["end_positions"] = np.zeros(size, np.int32)
    if any(f is not None and "segment_ids" in f for f in features):
        batch["segment_ids"] = np.zeros(shape, np.int32)
    for row, feature in enumerate(features):
        if feature is None:
            continue
        example_mask[row] = 1
        rows = feature["input_ids"] if kind == "multiple_choice" else [feature["input_ids"]]
        if kind == "multiple_choice" and len(rows) != num_choices:
            raise ValueError(
                f"example {feature.get('example_id')!r} has {len(rows)} choices, "
                f"the batch expects {num_choices}"
            )
        for choice, ids in enumerate(rows):
            if len(ids) > length:
                raise ValueError(
                    f"example {feature.get('example_id')!r} has {len(ids)} tokens, longer than "
                    f"the batch length {length}; featurize with max_length <= {length}"
                )
            target = (row, choice) if kind == "multiple_choice" else (row,)
            input_ids[target][: len(ids)] = ids
            attention_mask[target][: len(ids)] = 1
        if "segment_ids" in batch:
            segments = feature.get("segment_ids")
            if segments is None:
                segments = np.ones(len(feature["input_ids"]), np.int32)  # one segment
            batch["segment_ids"][row, : len(segments)] = segments
        if kind in ("classification", "multiple_choice"):
            batch["labels"][row] = feature.get("labels", IGNORE_LABEL)
        elif kind == "tagging":
            n = len(feature["input_ids"])
            batch["labels"][row, :n] = feature["labels"]
            batch["label_mask"][row, :n] = feature["label_mask"]
        elif kind == "qa":
            batch["start_positions"][row] = feature["start_positions"]
            batch["end_positions"][row] = feature["end_positions"]
    batch.update(input_ids=input_ids, attention_mask=attention_mask, example_mask=example_mask)
    return batch


def pack_batch(features: Sequence[Mapping[str, Any]], rows: Sequence[Sequence[int] | None],
               length: int, max_segments: int) -> dict[str, np.ndarray]:
    """Packed classification rows (the module docstring's keys): row ``r`` holds
    ``features[i]`` for ``i`` in ``rows[r]``, one after another (``None``: a padding row)."""
    size = len(rows)
    batch = {"input_ids": np.full((size, length), PAD_ID, np.int32),
             "attention_mask": np.zeros((size, length), np.int32),
             "segment_ids": np.zeros((size, length), np.int32),
             "segment_starts": np.zeros((size, max_segments), np.int32),
             "labels": np.full((size, max_segments), IGNORE_LABEL, np.int32),
             "example_mask": np.zeros((size, max_segments), np.int32),
             "feature_index": np.full((size, max_segments), -1, np.int32)}
    for r, row in enumerate(rows):
        if row is None:
            continue
        if len(row) > max_segments:
            raise ValueError(f"packed row {r} holds {len(row)} examples, more than "
                             f"max_segments={max_segments}")
        at = 0
        for slot, i in enumerate(row):
            ids = features[i]["input_ids"]
            end = at + len(ids)
            if end > length:
                raise ValueError(f"packed row {r}: example {features[i].get('example_id')!r} "
                                 f"ends at token {end}, past the row length {length}")
            batch["input_ids"][r, at:end] = ids
            batch["attention_mask"][r, at:end] = 1
            batch["segment_ids"][r, at:end] = slot + 1
            batch["segment_starts"][r, slot] = at
            batch["labels"][r, slot] = features[i].get("labels", IGNORE_LABEL)
            batch["example_mask"][r, slot] = 1
            batch["feature_index"][r, slot] = i
            at = end
    return batch


class FeatureBatcher:
    """Deterministic, shardable, resumable batches over a list of features of one kind.

    ``classification_packing`` (classification features only; ignored for other kinds, whose
    heads read every token or one row per example): rows pack whole examples, at most
    ``max_segments`` (None: ``max(1, length // 16)``) each; see the module docstring."""

    def __init__(
        self,
        features: Sequence[Mapping[str, Any]],
        kind: str,
        *,
        batch_size: int,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        shard_info: Any = None,
        num_choices: int | None = None,
        mlm: Mapping[str, Any] | None = None,
        length_buckets: Sequence[int] | str | None = None,
        length_grouping: int = 0,
        origin: Origin | None = None,
        classification_packing: bool = False,
        max_segments: int | None = None,
    ):
        if not features:
            raise ValueError(f"no {kind} features to batch (empty split?)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.features = features
        self.kind = kind
        self.batch_size = batch_size
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        info = shard_info or ShardInfo()
        self.shard = ShardInfo(int(info.index), int(info.num_shards))
        self.num_choices = num_choices
        self.mlm = dict(mlm or {})
        if kind == "mlm" and "mask_id" not in self.mlm:
            raise ValueError("mlm batches need mlm={'mask_id': ...}")
        self._order_cache: tuple[int, np.ndarray] | None = None
        self.buckets = bucket_lengths(length, length_buckets)
        self._lengths: np.ndarray | None = None
        if length_grouping < 0:
            raise ValueError(f"length_grouping must be >= 0, got {length_grouping}")
        self.length_grouping = length_grouping if shuffle else 0
        self.origin = origin or Origin(note="features with no task or file recorded")
        self.packed = bool(classification_packing) and kind == "classification"
        self.max_segments = max(1, length // 16) if max_segments is None else int(max_segments)
        if self.max_segments < 1:
            raise ValueError(f"max_segments must be >= 1, got {max_segments}")
        self._rows: list[list[int]] | None = None

    @property
    def rows(self) -> list[list[int]]:
        """Packed classification rows: the feature indices of each (``pack_first_fit``)."""
        if self._rows is None:
            lengths = [row_length(f) for f in self.features]
            self._rows = pack_first_fit(lengths, self.length, self.max_segments)
        return self._rows

    @property
    def num_rows(self) -> int:
        """Rows of one epoch: packed rows, or one per feature."""
        return len(self.rows) if self.packed else len(self.features)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.shard.num_shards

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_rows / self.global_batch_size)

    def _row_lengths(self) -> np.ndarray:
        if self._lengths is None:
            lengths = np.asarray([row_length(f) for f in self.features], np.int64)
            self._lengths = np.asarray([lengths[r].sum() for r in self.rows], np.int64) \
                if self.packed else lengths
        return self._lengths

    def _order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
                if self.length_grouping:
                    order = self._grouped(order, epoch)
            else:
                order = np.arange(self.num_rows)
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def _grouped(self, order: np.ndarray, epoch: int) -> np.ndarray:
        """``order`` with rows of similar length in the same global batch: each window of
        ``length_grouping`` global batches is sorted by length, cut into global batches, and
        those are visited in a seeded random order (a short last batch stays last)."""
        size, lengths = self.global_batch_size, self._row_lengths()
        rng = np.random.default_rng([self.seed, epoch, 11])
        window = size * self.length_grouping
        out = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches = [chunk[i:i + size] for i in range(0, len(chunk), size)]
            short = [b for b in batches if len(b) < size]
            full = [b for b in batches if len(b) == size]
            out.extend(full[i] for i in rng.permutation(len(full)))
            out.extend(short)
        return np.concatenate(out)

    def indices(self, step: int) -> np.ndarray:
        """Feature indices (packed: packed-row indices) of this host's rows at global ``step``
        (-1 = padding example)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        begin = within * self.global_batch_size + self.shard.index * self.batch_size
        positions = np.arange(begin, begin + self.batch_size)
        return np.where(positions < len(order), order[np.minimum(positions, len(order) - 1)], -1)

    def width(self, step: int) -> int:
        """The sequence width of every host's batch at ``step``: ``length``, or with buckets
        the smallest bucket holding the longest row of the global batch."""
        if self.buckets is None:
            return self.length
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        rows = order[within * self.global_batch_size:(within + 1) * self.global_batch_size]
        return bucket_for(int(self._row_lengths()[rows].max()), self.buckets)

    def provenance(self, index: np.ndarray) -> Provenance:
        """Where the rows with feature indices ``index`` (-1: padding) come from; packed:
        ``index`` are packed-row indices, each row naming its examples."""
        if self.packed:
            slots = [tuple(self.rows[i]) if i >= 0 else () for i in index]
            return Provenance(self.origin, slots,
                              tuple(tuple(self.features[j].get("example_index") for j in s)
                                    for s in slots),
                              tuple(tuple(self.features[j].get("example_id") for j in s)
                                    for s in slots))
        rows = [self.features[i] if i >= 0 else {} for i in index]
        return Provenance(self.origin, tuple(int(i) for i in index),
                          tuple(f.get("example_index") for f in rows),
                          tuple(f.get("example_id") for f in rows))

    def batch(self, step: int) -> Batch:
        index = self.indices(step)
        if self.packed:
            batch = pack_batch(self.features, [self.rows[i] if i >= 0 else None for i in index],
                               self.length, self.max_segments)
            width = self.width(step)
            return Batch(batch if width == self.length else
                         fit_width(batch, width, PACKED_SEQUENCE_KEYS), self.provenance(index))
        rows = [self.features[i] if i >= 0 else None for i in index]
        kind = "classification" if self.kind == "mlm" else self.kind
        batch = pad_batch(rows, kind, self.length, num_choices=self.num_choices)
        width = self.width(step)
        if self.kind == "mlm":
            del batch["labels"]
            # One generator per *global* row, so the masks do not depend on how many hosts
            # share the batch (a multi-host run equals the one-host run).
            _, within = divmod(step, self.steps_per_epoch)
            first = within * self.global_batch_size + self.shard.index * self.batch_size
            # masked at the full length (the same draws with or without buckets), at most the
            # masked positions the trainer computes at this batch's width
            options = {"max_selected": max_predictions(
                width, self.mlm.get("mask_probability", 0.15)), **self.mlm}
            rows_masked = [
                mask_tokens(batch["input_ids"][r:r + 1],
                            np.random.default_rng([self.seed, step, first + r, 7]), **options)
                for r in range(len(index))]
            masked = {k: np.concatenate([m[k] for m in rows_masked]) for k in rows_masked[0]}
            masked["label_mask"] *= batch["example_mask"][:, None]
            batch.update(masked)
        batch["feature_index"] = index.astype(np.int32)
        return Batch(fit_width(batch, width) if width != self.length else batch,
                     self.provenance(index))

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()

    def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict]:
        """Batches from ``start_step`` on (forever, or ``num_steps`` of them)."""
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.batch(step)
            step += 1

    def epoch(self, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """One pass: every feature exactly once over all hosts (evaluation)."""
        first = epoch * self.steps_per_epoch
        return self.iterate(first, self.steps_per_epoch)


# -------------------------------------------------------------------------------- mixtures


def proportional_rates(sizes: Mapping[str, int], cap: int | None = None) -> dict[str, float]:
    """Rate of each task proportional to its number of examples, capped at ``cap`` (jiant's
    ``train_examples_cap``; seqio's ``mixing_rate_num_examples(maximum=cap)``)."""
    capped = {name: float(min(n, cap) if cap else n) for name, n in sizes.items()}
    total = sum(capped.values())
    if total <= 0:
        raise ValueError(f"all tasks are empty: {dict(sizes)}")
    return {name: n / total for name, n in capped.items()}


def temperature_rates(
    sizes: Mapping[str, int], temperature: float, cap: int | None = None
) -> dict[str, float]:
    """``p_i ∝ n_i^(1/T)`` (XLM-R / mT5 language sampling): T=1 is proportional, larger T
    flattens towards uniform so low-resource languages are not drowned."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    base = proportional_rates(sizes, cap)
    scaled = {name: p ** (1.0 / temperature) for name, p in base.items()}
    total = sum(scaled.values())
    return {name: p / total for name, p in scaled.items()}


class MixtureBatcher:
    """One task per step, drawn with probability ``rates[task]`` from a seeded stream; each task
    keeps its own batch counter, so ``batch(step)`` is a pure function of ``step``."""

    BLOCK = 4096

    def __init__(
        self, batchers: Mapping[str, FeatureBatcher], rates: Mapping[str, float], seed: int = 0
    ):
        missing = sorted(set(rates) - set(batchers))
        if missing:
            raise KeyError(f"rates name tasks without batches: {missing}")
        self.names = [name for name in batchers if rates.get(name, 0) > 0]
        if not self.names:
            raise ValueError("every task has rate 0")
        self.batchers = dict(batchers)
        total = sum(rates[name] for name in self.names)
        self.rates = {name: rates[name] / total for name in self.names}
        self.seed = seed
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _block(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Task choices of block ``number`` and the per-task counts before it."""
        probabilities = np.array([self.rates[name] for name in self.names])
        start = max((b for b in self._blocks if b <= number), default=-1)
        for block in range(start + 1, number + 1):
            if block == 0:
                before = np.zeros(len(self.names), np.int64)
            else:
                previous, previous_before = self._blocks[block - 1]
                before = previous_before + np.bincount(previous, minlength=len(self.names))
            choices = np.random.default_rng([self.seed, block]).choice(
                len(self.names), size=self.BLOCK, p=probabilities
            )
            self._blocks[block] = (choices, before)
        return self._blocks[number]

    def task_and_step(self, step: int) -> tuple[str, int]:
        block, within = divmod(step, self.BLOCK)
        choices, before = self._block(block)
        task = int(choices[within])
        local = int(before[task] + np.count_nonzero(choices[:within] == task))
        return self.names[task], local

    def batch(self, step: int) -> tuple[str, dict[str, np.ndarray]]:
        name, local = self.task_and_step(step)
        return name, self.batchers[name].batch(local)

    def iterate(
        self, start_step: int = 0, num_steps: int | None = None
    ) -> Iterator[tuple[str, dict]]:
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.batch(step)
            step += 1
